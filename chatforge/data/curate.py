"""``chatforge data``: web pages in, clean documents (and token shards) out, FineWeb style.

The pipeline is three datatrove stages, each a list of PipelineSteps run by an executor
(LocalPipelineExecutor here; Ray or Slurm to scale out: same steps, same config):

    A  per input shard   read -> URL filter -> extract -> language -> Gopher rep. -> Gopher qual.
                         -> C4 -> FineWeb -> (signatures) -> filtered/*.jsonl
    B  one task          exact + MinHash LSH clustering over all signatures -> dups.json
    C  per shard         drop duplicates -> PII -> token count -> docs/*.jsonl.gz (or parquet)

then token shards (chatforge.shards) and data_report.md with the funnel (documents and tokens in
and out of every step) plus funnel.png. Every removed document is written to removed/<step>/ with
its reason. Stage outputs live in ``data/.work`` until the run completes, then are moved into
place, so readers never see a half-written file; completed tasks are skipped on a re-run.

    chatforge data run --input crawl.warc.gz --run demo
    chatforge data make-crawl --out runs/demo/crawl          # synthetic crawl with ground truth
    chatforge data eval --run demo                           # precision/recall of every filter
"""
from __future__ import annotations

import copy
import functools
import gzip
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from datatrove.utils.stats import Stats
from loguru import _better_exceptions as loguru_exceptions, logger

from chatforge.common import (add_config_args, atomic_write_json, atomic_write_text, CfError,
                              config_from_args, make_parser, print0, print_config, read_json, read_jsonl,
                              run_dir, save_figure, Timer, write_meta)
from chatforge.data import filters as F
from chatforge.data.crawl import CrawlReader, decode_body, demo_docs, make_crawl
from chatforge.data.dedup import find_duplicates, Signatures
from chatforge.data.filters import _WORD_RE, EXTRACTORS, extract_text
from chatforge.data.shards import tokenize_corpus
from chatforge.tokenizer.tokenizer import Tokenizer

# funnel rows in FineWeb's order: (config switch, step name)
STEP_ORDER = ["url_filter", "extract", "language", "gopher_repetition", "gopher_quality", "c4", "fineweb",
              "exact_dedup", "minhash_dedup", "pii"]


