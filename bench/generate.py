"""Decode speed: our KV-cache Engine vs the no-cache twin vs transformers' generate(), same weights.

    .venv/bin/python bench/generate.py [--depth 8] [--new 256] [--runs 3] [--device cpu]

A random-init d<depth> Llama-flavour model is exported with hf.to_hf and loaded as LlamaForCausalLM,
so all three decode the very same weights greedily from the same prompt. Reports the median of
--runs timings each (new tokens per second) and ratios against transformers measured in this run,
plus how many greedy tokens agree (random weights give near-tied logits, so late divergence from
fp32 reordering is possible and harmless).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from chatforge.model.engine import Engine, naive_generate   # noqa: E402
from chatforge.model.gpt import GPT, config_from_depth      # noqa: E402
from chatforge.model.hf import to_hf                        # noqa: E402


def timed(fns: dict, runs: int, naive_runs: int) -> dict[str, tuple[float, list[int]]]:
    """Median seconds and the output of each contender; runs are interleaved (a, b, c, a, b, c, ...)
    so load from other processes on a busy machine hits all contenders alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, list[int]] = {}
    for r in range(runs):
        for name, fn in fns.items():
            if name == "naive twin (no cache)" and r >= naive_runs:
                continue
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs[name] = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), outs[k]) for k, v in times.items()}


def agree(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--naive-runs", type=int, default=None, help="runs for the slow twin (default --runs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    cfg = config_from_depth(args.depth, args.vocab, 512)
    model = GPT(cfg)
    model.init_weights()
    model.to(args.device).eval()
    with tempfile.TemporaryDirectory() as d:
        to_hf(model, Path(d) / "hf")
        hf = transformers.LlamaForCausalLM.from_pretrained(Path(d) / "hf", dtype=torch.float32).to(args.device).eval()
    prompt = torch.randint(0, args.vocab, (args.prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    N = args.new
    print(f"d{args.depth}: {model.num_params() / 1e6:.1f}M params, prompt {args.prompt_len}, {N} new tokens, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, median of {args.runs}")

    engine = Engine(model)

    def ours():
        seqs, _ = engine.generate_batch(prompt, max_new_tokens=N, temperature=0.0, stop_tokens=[])
        return seqs[0]

    def theirs():
        x = torch.tensor([prompt], device=args.device)
        with torch.inference_mode():
            y = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N, min_new_tokens=N,
                            do_sample=False, use_cache=True, pad_token_id=0)
        return y[0, len(prompt):].tolist()

    def naive():
        return naive_generate(model, prompt, N)

    ours(), theirs()                                         # warm-up
    fns = {"engine (KV cache)": ours, "transformers generate": theirs, "naive twin (no cache)": naive}
    res = timed(fns, args.runs, args.naive_runs or args.runs)
    t_hf = res["transformers generate"][0]
    for name, (t, _) in res.items():
        print(f"{name:<24} {t:7.2f} s  {N / t:8.1f} tok/s  {t_hf / t:5.2f}x transformers")
    tok = {k: v[1] for k, v in res.items()}
    print(f"greedy agreement: engine==naive for {agree(tok['engine (KV cache)'], tok['naive twin (no cache)'])}/{N} "
          f"tokens, engine==transformers for {agree(tok['engine (KV cache)'], tok['transformers generate'])}/{N}")


if __name__ == "__main__":
    main()
