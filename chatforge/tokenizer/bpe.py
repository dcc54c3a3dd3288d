"""Byte-level BPE in pure Python: the slow, obviously-correct twin of the tokenizer's fast path.

A short tutorial (after Sennrich et al. 2016, GPT-2 2019, and minbpe):

* Text is UTF-8 bytes. The base vocabulary is the 256 single bytes, so nothing is ever unknown.
* First a regex cuts the text into chunks ("pre-tokens": words, number groups, punctuation runs,
  whitespace). Merges never cross a chunk boundary, so " dog" and "dog." share the token " dog".
* Training: count every adjacent pair of tokens inside all chunks (weighted by how often each chunk
  occurs), merge the most frequent pair into a new token, repeat until the vocabulary is full.
  Ties are broken like rustbpe (the fast trainer): among equally frequent pairs the smallest
  (left id, right id) wins. Merging inside a chunk is left-to-right and non-overlapping
  ("aaa" + merge(a, a) -> [aa, a]).
* The vocabulary is stored as tiktoken does, as "mergeable ranks": token bytes -> rank, where the
  rank is also the token id. A token made by the k-th merge has rank 256 + k (for our own
  tokenizers; imported ones such as GPT-2 order their 256 bytes differently, which is fine).
* Encoding a chunk (tiktoken's algorithm): start from single bytes, repeatedly merge the adjacent
  pair whose concatenation has the lowest rank (leftmost on ties) until no adjacent concatenation
  is a token; the ids are the ranks of the remaining parts.

Everything here is O(slow) on purpose; ``chatforge.tokenizer`` uses rustbpe + tiktoken and
tests/test_tokenizer.py checks both produce identical ranks and ids.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import regex

# The GPT-4 / Llama-3 split pattern, character for character as in Meta's llama3 tokenizer
# (llama.cpp pre-tokenizer "llama-bpe"): case-insensitive contractions, letters with one optional
# leading non-letter, digits in groups of 1-3, punctuation runs, newlines, other whitespace.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# GPT-2's original pattern (used to import the real GPT-2 vocabulary).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def split_chunks(text: str, pattern: str = LLAMA3_PATTERN) -> list[str]:
    return regex.findall(pattern, text)


def train(texts: Iterable[str], vocab_size: int, pattern: str = LLAMA3_PATTERN) -> dict[bytes, int]:
    """Learn ``vocab_size - 256`` merges; return mergeable ranks (bytes -> id), ids 0..n-1.

    Stops early if no pair occurs any more (a tiny corpus), so the result may be smaller.
    """
    assert vocab_size >= 256, "vocab_size must be at least 256"
    chunk_counts: Counter[str] = Counter()
    for text in texts:
        chunk_counts.update(split_chunks(text, pattern))
    # one entry per distinct chunk: its current token ids and its count
    words = [list(c.encode("utf-8")) for c in chunk_counts]
    counts = list(chunk_counts.values())
    vocab: list[bytes] = [bytes([i]) for i in range(256)]
    for new_id in range(256, vocab_size):
        # recount every pair from scratch (the fast trainer updates counts incrementally)
        pair_counts: Counter[tuple[int, int]] = Counter()
        for ids, n in zip(words, counts):
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += n
        if not pair_counts:
            break
        # most frequent pair; ties -> smallest (a, b), like rustbpe's heap ordering
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        words = [merge(ids, best, new_id) for ids in words]
        vocab.append(vocab[best[0]] + vocab[best[1]])
    return {b: i for i, b in enumerate(vocab)}


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` (left to right) by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def encode_chunk(data: bytes, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's BPE on one chunk: merge the lowest-ranked adjacent concatenation, leftmost first."""
    if data in ranks:  # whole chunk is a token (tiktoken's shortcut; same result as merging)
        return [ranks[data]]
    parts = [data[i:i + 1] for i in range(len(data))]
    while len(parts) > 1:
        best_i, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best_i, best_rank = i, r
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def encode(text: str, ranks: dict[bytes, int], pattern: str = LLAMA3_PATTERN) -> list[int]:
    """Plain-text encoding (special tokens are not recognised here)."""
    ids: list[int] = []
    for chunk in split_chunks(text, pattern):
        ids.extend(encode_chunk(chunk.encode("utf-8"), ranks))
    return ids


def encode_bytes(data: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Raw bytes (not necessarily UTF-8) as one chunk: shows any byte string round-trips."""
    return encode_chunk(data, ranks) if data else []


def decode_bytes(ids: list[int], ranks: dict[bytes, int]) -> bytes:
    inv = {r: b for b, r in ranks.items()}
    return b"".join(inv[i] for i in ids)


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list (left, right) that rebuilds each multi-byte token, in rank order.

    Standard recovery for tiktoken-style ranks: run BPE on the token's own bytes using only the
    tokens ranked below it; it must end in exactly two parts, which are the pair that made it.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while True:
            best_i, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best_rank is None or r < best_rank):
                    best_i, best_rank = i, r
            if best_rank is None:
                break
            parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) are shifted to
    256+n, so every token is a readable string ("Ġ" is the space byte 0x20).
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