@dataclass
class DataConfig:
    input: str = field(default="", metadata={"help": "WARC/WET(.gz) file, or folder of WARC, HTML, JSONL, parquet or .txt files"})
    run: str = field(default="default", metadata={"help": "run name or path; outputs go to runs/<run>/data"})
    out: str = field(default="", metadata={"help": "output folder (overrides runs/<run>/data)"})
    executor: str = field(default="local", metadata={"help": "datatrove executor", "choices": ["local", "ray", "slurm"]})
    tasks: int = field(default=1, metadata={"help": "tasks (input shards) per stage"})
    workers: int = field(default=1, metadata={"help": "tasks run at once (local: 1 = in-process)"})
    limit: int = field(default=-1, metadata={"help": "max documents read per task (-1 = all)"})
    slurm_partition: str = field(default="", metadata={"help": "slurm partition (executor=slurm)"})
    # URL filter
    url_filter: bool = field(default=True, metadata={"help": "drop blocklisted domains / banned URL words"})
    url_ut1: bool = field(default=True, metadata={"help": "use the UT1 blocklist shipped in datatrove (~2 s to load)"})
    url_blocklist: list = field(default_factory=list, metadata={"help": "extra blocked domains"})
    url_banned_words: bool = field(default=True, metadata={"help": "drop URLs containing a banned word"})
    # extraction
    extract: bool = field(default=True, metadata={"help": "extract main text from HTML"})
    extractor: str = field(default="trafilatura", metadata={
        "help": "HTML extractor (trafilatura-fast: without its readability/jusText fallback, ~2x faster, "
                "F1 0.965 -> 0.946 on the extraction benchmark)", "choices": list(EXTRACTORS)})
    extract_timeout: float = field(default=2.0, metadata={"help": "seconds per page, 0 = none (FineWeb: 0.1; larger keeps output machine-independent)"})
    # language
    language_filter: bool = field(default=True, metadata={"help": "fastText (lid.176) language filter"})
    languages: list = field(default_factory=lambda: ["en"], metadata={"help": "languages to keep"})
    language_threshold: float = field(default=0.65, metadata={"help": "min language probability (FineWeb: 0.65)"})
    # quality
    gopher_repetition: bool = field(default=True, metadata={"help": "Gopher repetition filter"})
    gopher_quality: bool = field(default=True, metadata={"help": "Gopher quality filter"})
    gopher_min_words: int = field(default=50, metadata={"help": "Gopher min words per doc"})
    c4: bool = field(default=True, metadata={"help": "C4 line/doc filter (no terminal-punctuation rule)"})
    c4_min_sentences: int = field(default=5, metadata={"help": "C4 min sentences per doc"})
    fineweb: bool = field(default=True, metadata={"help": "FineWeb quality filter"})
    fineweb_line_punct_thr: float = field(default=0.12, metadata={"help": "min fraction of lines ending in punctuation"})
    fineweb_short_line_thr: float = field(default=0.67, metadata={"help": "max fraction of lines <= 30 chars"})
    fineweb_char_dup_ratio: float = field(default=0.01, metadata={"help": "max fraction of chars in duplicated lines"})
    fineweb_new_line_ratio: float = field(default=0.3, metadata={"help": "max newlines per word"})
    # dedup
    exact_dedup: bool = field(default=True, metadata={"help": "drop exact duplicates (normalized text hash)"})
    minhash_dedup: bool = field(default=True, metadata={"help": "drop near duplicates (MinHash LSH)"})
    minhash_ngram: int = field(default=5, metadata={"help": "word n-gram size"})
    minhash_bands: int = field(default=14, metadata={"help": "LSH bands"})
    minhash_rows: int = field(default=8, metadata={"help": "rows (hashes) per band"})
    # PII and outputs
    pii: bool = field(default=True, metadata={"help": "replace emails and public IPs"})
    output_format: str = field(default="jsonl", metadata={"help": "clean docs format", "choices": ["jsonl", "parquet"]})
    tokenizer: str = field(default="", metadata={"help": "chatforge tokenizer dir for token counts + shards ('' = approx. counts, no shards)"})
    shards: bool = field(default=True, metadata={"help": "write token shards to runs/<run>/shards (needs --tokenizer)"})


