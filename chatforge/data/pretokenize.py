"""``chatforge data tokenize``: parquet / JSONL documents -> token shards, in parallel with datatrove.

FineWeb-sized inputs come as many files (a 10B-token sample is ~15 parquet files of ~2 GB), so the
unit of parallel work is the input file. Two phases:

    1  map (datatrove executor: local processes, Ray or Slurm; ``--tasks N``)
       task r tokenizes input files r, r+N, r+2N, ... (sorted order), each into
       parts/<file index>.bin (every document as <|bos|> + tokens) + .docs (tokens and UTF-8 bytes
       per document) + .json (counts; written last: its presence marks the file done, so a re-run resumes)
    2  merge (one process, a sequential copy)
       the parts in file order -> train/val shards through shards.CorpusWriter, the writer that
       single-process ``tokenize_corpus`` uses too

The shards therefore depend only on the input files and the tokenizer, never on --tasks: documents
keep their file order, and the validation split is chosen by global document index. The parity test
checks --tasks 1, --tasks 2 and ``tokenize_corpus`` (the slow, obviously-correct twin) byte for byte.
Documents with empty text are skipped (datatrove's readers drop them).

    chatforge data tokenize --input runs/web/raw --tokenizer runs/web/tokenizer --out runs/web/shards --tasks 8
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader, ParquetReader

from chatforge.common import (CfError, add_config_args, atomic_path, atomic_write_json, config_from_args,
                              make_parser, print0, print_config, read_json)
from chatforge.data.curate import make_executor
from chatforge.data.shards import CorpusWriter, dtype_for_vocab, tokenizer_hash
from chatforge.tokenizer.tokenizer import Tokenizer

SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")


@dataclass
class TokenizeConfig:
    input: str = field(default="", metadata={"help": "parquet / JSONL(.gz) file, or a folder of them (recursive)"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder (chatforge tok train)"})
    out: str = field(default="", metadata={"help": "shards folder to write"})
    text_key: str = field(default="text", metadata={"help": "column / field holding the document text"})
    tasks: int = field(default=1, metadata={"help": "datatrove tasks; each takes every tasks-th input file"})
    workers: int = field(default=0, metadata={"help": "tasks run at once (0 = all; local: 1 = in-process)"})
    executor: str = field(default="local", metadata={"help": "datatrove executor", "choices": ["local", "ray", "slurm"]})
    slurm_partition: str = field(default="", metadata={"help": "slurm partition (executor=slurm)"})
    val_fraction: float = field(default=0.01, metadata={"help": "evenly spread fraction of documents for val"})
    val_docs: int = field(default=-1, metadata={"help": "first N documents for val instead (-1 = use val_fraction)"})
    shard_tokens: int = field(default=100_000_000, metadata={"help": "tokens per output shard"})
    batch_docs: int = field(default=1024, metadata={"help": "documents per encode_batch call"})
    threads: int = field(default=1, metadata={"help": "tokenizer threads per task"})


def list_inputs(path: str | Path) -> tuple[Path, list[str]]:
    """(folder, sorted file names relative to it) of the parquet / JSONL input(s)."""
    p = Path(path)
    if p.is_file():
        if not p.name.endswith(SUFFIXES):
            raise CfError(f"{p}: expected a {', '.join(SUFFIXES)} file")
        return p.parent, [p.name]
    if not p.is_dir():
        raise CfError(f"{p}: input not found (expected a parquet / JSONL file or folder)")
    files = sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES)
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise CfError(f"{p}: no {', '.join(SUFFIXES)} files inside")
    return p, files


def _reader(folder: Path, name: str, text_key: str):
    """datatrove's reader for this file type (it handles parquet batches and gzip)."""
    if name.endswith(".parquet"):
        return ParquetReader(str(folder), text_key=text_key)
    return JsonlReader(str(folder), text_key=text_key, compression="infer")


class TokenizeFiles(PipelineStep):
    """Map phase: this task's input files -> parts/<index>.{bin,docs,json}. Finished files are skipped."""
    name = "🔢 tokenize files"
    type = "TOKENIZER"

    def __init__(self, cfg: TokenizeConfig, parts: Path):
        super().__init__()
        self.cfg, self.parts = cfg, parts

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        folder, files = list_inputs(self.cfg.input)
        tok = Tokenizer.load(self.cfg.tokenizer)
        for i in range(rank, len(files), world_size):
            if not (self.parts / f"{i:06d}.json").exists():
                with self.track_time():
                    n_docs, n_tokens = tokenize_file(tok, folder, files[i], self.parts / f"{i:06d}", self.cfg)
                self.stat_update("documents", value=n_docs)
                self.stat_update("tokens", value=n_tokens)
        yield from ()


def tokenize_file(tok: Any, folder: Path, name: str, stem: Path, cfg: TokenizeConfig) -> tuple[int, int]:
    """One input file -> ``stem``.bin (uint16/32: <|bos|> + tokens per document), .docs (int64
    (tokens incl. <|bos|>, UTF-8 bytes) per document), then .json with the counts (the done marker)."""
    dtype = np.dtype(dtype_for_vocab(tok.n_vocab)).newbyteorder("<")
    docs: list[tuple[int, int]] = []
    with atomic_path(stem.with_suffix(".bin")) as tmp, open(tmp, "wb") as f:
        batch: list[str] = []

        def flush() -> None:
            for text, ids in zip(batch, tok.encode_batch(batch, num_threads=cfg.threads)):
                np.asarray([tok.bos_id] + ids, dtype=dtype).tofile(f)
                docs.append((len(ids) + 1, len(text.encode("utf-8"))))
            batch.clear()

        for doc in _reader(folder, name, cfg.text_key).read_file(name):
            batch.append(doc.text)
            if len(batch) >= cfg.batch_docs:
                flush()
        flush()
    with atomic_path(stem.with_suffix(".docs")) as tmp:
        np.asarray(docs, dtype="<i8").reshape(-1, 2).tofile(tmp)
    n_tokens = sum(t for t, _ in docs)
    atomic_write_json(stem.with_suffix(".json"), {"file": name, "docs": len(docs), "tokens": n_tokens})
    return len(docs), n_tokens


