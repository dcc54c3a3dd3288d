"""Tokenizer benchmark: training time and encode throughput, chatforge vs the alternatives.

    .venv/bin/python bench/tokenizer.py [--mb 50] [--repeats 3] [--vocab 4096 32768] [--twin-mb 0.2]

Data: the Gutenberg books in ``data_dir()/gutenberg`` (``$CHATFORGE_DATA``, default
../shared/data beside the checkout).

Training (same text, same Llama-3 split regex): chatforge (rustbpe) vs HF ``tokenizers`` BpeTrainer.
Encoding (same ranks): chatforge ``Tokenizer.encode``/``encode_batch`` vs HF ``tokenizers`` loaded
from our ``export_hf_tokenizer`` and the pure-Python twin ``chatforge.bpe`` (on a ``--twin-mb``
slice: it is ~1000x slower). chatforge's encoder IS tiktoken (``Tokenizer.encode`` calls a
``tiktoken.Encoding`` built from our ranks), so tiktoken is not a contender: the bench prints our
wrapper's overhead over the raw ``tiktoken.Encoding`` instead. Every figure is the median of
``--repeats`` runs; ratios are chatforge / each contender.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chatforge.common import data_dir  # noqa: E402
from chatforge.tokenizer import bpe  # noqa: E402
from chatforge.tokenizer.tokenizer import SPECIAL_TOKENS, LLAMA3_PATTERN, export_hf_tokenizer, train_tokenizer  # noqa: E402


def load_docs(root: Path, mb: float, chunk_chars: int = 8000) -> list[str]:
    """Read .txt files recursively until ``mb`` MB; cut into ~8 KB documents at paragraph breaks."""
    budget, docs = int(mb * 1e6), []
    for p in sorted(root.rglob("*.txt")):
        text = p.read_text(encoding="utf-8", errors="replace")
        i = 0
        while i < len(text) and budget > 0:
            j = text.find("\n\n", i + chunk_chars)
            j = len(text) if j < 0 else j + 2
            doc = text[i:j]
            docs.append(doc)
            budget -= len(doc.encode("utf-8"))
            i = j
        if budget <= 0:
            break
    return docs


def median_times(fns: dict, repeats: int) -> dict[str, float]:
    """Interleave the contenders (one warm-up round, then ``repeats`` rounds) so load spikes on a
    shared machine hit them evenly; return each one's median seconds."""
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r:
                ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def hf_train(docs: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=0)
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def report(title: str, figures: dict[str, float], higher_is_better: bool, unit: str) -> None:
    """One line: every contender's figure, then chatforge's speed ratio to each of the others."""
    ours = figures["chatforge"]
    ratios = {k: (ours / v if higher_is_better else v / ours) for k, v in figures.items() if k != "chatforge"}
    print(f"{title}: " + ", ".join(f"{k} {v:.3g} {unit}" for k, v in figures.items())
          + " | chatforge speed = " + ", ".join(f"{r:.2f}x {k}" for k, r in ratios.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="MB of Gutenberg text to use")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for batched encoding")
    ap.add_argument("--twin-mb", type=float, default=0.2, help="MB encoded by the pure-Python twin")
    args = ap.parse_args()
    data = data_dir() / "gutenberg"
    if not any(data.rglob("*.txt")):
        sys.exit(f"{data}: no Gutenberg .txt files; put shared/data beside the checkout or set CHATFORGE_DATA "
                 "(see shared/data/SOURCES.md)")
    docs = load_docs(data, args.mb)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"data: {len(docs)} docs, {mb:.1f} MB from {data}; {os.cpu_count()} cpus; median of {args.repeats}")

    tok = None
    for v in args.vocab:
        ts = median_times({"chatforge": lambda: train_tokenizer(docs, v), "hf-tokenizers": lambda: hf_train(docs, v)},
                          args.repeats)
        report(f"train vocab {v}", ts, False, "s")
        tok = train_tokenizer(docs, v)  # the last (largest) vocabulary is used for encoding

    import tiktoken
    from tokenizers import Tokenizer as HFTokenizer
    raw = tiktoken.Encoding("raw", pat_str=tok.pattern, mergeable_ranks=tok.ranks, special_tokens=tok.specials)
    with tempfile.TemporaryDirectory() as d:
        export_hf_tokenizer(tok, Path(d) / "tokenizer.json")
        hf = HFTokenizer.from_file(str(Path(d) / "tokenizer.json"))
    sample = docs[:200]
    assert all(tok.encode(x) == raw.encode_ordinary(x) == hf.encode(x).ids for x in sample), "encoders disagree"
    print(f"encode parity: chatforge == tiktoken == hf on {len(sample)} docs (vocab {tok.n_vocab})")

    print("chatforge encodes with tiktoken (the same Rust BPE engine); the raw-tiktoken column is our "
          "wrapper's overhead, not a competitor")
    single = {
        "chatforge": lambda: [tok.encode(x) for x in docs],
        "hf-tokenizers": lambda: [hf.encode(x) for x in docs],
        "raw tiktoken": lambda: [raw.encode_ordinary(x) for x in docs],
    }
    report("encode single-thread", {k: mb / t for k, t in median_times(single, args.repeats).items()}, True, "MB/s")
    th = args.threads
    batched = {
        "chatforge": lambda: tok.encode_batch(docs, num_threads=th),
        "hf-tokenizers": lambda: hf.encode_batch(docs),
        "raw tiktoken": lambda: raw.encode_ordinary_batch(docs, num_threads=th),
    }
    report(f"encode batched ({th} threads)", {k: mb / t for k, t in median_times(batched, args.repeats).items()},
           True, "MB/s")
    twin_docs = load_docs(data, args.twin_mb, chunk_chars=2000)
    twin_mb = sum(len(d.encode("utf-8")) for d in twin_docs) / 1e6
    assert all(bpe.encode(x, tok.ranks, tok.pattern) == tok.encode(x) for x in twin_docs[:20]), "twin disagrees"
    twin = {"chatforge": lambda: [tok.encode(x) for x in twin_docs],
            "pure-Python twin": lambda: [bpe.encode(x, tok.ranks, tok.pattern) for x in twin_docs]}
    report(f"encode single-thread, {twin_mb:.2f} MB", {k: twin_mb / t for k, t in median_times(twin, 1).items()},
           True, "MB/s")


if __name__ == "__main__":
    main()