def validate(cfg: DataConfig) -> None:
    if not cfg.input:
        raise CfError("config.input: expected a WARC file or a folder of pages, got nothing (--input)")
    if not Path(cfg.input).exists():
        raise CfError(f"{cfg.input}: input not found")
    for name in ("language_threshold", "fineweb_line_punct_thr", "fineweb_short_line_thr", "fineweb_char_dup_ratio"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise CfError(f"config.{name}: expected a value in [0, 1], got {getattr(cfg, name)}")
    for name in ("tasks", "workers", "minhash_ngram", "minhash_bands", "minhash_rows"):
        if getattr(cfg, name) < 1:
            raise CfError(f"config.{name}: expected an integer >= 1, got {getattr(cfg, name)}")
    if cfg.extractor not in EXTRACTORS:
        raise CfError(f"config.extractor: expected one of {', '.join(EXTRACTORS)}, got {cfg.extractor!r}")
    if cfg.executor not in ("local", "ray", "slurm"):
        raise CfError(f"config.executor: expected local, ray or slurm, got {cfg.executor!r}")
    if cfg.output_format not in ("jsonl", "parquet"):
        raise CfError(f"config.output_format: expected jsonl or parquet, got {cfg.output_format!r}")
    if cfg.output_format == "parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise CfError("config.output_format: parquet needs `pip install pyarrow`")
    if not isinstance(cfg.languages, list) or not cfg.languages:
        raise CfError(f"config.languages: expected a non-empty list like [\"en\"], got {cfg.languages!r}")
    if cfg.tokenizer and not Path(cfg.tokenizer).is_dir():
        raise CfError(f"{cfg.tokenizer}: tokenizer directory not found")


def out_dir(cfg: DataConfig) -> Path:
    return Path(cfg.out) if cfg.out else run_dir(cfg.run) / "data"


# ----------------------------------------------------------------------------- stages

def _removed_adapter(self, doc) -> dict:  # removed docs: keep the reason, trim HTML to keep files small
    return {"id": doc.id, "url": doc.metadata.get("url", ""), "reason": doc.metadata.get("filter_reason", ""),
            "text": doc.text[:2000]}


def _clean_adapter(self, doc) -> dict:
    m = doc.metadata
    return {"id": doc.id, "url": m.get("url", ""), "timestamp": m.get("timestamp", ""),
            "language": m.get("language", ""), "language_score": m.get("language_score"),
            "token_count": m.get("token_count"), "pii_replaced": bool(m.get("pii_replaced")), "text": doc.text}


def _intermediate_adapter(self, doc) -> dict:
    return {"id": doc.id, "text": doc.text, "metadata": doc.metadata}


def _removed_writer(work: Path, step: str):
    return JsonlWriter(str(work / "removed" / step), output_filename="${rank}.jsonl.gz", adapter=_removed_adapter)


def build_stages(cfg: DataConfig, work: Path) -> tuple[list, list, list]:
    """The three stages' step lists, in FineWeb's order (see the module docstring):
    (filter_steps: stage A, dedup_steps: stage B, finish_steps: stage C)."""
    src = Path(cfg.input).resolve()
    folder, glob = (str(src), None) if src.is_dir() else (str(src.parent), src.name)
    filter_steps: list = [CrawlReader(folder, glob_pattern=glob, limit=cfg.limit), F.Tally("read")]

    def add(steps: list, step_name: str, step) -> None:
        """Append a filter, named for the funnel, and a tally of what it let through."""
        step.name = f"{step.name} [{step_name}]"
        step.stats = Stats(str(step))  # the stats keep the name they were created with
        steps.append(step)
        steps.append(F.Tally(step_name))
    if cfg.url_filter:
        add(filter_steps, "url_filter", F.URLFilter(cfg.url_blocklist, cfg.url_ut1, cfg.url_banned_words,
                                      exclusion_writer=_removed_writer(work, "url_filter")))
    if cfg.extract:
        filter_steps.append(F.Extract(cfg.extractor, cfg.extract_timeout, exclusion_writer=_removed_writer(work, "extract")))
        filter_steps.append(F.TokenCount(cfg.tokenizer))
        filter_steps.append(F.Tally("extract"))
    else:
        filter_steps.append(F.TokenCount(cfg.tokenizer))
    if cfg.language_filter:
        add(filter_steps, "language", F.LanguageFilter(cfg.languages, cfg.language_threshold, _removed_writer(work, "language")))
    if cfg.gopher_repetition:
        add(filter_steps, "gopher_repetition", F.GopherRepetition(exclusion_writer=_removed_writer(work, "gopher_repetition")))
    if cfg.gopher_quality:
        add(filter_steps, "gopher_quality", F.GopherQuality(min_doc_words=cfg.gopher_min_words,
                                              exclusion_writer=_removed_writer(work, "gopher_quality")))
    if cfg.c4:
        add(filter_steps, "c4", F.C4Filter(min_num_sentences=cfg.c4_min_sentences, exclusion_writer=_removed_writer(work, "c4")))
    if cfg.fineweb:
        add(filter_steps, "fineweb", F.FineWebFilter(cfg.fineweb_line_punct_thr, cfg.fineweb_short_line_thr, 30,
                                       cfg.fineweb_char_dup_ratio, cfg.fineweb_new_line_ratio,
                                       exclusion_writer=_removed_writer(work, "fineweb")))
    if cfg.exact_dedup or cfg.minhash_dedup:
        filter_steps.append(Signatures(str(work / "sigs"), cfg.minhash_bands * cfg.minhash_rows, cfg.minhash_ngram))
    # stage A -> C hand-over: plain JSONL (a temporary file: gzip -9 on it cost ~0.1 ms per document)
    filter_steps.append(JsonlWriter(str(work / "filtered"), output_filename="${rank}.jsonl", adapter=_intermediate_adapter,
                         compression=None))

    dedup_steps = [DedupCluster(str(work / "sigs"), str(work / "dups.json"), cfg.minhash_bands, cfg.minhash_rows,
                      cfg.exact_dedup, cfg.minhash_dedup)] if (cfg.exact_dedup or cfg.minhash_dedup) else []

    finish_steps: list = [JsonlReader(str(work / "filtered"), glob_pattern="*.jsonl", compression=None)]
    if cfg.exact_dedup:
        add(finish_steps, "exact_dedup", F.DropIds(str(work / "dups.json"), "exact duplicate", _removed_writer(work, "exact_dedup")))
    if cfg.minhash_dedup:
        add(finish_steps, "minhash_dedup", F.DropIds(str(work / "dups.json"), "near duplicate", _removed_writer(work, "minhash_dedup")))
    if cfg.pii:
        finish_steps.append(F.PIIStep(True, True))
        finish_steps.append(F.TokenCount(cfg.tokenizer))
        finish_steps.append(F.Tally("pii"))
    if cfg.output_format == "parquet":
        finish_steps.append(ParquetWriter(str(work / "docs"), output_filename="${rank}.parquet", adapter=_clean_adapter))
    else:
        finish_steps.append(JsonlWriter(str(work / "docs"), output_filename="${rank}.jsonl.gz", adapter=_clean_adapter))
    return filter_steps, dedup_steps, finish_steps


class DedupCluster(PipelineStep):
    """Stage B: one task reads every shard's signatures and decides which documents are duplicates."""
    name = "🫂 Dedup cluster"
    type = "🫂 - DEDUP"

    def __init__(self, sig_folder: str, out_path: str, bands: int, rows: int, exact: bool, near: bool):
        super().__init__()
        self.sig_folder, self.out_path, self.bands, self.rows = sig_folder, out_path, bands, rows
        self.exact, self.near = exact, near

    def run(self, data=None, rank: int = 0, world_size: int = 1):

        ids: list[str] = []
        hashes, sigs = [], []
        for p in sorted(Path(self.sig_folder).glob("[0-9]*.npz")):
            z = np.load(p, allow_pickle=True)
            ids += [str(x) for x in z["ids"]]
            hashes.append(z["hashes"])
            sigs.append(z["sigs"])
        drop = find_duplicates(ids, np.concatenate(hashes), np.concatenate(sigs), self.bands, self.rows,
                               self.exact, self.near) if ids else {}
        for reason in drop.values():
            self.stat_update(reason)
        atomic_write_json(self.out_path, drop)
        return iter(())


def make_executor(cfg: DataConfig, steps: list, logs: Path, tasks: int, depends=None):
    if cfg.executor == "ray":
        if importlib.util.find_spec("ray") is None:
            raise CfError("config.executor: ray is not installed (`pip install ray`)")
        return RayPipelineExecutor(steps, tasks=tasks, workers=cfg.workers, logging_dir=str(logs), depends=depends)
    if cfg.executor == "slurm":
        if not cfg.slurm_partition:
            raise CfError("config.slurm_partition: expected a partition name for executor=slurm")
        return SlurmPipelineExecutor(steps, tasks=tasks, time="10:00:00", partition=cfg.slurm_partition,
                                     logging_dir=str(logs), depends=depends, job_name=f"cf-{logs.name}")
    # workers=1 runs tasks in-process (no __main__ guard needed); more workers fork a pool
    return LocalPipelineExecutor(steps, tasks=tasks, workers=min(cfg.workers, tasks), logging_dir=str(logs),
                                 start_method="fork", depends=depends)


def _run_local(ex) -> None:
    """LocalPipelineExecutor.run, minus its multiprocessing Manager (a server process, ~0.5 s) when
    tasks run in-process: the same per-task entry point, stats files and completion markers."""
    if ex.workers != 1:
        ex.run()
        return
    ranks = ex.get_incomplete_ranks(range(ex.world_size))
    if ranks:
        ex.save_executor_as_json()
    pipeline = ex.pipeline
    for rank in ranks:
        ex.pipeline = copy.deepcopy(pipeline)  # fresh step state and stats per task, as datatrove does
        ex._run_for_rank(rank)
    ex.pipeline = pipeline


def _ensure_filtered(work: Path) -> None:
    """Stage C's reader fails on an empty folder: when stage A kept nothing, give it one empty file."""
    folder = work / "filtered"
    if not any(folder.glob("*.jsonl")):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "empty.jsonl", "")