def merge_parts(tok: Any, parts: Path, n_files: int, cfg: TokenizeConfig) -> dict[str, Any]:
    """Reduce phase: parts in input-file order -> train/val shards + shards.json."""
    missing = [i for i in range(n_files) if not (parts / f"{i:06d}.json").exists()]
    if missing:
        raise CfError(f"{parts}: {len(missing)} of {n_files} input files not tokenized (first: #{missing[0]}); "
                      f"a task failed or is still running, see the logs beside it")
    w = CorpusWriter(cfg.out, tok, cfg.val_fraction, None if cfg.val_docs < 0 else cfg.val_docs, cfg.shard_tokens)
    dtype = np.dtype(dtype_for_vocab(tok.n_vocab)).newbyteorder("<")
    for i in range(n_files):
        info = read_json(parts / f"{i:06d}.json", "tokenized part")
        tokens = np.fromfile(parts / f"{i:06d}.bin", dtype=dtype)
        docs = np.fromfile(parts / f"{i:06d}.docs", dtype="<i8").reshape(-1, 2)   # (n_docs, [tokens, bytes])
        if tokens.size != info["tokens"] or len(docs) != info["docs"] or docs[:, 0].sum() != tokens.size:
            raise CfError(f"{parts / f'{i:06d}.bin'}: {tokens.size} tokens / {len(docs)} documents, expected "
                          f"{info['tokens']} / {info['docs']} (a damaged part: delete it and re-run)")
        ends = np.cumsum(docs[:, 0])
        for a, b, n_bytes in zip(ends - docs[:, 0], ends, docs[:, 1]):
            w.add(tokens[a:b], int(n_bytes))
    return w.finish(input=str(cfg.input), text_key=cfg.text_key)


def _fingerprint(cfg: TokenizeConfig, files: list[str], tok_hash: str) -> str:
    key = json.dumps([str(Path(cfg.input).resolve()), files, tok_hash, cfg.text_key])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def tokenize_shards(cfg: TokenizeConfig) -> dict[str, Any]:
    """Run both phases; returns the shard statistics plus wall time and throughput.

    Work files live in ``<out>/.tokenize/`` (parts, datatrove logs, the job's fingerprint); a re-run
    with the same inputs and tokenizer resumes, a changed one starts over."""
    if not cfg.out or not cfg.tokenizer:
        raise CfError("config: --out and --tokenizer are required")
    if cfg.tasks < 1 or cfg.workers < 0 or cfg.threads < 1 or cfg.batch_docs < 1:
        raise CfError("config: expected tasks >= 1, workers >= 0, threads >= 1, batch_docs >= 1")
    _, files = list_inputs(cfg.input)
    tok = Tokenizer.load(cfg.tokenizer)
    work = Path(cfg.out) / ".tokenize"
    fp = _fingerprint(cfg, files, tokenizer_hash(tok))
    if (work / "job.json").exists() and read_json(work / "job.json").get("fingerprint") != fp:
        shutil.rmtree(work)  # other inputs or tokenizer: old parts and completion markers are stale
    (work / "parts").mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "job.json", {"fingerprint": fp, "config": asdict(cfg), "files": len(files)})
    t0 = time.perf_counter()
    runner = TokenizeConfig(**{**asdict(cfg), "workers": min(cfg.workers or cfg.tasks, cfg.tasks)})
    ex = make_executor(runner, [TokenizeFiles(cfg, work / "parts")], work / "logs", cfg.tasks)
    ex.run()
    if cfg.executor == "slurm":
        print0(f"data tokenize: submitted slurm jobs; logs in {work / 'logs'}. When they finish, re-run the "
               f"same command with --executor local to merge.")
        return {}
    t_map = time.perf_counter() - t0
    stats = merge_parts(tok, work / "parts", len(files), cfg)
    shutil.rmtree(work / "parts")
    seconds = time.perf_counter() - t0
    docs, tokens = sum(stats["docs"].values()), sum(stats["tokens"].values())
    stats.update(files=len(files), seconds=round(seconds, 3), map_seconds=round(t_map, 3),
                 docs_per_s=docs / seconds, tokens_per_s=tokens / seconds)
    return stats


def describe(stats: dict[str, Any], cfg: TokenizeConfig) -> str:
    if not stats:  # a slurm submission returns before the merge
        return "data tokenize: nothing merged yet"
    return (f"data tokenize: {stats['files']} files, {sum(stats['docs'].values()):,} documents -> "
            f"{sum(stats['tokens'].values()):,} tokens in {stats['seconds']:.1f} s ({stats['docs_per_s']:,.0f} docs/s, "
            f"{stats['tokens_per_s']:,.0f} tokens/s with {cfg.tasks} task(s)); shards in {cfg.out}")


def cli(argv: list[str]) -> None:
    p = make_parser("chatforge data tokenize", "parquet / JSONL documents -> token shards, in parallel (datatrove)")
    add_config_args(p, TokenizeConfig)
    cfg = config_from_args(TokenizeConfig, p.parse_args(argv))
    print_config(cfg, "tokenize config")
    print0(describe(tokenize_shards(cfg), cfg))
