"""Deduplication for chatforge's data pipeline: exact hashes, MinHash signatures, LSH clustering.

A short tour (FineWeb dedups with MinHash too: Penedo et al. 2024, "The FineWeb Datasets", section 3):

    exact_hash          64-bit blake2b of the text's lowercase words joined by spaces: pages that
                        differ only in case, punctuation or whitespace collide
    minhash_signature   (num_perm,) uint32 MinHash of the set of word 5-grams (Broder 1997); the
                        fraction of equal entries of two signatures estimates the Jaccard similarity
    Signatures          stage A step: writes (id, exact hash, MinHash) per shard to <folder>/<rank>.npz
    find_duplicates     stage B (curate.DedupCluster): exact groups first, then LSH banding. A pair of
                        documents with Jaccard s shares at least one of `bands` bands of `rows` rows
                        with probability 1 - (1 - s^rows)^bands, an S-curve whose threshold is
                        ~(1/bands)^(1/rows): 0.72 for 14 bands x 8 rows. Candidate pairs are joined
                        into clusters with union-find; each cluster keeps its smallest id.

Stage C drops the documents marked here with ``filters.DropIds``. Words are split by
``filters.words_lower``, the one splitter the Gopher repetition rules also read, so a page is split
once for both. Imports flow one way: this module imports filters.py, never the reverse.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from functools import lru_cache

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from chatforge.data.filters import words_lower


def normalize_for_hash(text: str) -> str:
    return " ".join(words_lower(text))


def exact_hash(text: str) -> int:
    """64-bit hash of the normalized text (lowercase words): formatting-only differences collide."""
    return int.from_bytes(hashlib.blake2b(normalize_for_hash(text).encode(), digest_size=8).digest(), "little")


def _ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """(L,) word ids -> (L-n+1,) uint64 keys of each n-gram (polynomial hash mod 2^64; collisions ~2^-64)."""
    keys = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            keys = keys * _POLY + ids[k:len(ids) - n + 1 + k]
    return keys


# The FNV-64 prime, the same multiplier as filters.ngram_repetition's keys but kept separate: there the
# keys live one call, here they are part of every stored signature, so this value must never change.
_POLY = np.uint64(0x100000001B3)


@lru_cache(maxsize=4)
def _perms(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)  # odd
    b = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def minhash_signature(text: str, n_gram: int = 5, num_perm: int = 112, seed: int = 1) -> np.ndarray:
    """(num_perm,) uint32 MinHash of the set of word n-grams (Broder 1997).

    Words are hashed with crc32 (deterministic across processes, unlike ``hash``), n-grams combined
    with the polynomial key of ``_ngram_keys`` and cut to 32 bits; permutation j is the
    multiply-shift hash h -> (a_j h + b_j) mod 2^64 >> 32 (Dietzfelbinger et al. 1997).
    """
    words = words_lower(text)
    wh = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words)) + np.uint64(1)
    if not len(wh):
        wh = np.zeros(1, dtype=np.uint64)  # (L,) word hashes (crc32 + 1; one 0 for an empty text)
    h = np.unique(_ngram_keys(wh, min(n_gram, len(wh))) >> np.uint64(32))  # (S,) distinct 32-bit shingles
    a, b = _perms(num_perm, seed)
    with np.errstate(over="ignore"):
        phv = h[:, None] * a[None, :]  # (S, P)
        phv += b[None, :]  # multiply-shift: the hash is the top 32 bits, and x -> x >> 32 keeps order,
    return (phv.min(axis=0) >> np.uint64(32)).astype(np.uint32)  # so shift the (P,) minima only


class Signatures(PipelineStep):
    """Writes (id, exact hash, MinHash) of every document to ``<folder>/<rank>.npz`` for the dedup stage."""
    name = "🔏 Signatures"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, num_perm: int, n_gram: int):
        super().__init__()
        self.folder, self.num_perm, self.n_gram = folder, num_perm, n_gram

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        ids, hashes, sigs = [], [], []
        for doc in data:
            with self.track_time():
                ids.append(doc.id)
                hashes.append(exact_hash(doc.text))
                sigs.append(minhash_signature(doc.text, self.n_gram, self.num_perm))
            yield doc
        os.makedirs(self.folder, exist_ok=True)
        tmp = os.path.join(self.folder, f".{rank:05d}.tmp.npz")
        np.savez(tmp, ids=np.array(ids, dtype=object), hashes=np.array(hashes, dtype=np.uint64),
                 sigs=np.array(sigs, dtype=np.uint32).reshape(len(sigs), self.num_perm))
        os.replace(tmp, os.path.join(self.folder, f"{rank:05d}.npz"))


def find_duplicates(ids: list[str], hashes: np.ndarray, sigs: np.ndarray, bands: int, rows: int,
                    exact: bool = True, near: bool = True) -> dict[str, str]:
    """Global dedup: doc id -> "exact duplicate" | "near duplicate" for every doc to drop.

    Keeps the smallest id of each group. Exact: identical normalized-text hash. Near: LSH with
    ``bands`` x ``rows`` (Jaccard threshold ~ (1/bands)^(1/rows) = 0.72 for 14x8); candidate pairs
    are unioned into clusters (union-find), like datatrove's MinhashDedupCluster.
    """
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    drop: dict[str, str] = {}
    alive = []
    if exact:
        first: dict[int, int] = {}
        for i in order:
            if int(hashes[i]) in first:
                drop[ids[i]] = "exact duplicate"
            else:
                first[int(hashes[i])] = i
                alive.append(i)
    else:
        alive = order
    if not near or not alive:
        return drop
    parent = {i: i for i in alive}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for band in range(bands):
        buckets: dict[bytes, int] = {}
        for i in alive:  # sorted by id, so the first member of a bucket is its smallest
            key = sigs[i, band * rows:(band + 1) * rows].tobytes()
            j = buckets.setdefault(key, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:  # the root is the member with the smaller id
                    if ids[ri] < ids[rj]:
                        parent[rj] = ri
                    else:
                        parent[ri] = rj
    for i in alive:
        if find(i) != i:
            drop[ids[i]] = "near duplicate"
    return drop