def _reset_if_changed(work: Path, cfg: DataConfig) -> None:
    """Completed tasks are only reused for the same config and the same input files."""
    src = Path(cfg.input)
    files = sorted(src.rglob("*")) if src.is_dir() else [src]
    key = json.dumps({"work_format": 2,  # bump when stage outputs change shape (2: plain filtered/*.jsonl)
                      "config": {k: v for k, v in vars(cfg).items() if k not in ("workers", "executor", "slurm_partition")},
                      "inputs": [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]},
                     sort_keys=True)
    stamp = work / "fingerprint.json"
    if work.exists() and (not stamp.exists() or stamp.read_text() != key):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, key)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise CfError(f"{out}: output folder is not writable ({e.strerror})") from None


def _cache_loguru_lib_dirs() -> None:
    """datatrove adds two loguru sinks per task (3 stages: 6+ per run), and every sink recomputes the
    interpreter's library folders from sysconfig (~10-30 ms each, ~0.1 s a run: as much as 30
    pages' filtering). The folders cannot change while we run, so compute them once."""
    fmt = getattr(loguru_exceptions, "ExceptionFormatter", None)
    get = getattr(fmt, "_get_lib_dirs", None)
    if get is not None and not hasattr(get, "cache_info"):
        fmt._get_lib_dirs = staticmethod(functools.lru_cache(maxsize=1)(get))


