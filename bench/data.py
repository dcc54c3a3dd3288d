"""Benchmark `chatforge data`: documents per CPU-second through the pipeline, and extraction F1.

    .venv/bin/python bench/data.py [--docs 300] [--repeats 3] [--steps]

Same WARC input (a synthetic crawl) for every contender, one task on one core, medians of
--repeats runs, printed as ratios against datatrove's stock FineWeb steps measured in this run.
Contenders: the whole chatforge pipeline (every step on, report included) with the default
extractor (trafilatura, with its fallback), trafilatura-fast and resiliparse. Extraction F1 uses
``data_dir()/article-extraction-benchmark`` ($CHATFORGE_DATA, default ../shared/data).

"stock" = datatrove's own blocks from its FineWeb example that run offline here: its Trafilatura
extractor (sandboxed subprocess, deduplicate=True, favour_precision=True) and PIIFormatter, behind
our reader. Its Gopher/C4/FineWeb filters need NLTK punkt data, its URL filter tldextract's suffix
list and its language filter a fasttext model: all downloads, so they are left out and the stock
pipeline does strictly less work than ours (the ratio is conservative).

--steps adds what each chatforge step costs per document (fast extractor): the pipeline with every
optional step off ("skeleton": read, extract, count tokens, write), then with one step back on.

--tokenize N: ``chatforge data tokenize`` on N Gutenberg paragraphs in 8 parquet files (vocab 4096):
docs/s and tokens/s per core (CPU seconds, children included) and wall time with --tasks 1 and 2,
as ratios against single-process ``shards.tokenize_corpus`` (one thread) on the same documents,
plus a byte-for-byte check that --tasks 2 writes the same shards as --tasks 1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.common import data_dir  # noqa: E402
from chatforge.data.crawl import demo_docs, make_crawl  # noqa: E402
from chatforge.data.curate import DataConfig, extraction_benchmark, run_pipeline  # noqa: E402
from chatforge.data.pretokenize import TokenizeConfig, tokenize_shards  # noqa: E402
from chatforge.data.shards import tokenize_corpus  # noqa: E402
from chatforge.tokenizer.tokenizer import Tokenizer, train_tokenizer  # noqa: E402



def run_stock(warc: Path) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.formatters import PIIFormatter

    from chatforge.data.crawl import CrawlReader
    from chatforge.data.filters import Tally
    with tempfile.TemporaryDirectory() as tmp:
        tally = Tally("out")
        steps = [CrawlReader(str(warc.parent), glob_pattern=warc.name), Trafilatura(favour_precision=True),
                 PIIFormatter(), tally]
        stats = LocalPipelineExecutor(steps, tasks=1, workers=1, logging_dir=tmp).run()  # runs a deep copy
        out = [s for s in stats.stats if "out" in s.name][0]
        return int(out.stats["docs"].total) if "docs" in out.stats else 0


def timed(fn) -> float:
    """CPU seconds of this process and its reaped children: docs per CPU-second = docs/s per core.
    (datatrove's Trafilatura extracts in a sandbox subprocess, so wall time would flatter it.)"""
    import resource

    def cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
    t0 = cpu()
    fn()
    return cpu() - t0


OPTIONAL = ("url_filter", "language_filter", "gopher_repetition", "gopher_quality", "c4", "fineweb", "minhash_dedup", "pii")


def step_costs(warc: Path, tmp: Path, repeats: int) -> dict[str, float]:
    """CPU seconds of the skeleton pipeline (resiliparse, every optional step off), then the extra
    seconds of each step switched on alone (minhash_dedup: exact + near dedup together)."""
    off = {k: False for k in OPTIONAL} | {"exact_dedup": False}
    runs = {"skeleton": off} | {k: off | {k: True} | ({"exact_dedup": True} if k == "minhash_dedup" else {})
                                for k in OPTIONAL}
    secs: dict[str, list[float]] = {}
    for r in range(repeats):
        for name, kw in runs.items():
            cfg = DataConfig(input=str(warc), out=str(tmp / f"steps-{name}-{r}"), extractor="resiliparse", url_ut1=False, **kw)
            secs.setdefault(name, []).append(timed(lambda: run_pipeline(cfg)))
    med = {k: statistics.median(v) for k, v in secs.items()}
    return {k: (v if k == "skeleton" else v - med["skeleton"]) for k, v in med.items()}


def gutenberg_paragraphs(n: int) -> list[str]:
    """n paragraphs of >= 200 characters from the Gutenberg books (whole books, sorted by path)."""
    docs: list[str] = []
    for p in sorted(BENCH.parent.joinpath("gutenberg").rglob("*.txt")):
        docs += [q for q in p.read_text(encoding="utf-8", errors="replace").split("\n\n") if len(q) >= 200]
        if len(docs) >= n:
            break
    if len(docs) < n:
        raise SystemExit(f"--tokenize: only {len(docs)} paragraphs found under {BENCH.parent / 'gutenberg'}")
    return docs[:n]


def bench_tokenize(n_docs: int, repeats: int, tmp: Path) -> None:
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = gutenberg_paragraphs(n_docs)
    (tmp / "in").mkdir()
    for i, chunk in enumerate([docs[k::8] for k in range(8)]):  # 8 files, like 8 FineWeb shards
        pq.write_table(pa.table({"text": chunk}), tmp / "in" / f"{i:03d}.parquet")
    ordered = [d for k in range(8) for d in docs[k::8]]
    train_tokenizer(docs[:2000], 4096).save(tmp / "tok")
    tok = Tokenizer.load(tmp / "tok")
    cpu: dict[str, list[float]] = {"tokenize_corpus": [], "tasks=1": [], "tasks=2": []}
    wall: dict[str, list[float]] = {k: [] for k in cpu}
    for r in range(repeats):
        for name in cpu:
            out = tmp / f"{name}-{r}"
            if name == "tokenize_corpus":
                fn = lambda: tokenize_corpus(tok, ordered, out, num_threads=1)  # noqa: E731
            else:
                cfg = TokenizeConfig(input=str(tmp / "in"), tokenizer=str(tmp / "tok"), out=str(out),
                                     tasks=int(name[-1]))
                fn = lambda: tokenize_shards(cfg)  # noqa: E731
            t0 = time.perf_counter()
            cpu[name].append(timed(fn))
            wall[name].append(time.perf_counter() - t0)
    meta = json.loads((tmp / "tasks=1-0" / "shards.json").read_text())
    n_tokens = sum(s["tokens"] for split in meta["splits"].values() for s in split)
    same = all((tmp / "tasks=2-0" / p.name).read_bytes() == p.read_bytes()
               for p in (tmp / "tasks=1-0").iterdir() if p.suffix in (".bin", ".idx"))
    ref = statistics.median(cpu["tokenize_corpus"])
    print(f"data tokenize: {n_docs:,} docs, {n_tokens:,} tokens, 8 parquet files, median of {repeats}; "
          f"--tasks 2 shards identical to --tasks 1: {same}")
    for k in cpu:
        c, w = statistics.median(cpu[k]), statistics.median(wall[k])
        print(f"  {k:<16} {n_docs / c:9,.0f} docs/s/core {n_tokens / c:11,.0f} tokens/s/core  "
              f"{ref / c:5.2f}x per core   wall {w:6.2f} s ({statistics.median(wall['tokenize_corpus']) / w:4.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--f1-pages", type=int, default=60)
    ap.add_argument("--steps", action="store_true", help="also measure each step's cost per document")
    ap.add_argument("--tokenize", type=int, default=0, metavar="N",
                    help="only benchmark `data tokenize` on N documents (e.g. 10000)")
    a = ap.parse_args()
    from loguru import logger
    logger.remove()
    if a.tokenize:
        with tempfile.TemporaryDirectory() as tmp:
            bench_tokenize(a.tokenize, a.repeats, Path(tmp))
        return
    with tempfile.TemporaryDirectory() as tmp:
        warc, _ = make_crawl(demo_docs(a.docs, seed=0), Path(tmp) / "crawl", seed=0)
        import gzip
        n_pages = gzip.decompress(warc.read_bytes()).count(b"WARC-Type: response")
        kept: list[int] = []
        contenders = {"chatforge": "trafilatura", "chatforge traf-fast": "trafilatura-fast",
                      "chatforge resiliparse": "resiliparse"}
        res: dict[str, list[float]] = {"stock": []} | {k: [] for k in contenders}
        for r in range(a.repeats):
            res["stock"].append(timed(lambda: kept.append(run_stock(warc))))
            for name, ex in contenders.items():
                out = Path(tmp) / f"{name}-{r}"
                res[name].append(timed(lambda: run_pipeline(DataConfig(input=str(warc), out=str(out), extractor=ex,
                                                                       url_ut1=False))))
        steps = step_costs(warc, Path(tmp), a.repeats) if a.steps else {}
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"input: {n_pages} pages, 1 task / 1 core, median of {a.repeats}; stock kept {kept[-1]} docs "
          "(extraction + PII only)")
    for k, v in med.items():
        print(f"  {k:<22} {n_pages / v:8.1f} docs/s/core   {med['stock'] / v:5.2f}x stock")
    for k, v in steps.items():
        print(f"  step {k:<18} {1000 * v / n_pages:6.3f} ms/doc" + ("" if k == "skeleton" else " over the skeleton"))
    bench = data_dir() / "article-extraction-benchmark"
    if (bench / "ground-truth.json").exists():
        f1 = {ex: extraction_benchmark(bench, ex, a.f1_pages) for ex in ("trafilatura", "trafilatura-fast", "resiliparse")}
        for ex, d in f1.items():
            print(f"  F1 {ex:<12} {d['f1']:.3f} on {d['pages']} pages, {d['pages_per_s']:.0f} pages/s")
        print("  (stock uses trafilatura with the same settings, so its F1 equals ours: ratio 1.00)")
    else:
        print(f"  F1: SKIPPED, {bench} not found (put shared/data beside the checkout or set CHATFORGE_DATA)")


if __name__ == "__main__":
    main()
