"""Token shards: the pretraining corpus as flat, memory-mapped arrays of token ids.

Why shards? Tokenizing is slow and training reads the same tokens many times, so we tokenize
once and store the result as raw little-endian integers that ``numpy.memmap`` can map without
parsing. Layout of ``runs/<name>/shards/``::

    train_000.bin  train_000.idx  train_001.bin ...  val_000.bin  val_000.idx  shards.json

* ``<split>_NNN.bin``: uint16 tokens when the vocabulary fits (<= 65536), else uint32. Every
  document is ``<|bos|>`` followed by its tokens, so ``<|bos|>`` doubles as the document separator
  and the model always sees the start of a document the same way it will at inference time.
  A document may continue into the next shard (shards are cut at exactly ``shard_tokens``).
* ``<split>_NNN.idx``: int64 offsets (within the shard) where documents start -- the document
  index, for tools that want whole documents (dedup checks, inspection, packing experiments).
* ``shards.json``: dtype, vocab_size, bos_id, tokenizer hash and, per shard, its token and
  document counts. It is written LAST: a directory without it is an unfinished write, never
  mistaken for a complete corpus. Each ``.bin`` is itself written to a temp name and renamed.

Reading (``TokenLoader``): the training stream is a sequence of disjoint windows of ``B*T+1``
tokens (inputs ``w[:-1]``, targets ``w[1:]``, reshaped to ``(B, T)``). Window ``g`` of the global
sequence goes to rank ``g % world_size`` at step ``g // world_size``, so N ranks with batch B see
exactly the windows that 1 rank sees over N gradient-accumulation micro-steps. The loader's whole
state is its step counter (and the seed), which makes resuming exact.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from chatforge.common import CfError, atomic_path, read_json, write_meta

SHARDS_JSON = "shards.json"


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


# ----------------------------------------------------------------------------- writing

class ShardWriter:
    """Append documents to ``<dir>/<split>_NNN.bin`` shards of ``shard_tokens`` tokens each.

    ``add(ids)`` appends one document; when ``bos_id`` is given it is prepended unless the document
    already starts with it. ``close()`` flushes the last shard and returns the per-shard info that
    ``write_shards_json`` records. Shards are written whole (temp file + rename).
    """
    def __init__(self, dir: str | os.PathLike, split: str, dtype: str = "uint16",
                 shard_tokens: int = 100_000_000, bos_id: int | None = None):
        if dtype not in ("uint16", "uint32"):
            raise CfError(f"ShardWriter dtype: expected uint16 or uint32, got {dtype!r}")
        if shard_tokens < 1:
            raise CfError(f"ShardWriter shard_tokens: expected >= 1, got {shard_tokens}")
        self.dir, self.split, self.dtype = Path(dir), split, np.dtype(dtype).newbyteorder("<")
        self.shard_tokens, self.bos_id = shard_tokens, bos_id
        self.max_id = np.iinfo(self.dtype).max
        self.dir.mkdir(parents=True, exist_ok=True)
        self.buf = np.empty(shard_tokens, dtype=self.dtype)
        self.fill = 0                      # tokens in buf
        self.doc_starts: list[int] = []    # offsets in buf where documents start
        self.shards: list[dict[str, Any]] = []
        self.closed = False

    def add(self, ids: list[int] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=np.int64)
        if self.bos_id is not None and (arr.size == 0 or arr[0] != self.bos_id):
            arr = np.concatenate([np.array([self.bos_id], dtype=np.int64), arr])
        if arr.size == 0:
            return
        if arr.min() < 0 or arr.max() > self.max_id:
            raise CfError(f"{self.dir}: token id out of range for {self.dtype.name} "
                          f"(min {arr.min()}, max {arr.max()})")
        self.doc_starts.append(self.fill)
        pos = 0
        while pos < arr.size:  # a document may spill over into the next shard
            n = min(arr.size - pos, self.shard_tokens - self.fill)
            self.buf[self.fill:self.fill + n] = arr[pos:pos + n]
            self.fill += n
            pos += n
            if self.fill == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        if self.fill == 0:
            return
        name = f"{self.split}_{len(self.shards):03d}"
        with atomic_path(self.dir / f"{name}.bin") as tmp:
            self.buf[:self.fill].tofile(tmp)
        with atomic_path(self.dir / f"{name}.idx") as tmp:
            np.asarray(self.doc_starts, dtype="<i8").tofile(tmp)
        self.shards.append({"file": f"{name}.bin", "tokens": int(self.fill), "docs": len(self.doc_starts)})
        self.fill, self.doc_starts = 0, []

    def close(self) -> list[dict[str, Any]]:
        if not self.closed:
            self._flush()
            self.closed = True
        return self.shards


def tokenizer_hash(tokenizer: Any) -> str:
    """A fingerprint of the vocabulary, to catch shard/tokenizer mix-ups (the tokenizer's own if it has one)."""
    if isinstance(getattr(tokenizer, "hash", None), str):
        return tokenizer.hash
    h = hashlib.sha256()
    for i in range(tokenizer.n_vocab):
        try:
            b = tokenizer.decode_bytes([i])
        except Exception:  # a special token the decoder refuses: its id still counts
            b = b"<special>"
        h.update(len(b).to_bytes(4, "little") + b)
    return h.hexdigest()[:16]


def write_shards_json(dir: str | os.PathLike, splits: dict[str, list[dict[str, Any]]], dtype: str,
                      vocab_size: int, bos_id: int, tok_hash: str | None, **extra: Any) -> None:
    """Write shards.json -- last, so its presence means the shard set is complete."""
    write_meta(Path(dir) / SHARDS_JSON, "shards", extra.pop("config", {}), dtype=dtype,
               vocab_size=vocab_size, bos_id=bos_id, tokenizer_hash=tok_hash, splits=splits, **extra)


def clear_shards(out_dir: str | os.PathLike) -> Path:
    """Make ``out_dir`` and remove a previous shard set from it, shards.json first: an old
    shards.json would vouch for files about to be replaced."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARDS_JSON).unlink(missing_ok=True)
    for p in list(out.glob("train_*.bin")) + list(out.glob("val_*.bin")) + list(out.glob("*_*.idx")):
        p.unlink()
    return out


def is_val_doc(i: int, val_fraction: float, val_docs: int | None) -> bool:
    """Does document ``i`` (0-based, corpus order) go to the validation split? The first ``val_docs``
    documents when given, else an evenly spread ``val_fraction``: documents 0, 1/f, 2/f, ..."""
    if val_docs is not None:
        return i < val_docs
    if val_fraction <= 0:
        return False
    return math.floor(i * val_fraction) > math.floor((i - 1) * val_fraction)


class CorpusWriter:
    """Documents in corpus order -> train/val shards + statistics + shards.json (``finish``).

    Shared by ``tokenize_corpus`` (one process) and the parallel tokenizer (chatforge.pretokenize),
    which merges per-file token arrays through it: same split rule, same files, same statistics."""

    def __init__(self, out_dir: str | os.PathLike, tokenizer: Any, val_fraction: float = 0.01,
                 val_docs: int | None = None, shard_tokens: int = 100_000_000):
        self.out = clear_shards(out_dir)
        self.tokenizer, self.val_fraction, self.val_docs = tokenizer, val_fraction, val_docs
        self.shard_tokens, self.dtype = shard_tokens, dtype_for_vocab(tokenizer.n_vocab)
        self.writers = {s: ShardWriter(self.out, s, self.dtype, shard_tokens, bos_id=tokenizer.bos_id)
                        for s in ("train", "val")}
        self.stats: dict[str, Any] = {k: {"train": 0, "val": 0} for k in ("docs", "tokens", "bytes")}
        self.n = 0

    def add(self, ids: list[int] | np.ndarray, n_bytes: int) -> None:
        """Append the next document (its ids, with or without the leading <|bos|>; its UTF-8 size)."""
        split = "val" if is_val_doc(self.n, self.val_fraction, self.val_docs) else "train"
        self.writers[split].add(ids)
        has_bos = len(ids) > 0 and ids[0] == self.tokenizer.bos_id
        self.stats["docs"][split] += 1
        self.stats["tokens"][split] += len(ids) + (0 if has_bos else 1)
        self.stats["bytes"][split] += n_bytes
        self.n += 1

    def finish(self, **config: Any) -> dict[str, Any]:
        if self.n == 0:
            raise CfError(f"{self.out}: no documents to tokenize")
        splits = {s: w.close() for s, w in self.writers.items()}
        stats = self.stats
        stats["shards"] = {s: len(v) for s, v in splits.items()}
        stats["bytes_per_token"] = sum(stats["bytes"].values()) / max(1, sum(stats["tokens"].values()))
        write_shards_json(self.out, splits, self.dtype, self.tokenizer.n_vocab, self.tokenizer.bos_id,
                          tokenizer_hash(self.tokenizer), stats=stats,
                          config={"val_fraction": self.val_fraction, "val_docs": self.val_docs,
                                  "shard_tokens": self.shard_tokens, **config})
        return stats


def tokenize_corpus(tokenizer: Any, docs_iter: Iterable[str | dict], out_dir: str | os.PathLike,
                    val_fraction: float = 0.01, val_docs: int | None = None,
                    shard_tokens: int = 100_000_000, batch_docs: int = 512,
                    num_threads: int = 8) -> dict[str, Any]:
    """Tokenize documents into train/val shards under ``out_dir``; return statistics.

    ``docs_iter`` yields strings (or dicts with a ``"text"`` key). Validation documents are the
    first ``val_docs`` documents when given, else an evenly spread ``val_fraction`` of them
    (document 0 always, so a tiny corpus still has a validation split).
    """
    w = CorpusWriter(out_dir, tokenizer, val_fraction, val_docs, shard_tokens)

    def flush(batch: list[str]) -> None:
        for text, ids in zip(batch, tokenizer.encode_batch(batch, num_threads=num_threads)):
            w.add(ids, len(text.encode("utf-8")))

    batch: list[str] = []
    for n, doc in enumerate(docs_iter):
        text = doc["text"] if isinstance(doc, dict) else doc
        if not isinstance(text, str):
            raise CfError(f"tokenize_corpus: document {n}: expected a string, got {type(text).__name__}")
        batch.append(text)
        if len(batch) >= batch_docs:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    return w.finish()


# ----------------------------------------------------------------------------- reading

def read_shards_json(dir: str | os.PathLike) -> dict[str, Any]:
    p = Path(dir) / SHARDS_JSON
    if not p.exists():
        raise CfError(f"{dir}: no {SHARDS_JSON} (shards missing or their write did not finish)")
    meta = read_json(p, "shards metadata")
    for key in ("dtype", "vocab_size", "bos_id", "splits"):
        if key not in meta:
            raise CfError(f"{p}: missing field '{key}'")
    return meta


def open_shard(dir: str | os.PathLike, info: dict[str, Any], dtype: str) -> np.ndarray:
    path = Path(dir) / info["file"]
    if not path.exists():
        raise CfError(f"{path}: shard listed in {SHARDS_JSON} is missing")
    size = path.stat().st_size // np.dtype(dtype).itemsize
    if size != info["tokens"]:
        raise CfError(f"{path}: has {size} tokens, {SHARDS_JSON} says {info['tokens']}")
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")


def doc_starts(dir: str | os.PathLike, info: dict[str, Any]) -> np.ndarray:
    """The document index of one shard: offsets where documents start."""
    path = Path(dir) / info["file"].replace(".bin", ".idx")
    return np.fromfile(path, dtype="<i8")


class TokenLoader:
    """Batches ``(x, y)`` of shape ``(B, T)`` (int64, CPU) from one split, sharded by rank.

    Windows of ``B*T+1`` tokens are cut from each shard (a shard's tail shorter than a window is
    skipped); global window ``g = step * world_size + rank``. With ``seed`` the window order is
    reshuffled every epoch (a permutation drawn from ``seed + epoch``), else it is sequential.
    After the last window the loader wraps around and ``epoch`` increases.
    """
    def __init__(self, dir: str | os.PathLike, split: str, B: int, T: int, rank: int = 0,
                 world_size: int = 1, seed: int | None = None):
        self.dir, self.split, self.B, self.T = Path(dir), split, B, T
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.meta = read_shards_json(dir)
        infos = self.meta["splits"].get(split, [])
        self.window = B * T + 1
        self.shards = [open_shard(dir, info, self.meta["dtype"]) for info in infos]
        counts = np.array([len(s) // self.window for s in self.shards], dtype=np.int64)
        total = int(sum(len(s) for s in self.shards))
        if counts.sum() == 0:
            raise CfError(f"{self.dir}: split '{split}' has {total} tokens in {len(infos)} shard(s); "
                          f"need a shard of at least B*T+1 = {self.window} tokens")
        self.n_windows = int(counts.sum())
        self.cum = np.concatenate([[0], np.cumsum(counts)])  # window g lives in shard searchsorted(cum, g)
        self.step = 0
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def epoch(self) -> int:
        return (self.step * self.world_size + self.rank) // self.n_windows

    def _window_index(self, g: int) -> int:
        epoch, i = divmod(g, self.n_windows)
        if self.seed is None:
            return i
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(self.n_windows))
        return int(self._perm[1][i])

    def window_tokens(self, g: int) -> np.ndarray:
        i = self._window_index(g)
        s = int(np.searchsorted(self.cum, i, side="right")) - 1
        off = (i - int(self.cum[s])) * self.window
        return np.asarray(self.shards[s][off:off + self.window])

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.window_tokens(self.step * self.world_size + self.rank)
        self.step += 1
        t = torch.from_numpy(w.astype(np.int64))
        return t[:-1].view(self.B, self.T), t[1:].view(self.B, self.T)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next()

    def state_dict(self) -> dict[str, Any]:
        return {"split": self.split, "step": self.step, "epoch": self.epoch, "B": self.B, "T": self.T,
                "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("B", "T", "seed"):
            if k in state and state[k] != getattr(self, k):
                raise CfError(f"{self.dir}: loader state has {k}={state[k]}, this run uses {getattr(self, k)}")
        # windows consumed by all ranks together; a different world size resumes at the same place
        consumed = int(state["step"]) * int(state.get("world_size", self.world_size))
        if consumed % self.world_size:
            raise CfError(f"{self.dir}: loader state ({consumed} windows) cannot be split over "
                          f"world_size {self.world_size}")
        self.step = consumed // self.world_size