def run_pipeline(cfg: DataConfig) -> dict[str, Any]:
    """Run the whole curation pipeline; returns the stats dict also saved as data/data.json."""
    validate(cfg)
    out = out_dir(cfg)
    _check_writable(out)
    work = out / ".work"
    _reset_if_changed(work, cfg)

    _cache_loguru_lib_dirs()
    logger.remove()  # datatrove logs every task verbosely; keep warnings on stderr
    logger.add(sys.stderr, level="WARNING")
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    filter_steps, dedup_steps, finish_steps = build_stages(cfg, work)
    with Timer("data: stages", quiet=True) as t:
        ex_a = make_executor(cfg, filter_steps, work / "logs" / "a_filter", cfg.tasks)
        ex_b = make_executor(cfg, dedup_steps, work / "logs" / "b_dedup", 1, depends=ex_a) if dedup_steps else None
        ex_c = make_executor(cfg, finish_steps, work / "logs" / "c_finish", cfg.tasks, depends=ex_b or ex_a)
        if cfg.executor == "slurm":
            ex_c.run()  # submits the three jobs with dependencies and returns
            print0(f"data: submitted slurm jobs; logs in {work / 'logs'}. Re-run with --executor local to publish.")
            return {}
        if cfg.executor == "local":  # local executors with depends= poll every 2 minutes; run in order instead
            for ex in (ex_a, ex_b, ex_c):
                if ex is not None:
                    if ex is ex_c:
                        _ensure_filtered(work)
                    ex.depends = None
                    _run_local(ex)
        else:
            ex_c.run()
    # publish: move stage outputs into place (whole folders, atomically renamed)
    for name in ("docs", "removed"):
        if (work / name).exists():
            if (out / name).exists():
                shutil.rmtree(out / name)
            os.replace(work / name, out / name)
        (out / name).mkdir(exist_ok=True)
    stats = collect_stats(work / "logs", cfg)
    stats["seconds"] = round(t.seconds, 2)
    if cfg.tokenizer and cfg.shards:
        stats["shards"] = _write_shards(cfg, out)
    write_report(out, cfg, stats)
    write_meta(out / "data.json", "data", cfg, stats=stats)
    return stats


def iter_clean_docs(data_dir: str | os.PathLike):
    """Yield the curated documents ({"id", "url", ..., "text"}) of a data folder, in shard order."""
    out = Path(data_dir)
    for p in sorted((out / "docs").glob("*.jsonl.gz")):
        yield from (d for _, d in read_jsonl(p))




def _write_shards(cfg: DataConfig, out: Path) -> dict:
    shard_dir = out.parent / "shards"
    return tokenize_corpus(Tokenizer.load(cfg.tokenizer), (d["text"] for d in iter_clean_docs(out)), shard_dir)


# ----------------------------------------------------------------------------- stats and report

