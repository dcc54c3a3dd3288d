"""Recipe quality: validation bits-per-byte reached in a fixed budget of training tokens.

    .venv/bin/python bench/quality.py [--recipes adamw muon] [--depth 2] [--tokens 400000] [--seeds 1]

Data: the Project Gutenberg books of data_dir("gutenberg") ($CHATFORGE_DATA, default ../shared/data), Gutenberg
header/footer stripped, cut into ~16 KB documents; 2% of the documents are the validation split.
A BPE tokenizer (``--vocab``) is trained on the first ``--tok-chars`` characters. Everything is
cached under ``--work`` so a second run only trains models.

A recipe is ``optimizer[-schedule]`` (e.g. ``adamw``, ``muon``, ``muon-cosine``); all recipes get the
same model, batch, token budget and data order, so the val bpb column compares the recipes alone.
With several ``--seeds`` the median is reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.common import data_dir, make_config  # noqa: E402
from chatforge.train.pretrain import PretrainConfig, pretrain   # noqa: E402
from chatforge.data.shards import tokenize_corpus               # noqa: E402
from chatforge.tokenizer.tokenizer import train_tokenizer            # noqa: E402

DATA = data_dir("gutenberg")   # $CHATFORGE_DATA, default ../shared/data beside the checkout


def strip_gutenberg(text: str) -> str:
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start != -1:
        start = text.find("\n", start) + 1
    return text[max(start, 0):end if end != -1 else None].strip()


def documents(max_chars: int, doc_chars: int = 16_000):
    total = 0
    for path in sorted(DATA.rglob("*.txt")):
        body = strip_gutenberg(path.read_text(encoding="utf-8", errors="replace"))
        for i in range(0, len(body), doc_chars):
            doc = body[i:i + doc_chars]
            if doc.strip():
                yield doc
            total += len(doc)
            if total >= max_chars:
                return


def prepare(work: Path, vocab: int, tok_chars: int, data_chars: int) -> Path:
    run = work / f"gutenberg_v{vocab}_c{data_chars}"
    if (run / "shards" / "shards.json").exists() and (run / "tokenizer").exists():
        return run
    t0 = time.perf_counter()
    tok = train_tokenizer(documents(tok_chars), vocab_size=vocab)
    tok.save(run / "tokenizer")
    stats = tokenize_corpus(tok, documents(data_chars), run / "shards", val_fraction=0.02, shard_tokens=10_000_000)
    print(f"prepared {run} in {time.perf_counter() - t0:.0f}s: {json.dumps(stats)}")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["adamw", "muon"])
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=400_000, help="training tokens per recipe")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--tok-chars", type=int, default=3_000_000)
    ap.add_argument("--data-chars", type=int, default=12_000_000)
    ap.add_argument("--eval-tokens", type=int, default=131072)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default="/tmp/chatforge_quality")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default; 1 on a loaded box)")
    args = ap.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if not any(DATA.rglob("*.txt")):
        sys.exit(f"{DATA}: no Gutenberg .txt files; put shared/data beside the checkout or set CHATFORGE_DATA "
                 "(see shared/data/SOURCES.md)")
    run = prepare(Path(args.work), args.vocab, args.tok_chars, args.data_chars)
    steps = args.tokens // (args.batch * args.seq_len)
    base = make_config(PretrainConfig, run=str(run), depth=args.depth, seq_len=args.seq_len, device_batch_size=args.batch,
                          max_steps=steps, eval_every=0, eval_tokens=args.eval_tokens, sample_every=0,
                          keep_last=1, log_every=max(1, steps // 5), device=args.device)
    rows = []
    for recipe in args.recipes:
        opt, _, sched = recipe.partition("-")
        results = []
        for seed in range(args.seeds):
            cfg = replace(base, seed=1337 + seed, optim=replace(base.optim, optimizer=opt, schedule=sched or base.optim.schedule))
            t0 = time.perf_counter()
            pretrain(cfg)
            m = json.loads((run / "base" / "metrics.json").read_text())["metrics"]
            results.append((m["val_bpb"], m["val_loss"], m["train_loss"], time.perf_counter() - t0))
        rows.append((recipe, *[statistics.median(r[i] for r in results) for i in range(4)]))
    print(f"\nd{args.depth}, T={args.seq_len}, B={args.batch}, {steps} steps = {steps * args.batch * args.seq_len:,} "
          f"tokens, vocab {args.vocab}, median of {args.seeds} seed(s)")
    print(f"{'recipe':<16} {'val bpb':>8} {'val loss':>9} {'train loss':>11} {'time':>7}")
    for recipe, bpb, vl, tl, t in rows:
        print(f"{recipe:<16} {bpb:8.4f} {vl:9.4f} {tl:11.4f} {t:6.0f}s")


if __name__ == "__main__":
    main()