def _load_stage_stats(logs: Path) -> list[dict]:
    """Sum the per-task stats files of one stage: [{"name", "stats": {metric: total}}] per step."""
    merged: list[dict] = []
    for p in sorted((logs / "stats").glob("*.json")):
        steps = json.loads(p.read_text())
        for i, st in enumerate(steps):
            if len(merged) <= i:
                merged.append({"name": st["name"], "stats": {}})
            for k, v in st["stats"].items():
                total = v.get("total", v) if isinstance(v, dict) else v
                if isinstance(total, (int, float)):
                    merged[i]["stats"][k] = merged[i]["stats"].get(k, 0) + total
    return merged


def collect_stats(logs: Path, cfg: DataConfig) -> dict[str, Any]:
    funnel, reasons, skipped = [], {}, {}
    for stage in ("a_filter", "b_dedup", "c_finish"):
        for st in _load_stage_stats(logs / stage):
            s = st["stats"]
            if "TALLY" in st["name"]:
                funnel.append({"step": st["name"].split(": ", 1)[1], "docs": int(s.get("docs", 0)),
                               "tokens": int(s.get("tokens", 0)), "chars": int(s.get("chars", 0))})
            elif "CrawlReader" in st["name"]:
                skipped = {k[5:]: int(v) for k, v in s.items() if k.startswith("skip:")}
            elif "[" in st["name"] or "Extract" in st["name"]:
                step = st["name"].split("[")[-1].rstrip("]") if "[" in st["name"] else "extract"
                reasons[step] = {k[8:]: int(v) for k, v in s.items() if k.startswith("dropped_")}
    rows = []
    for prev, cur in zip(funnel, funnel[1:]):
        rows.append({"step": cur["step"], "docs_in": prev["docs"], "docs_out": cur["docs"],
                     "tokens_in": prev["tokens"], "tokens_out": cur["tokens"], "reasons": reasons.get(cur["step"], {})})
    n_read = funnel[0]["docs"] if funnel else 0
    return {"records_read": n_read, "records_skipped": skipped, "funnel": rows,
            "docs_out": funnel[-1]["docs"] if funnel else 0, "tokens_out": funnel[-1]["tokens"] if funnel else 0,
            "token_unit": "tokens" if cfg.tokenizer else "approx. tokens (words + punctuation)"}


def write_report(out: Path, cfg: DataConfig, stats: dict) -> None:
    lines = [f"# Data report: {cfg.input}", "",
             f"Extractor: {cfg.extractor}; languages {cfg.languages} (score >= {cfg.language_threshold}); "
             f"MinHash {cfg.minhash_bands}x{cfg.minhash_rows} on {cfg.minhash_ngram}-grams; "
             f"{stats.get('seconds', 0)} s with {cfg.tasks} task(s).", "",
             f"Records read: {stats['records_read']}. Skipped by the reader: "
             + (", ".join(f"{k} {v}" for k, v in sorted(stats["records_skipped"].items())) or "none") + ".", "",
             "| step | docs in | docs out | removed | tokens in | tokens out | top reasons |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in stats["funnel"]:
        removed = r["docs_in"] - r["docs_out"]
        pct = f" ({100 * removed / r['docs_in']:.1f}%)" if r["docs_in"] else ""
        top = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1])[:3])
        tin = "—" if r["step"] in ("url_filter", "extract") else f"{r['tokens_in']:,}"
        lines.append(f"| {r['step']} | {r['docs_in']:,} | {r['docs_out']:,} | {removed:,}{pct} | {tin} | "
                     f"{r['tokens_out']:,} | {top} |")
    lines += ["", f"Out: {stats['docs_out']:,} documents, {stats['tokens_out']:,} {stats['token_unit']}.", "",
              "![funnel](funnel.png)", ""]
    atomic_write_text(out / "data_report.md", "\n".join(lines))
    _funnel_png(out / "funnel.png", stats)


def _funnel_png(path: Path, stats: dict) -> None:
    matplotlib.use("Agg")
    rows = stats["funnel"]
    names = ["read"] + [r["step"] for r in rows]
    docs = [stats["records_read"]] + [r["docs_out"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1))
    ax.barh(range(len(names))[::-1], docs, color="#4c72b0")
    ax.set_yticks(range(len(names))[::-1], names)
    for y, d in zip(range(len(names))[::-1], docs):
        ax.text(d, y, f" {d}", va="center", fontsize=8)
    ax.set_xlabel("documents remaining after step")
    ax.set_title("data funnel")
    save_figure(fig, path)


# ----------------------------------------------------------------------------- eval against the synthetic crawl

FILTER_TARGET = {"url_filter": "blocklisted", "language": "non_english", "gopher_repetition": "spam",
                 "gopher_quality": "spam", "c4": "spam", "fineweb": "spam", "quality (any)": "spam",
                 "exact_dedup": "exact_dup", "minhash_dedup": "near_dup", "pii": "pii"}
QUALITY = ("gopher_repetition", "gopher_quality", "c4", "fineweb")


def _data_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if (p / "data.json").exists():
        return p
    if (p / "data" / "data.json").exists():
        return p / "data"
    p2 = run_dir(path) / "data"
    if (p2 / "data.json").exists():
        return p2
    raise CfError(f"{path}: no curated data found (expected data/data.json from `chatforge data run`)")


def evaluate_filters(run_dir_: str | os.PathLike, labels: str | os.PathLike | None = None) -> dict[str, Any]:
    """Precision and recall of every filter against a synthetic crawl's labels.jsonl.

    precision = removed by the filter and labelled its target / removed by the filter;
    recall = removed by the filter and labelled its target / labelled its target. For PII,
    "removed" means "anonymized". Also reports how many clean pages survived.
    """
    data = _data_dir(run_dir_)
    meta = read_json(data / "data.json", "data.json")
    if labels is None:
        src = Path(meta["config"]["input"])
        labels = (src if src.is_dir() else src.parent) / "labels.jsonl"
    labels = Path(labels)
    if not labels.exists():
        raise CfError(f"{labels}: labels file not found (made by `chatforge data make-crawl`)")
    truth = {}
    for n, d in read_jsonl(labels):
        if "url" not in d or "label" not in d:
            raise CfError(f"{labels}:{n}: expected JSON with url and label")
        truth[d["url"]] = d["label"]
    removed: dict[str, set[str]] = {}
    for step_dir in sorted((data / "removed").glob("*")):
        removed[step_dir.name] = {d["url"] for p in step_dir.glob("*.jsonl.gz") for _, d in read_jsonl(p)}
    kept, anonymized = set(), set()
    for d in iter_clean_docs(data):
        kept.add(d["url"])
        if d.get("pii_replaced"):
            anonymized.add(d["url"])
    removed["quality (any)"] = set().union(*(removed.get(q, set()) for q in QUALITY))
    removed["pii"] = anonymized
    result: dict[str, Any] = {}
    for step, target in FILTER_TARGET.items():
        pred = removed.get(step, set())
        pos = {u for u, lab in truth.items() if lab == target}
        tp = len(pred & pos)
        result[step] = {"target": target, "removed": len(pred), "labelled": len(pos), "true_pos": tp,
                        "precision": round(tp / len(pred), 4) if pred else None,
                        "recall": round(tp / len(pos), 4) if pos else None}
    # where each planted problem ended up, whichever step took it (langid runs before quality: spam often goes there)
    anywhere = set().union(*(v for k, v in removed.items() if k not in ("quality (any)", "pii")))
    result["removed_anywhere"] = {lab: round(len({u for u, t in truth.items() if t == lab} & anywhere)
                                             / max(1, sum(t == lab for t in truth.values())), 4)
                                  for lab in sorted(set(truth.values()) - {"clean", "pii", "junk"})}
    clean = {u for u, lab in truth.items() if lab in ("clean", "pii")}
    result["clean_kept"] = {"kept": len(clean & kept), "total": len(clean),
                            "rate": round(len(clean & kept) / len(clean), 4) if clean else None}
    atomic_write_json(data / "filter_eval.json", result)
    return result


def format_eval(res: dict) -> str:
    lines = ["| filter | target | removed | labelled | precision | recall |", "|---|---|---:|---:|---:|---:|"]
    for k, v in res.items():
        if k in ("clean_kept", "removed_anywhere"):
            continue
        f = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"| {k} | {v['target']} | {v['removed']} | {v['labelled']} | {f(v['precision'])} | {f(v['recall'])} |")
    ck = res["clean_kept"]
    lines.append(f"\nclean pages kept: {ck['kept']}/{ck['total']}; planted problems removed by any step: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in res["removed_anywhere"].items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def _load_docs(path: str) -> list[dict]:
    docs = []
    for n, d in read_jsonl(path, what="documents file"):
        if not isinstance(d.get("text"), str):
            raise CfError(f"{path}:{n}: expected JSON {{\"id\", \"text\"}}")
        docs.append(d)
    return docs


def cli(argv: list[str]) -> None:
    if not argv or argv[0] not in ("run", "make-crawl", "eval"):
        if argv and argv[0] in ("-h", "--help"):
            print("usage: chatforge data {run,make-crawl,eval,fetch,tokenize} [flags]   (chatforge data run --help)")
            return
        raise CfError(f"data: expected a subcommand run | make-crawl | eval | fetch | tokenize, got {argv[:1]}")
    sub, rest = argv[0], argv[1:]
    if sub == "run":
        p = make_parser("chatforge data run", "curate web data: read -> filter -> dedup -> PII -> docs + report")
        add_config_args(p, DataConfig)
        cfg = config_from_args(DataConfig, p.parse_args(rest))
        print_config(cfg, "data config")
        stats = run_pipeline(cfg)
        if stats:
            print0(f"data: {stats['records_read']} records -> {stats['docs_out']} documents, "
                   f"{stats['tokens_out']} {stats['token_unit']} in {stats['seconds']} s; "
                   f"report: {out_dir(cfg) / 'data_report.md'}")
    elif sub == "make-crawl":
        p = make_parser("chatforge data make-crawl", "render documents as a WARC crawl with planted problems + labels")
        p.add_argument("--docs", default="", help="JSONL of {id, text} (default: generated demo documents)")
        p.add_argument("--n", type=int, default=200, help="number of demo documents when --docs is not given")
        p.add_argument("--out", required=True, help="output folder for crawl.warc.gz and labels.jsonl")
        p.add_argument("--seed", type=int, default=0)
        args = p.parse_args(rest)
        docs = _load_docs(args.docs) if args.docs else demo_docs(args.n, args.seed)
        warc, labels = make_crawl(docs, args.out, seed=args.seed)
        print0(f"make-crawl: {warc} ({warc.stat().st_size:,} bytes), labels {labels}")
    else:
        p = make_parser("chatforge data eval", "precision/recall of every filter on a synthetic crawl")
        p.add_argument("--run", required=True, help="run name/path (or its data folder)")
        p.add_argument("--labels", default=None, help="labels.jsonl (default: beside the crawl input)")
        args = p.parse_args(rest)
        print(format_eval(evaluate_filters(args.run, args.labels)))


# ----------------------------------------------------------------------------- extraction quality

def token_f1(pred: str, gold: str) -> float:
    """Bag-of-words F1 between extracted and hand-checked text (the article-extraction-benchmark metric)."""
    p, g = Counter(_WORD_RE.findall(pred.lower())), Counter(_WORD_RE.findall(gold.lower()))
    overlap = sum((p & g).values())
    if not overlap:
        return 0.0
    prec, rec = overlap / sum(p.values()), overlap / sum(g.values())
    return 2 * prec * rec / (prec + rec)


def extraction_benchmark(bench_dir: str | os.PathLike, extractor: str, limit: int | None = None) -> dict[str, float]:
    """Mean token F1 and pages/s of ``extractor`` on scrapinghub's article-extraction-benchmark layout."""
    bench_dir = Path(bench_dir)
    truth = read_json(bench_dir / "ground-truth.json", "ground truth")
    keys = sorted(truth)[:limit]
    f1s, secs = [], 0.0
    for k in keys:
        html, _ = decode_body(gzip.decompress((bench_dir / "html" / f"{k}.html.gz").read_bytes()), None)
        t0 = time.perf_counter()
        try:
            text = extract_text(html or "", extractor)
        except Exception:  # noqa: BLE001  a failure scores 0, it does not stop the benchmark
            text = ""
        secs += time.perf_counter() - t0
        f1s.append(token_f1(text, truth[k]["articleBody"]))
    return {"f1": sum(f1s) / max(1, len(f1s)), "pages": len(keys), "pages_per_s": len(keys) / max(secs, 1e-9)}
