"""Training throughput of the REAL pretraining step, beside transformers' GPT-2 of the same shape.

    .venv/bin/python bench/pretrain.py [--depths 4 8] [--batch 16] [--seq-len 256] [--vocab 4096]
                                       [--tokens-per-step 0] [--runs 3] [--device cpu] [--compile]

The chatforge rows time ``chatforge.train.pretrain.train_step`` itself: Muon for the hidden matrices +
AdamW for the rest, built by ``build_optimizer`` from ``PretrainConfig``'s defaults, gradient
accumulation up to ``--tokens-per-step`` (0 = PretrainConfig's default), global-norm clipping and the
WSD schedule; the speedrun's shapes are the default (d4, B=16, T=256, V=4096). Rows:

* ``llama`` -- the speedrun's model family; ``gpt2`` -- GPT-2 shaped (learned positions, LayerNorm,
  GELU 4C MLP, biases, tied), the same shape as the transformers row;
* ``llama, before`` -- the step as it was before issue 17: the per-matrix Newton-Schulz reference and
  one micro-batch (B*T tokens) per optimizer step;
* ``transformers GPT2`` -- ``GPT2LMHeadModel`` (its default sdpa attention) with fwd + bwd + clipping + AdamW (the
  same fused torch AdamW as ours), its usual recipe.

Timings alternate between the rows (a noisy machine hurts all alike), median of ``--runs``. Each row
prints training tokens/s, the ratio to transformers, the optimizer's share of the step (the time in
``optimizer.step()``), and the achieved GFLOP/s (``GPT.flops_per_token``) against a ``torch.mm``
(1024^3) measured in the same process.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from chatforge.common import train_dtype                                     # noqa: E402
from chatforge.model.gpt import GPT, config_from_depth                      # noqa: E402
from chatforge.model.optim import build_optimizer                           # noqa: E402
from chatforge.train.pretrain import Dist, PretrainConfig, Run, peak_flops, train_step  # noqa: E402


def hf_gpt2(cfg):
    import transformers
    hc = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, n_embd=cfg.n_embd,
                                 n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.mlp_hidden,
                                 activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                 attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=True,
                                 bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(hc)   # sdpa attention: transformers' default


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Row:
    """One contender: ``step()`` runs one optimizer step; ``opt_s`` accumulates optimizer time."""

    def __init__(self, step: Callable[[], object], optimizer, tokens_per_step: int, flops_per_token: int,
                 device: str):
        self.step, self.tokens, self.fpt, self.opt_s = step, tokens_per_step, flops_per_token, 0.0
        inner = optimizer.step

        def timed_step() -> None:
            sync(device)
            t0 = time.perf_counter()
            inner()
            sync(device)
            self.opt_s += time.perf_counter() - t0
        optimizer.step = timed_step   # train_step calls optimizer.step(): time it in place
        self.times: list[float] = []
        self.warm_s = 0.0
        self.shares: list[float] = []


class FixedBatch:
    """The data loader of a benchmark run: the same (x, y) batch every micro-step."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor]):
        self.batch = batch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch


def chatforge_row(depth: int, flavour: str, pc: PretrainConfig, batch: tuple[torch.Tensor, torch.Tensor],
                  vocab: int, device: str, batched_ns: bool = True, do_compile: bool = False) -> Row:
    """A ``Run`` holding a fresh model, the real optimizers and a fixed batch; ``train_step(run)`` is the
    loop's own step (schedule, gradient accumulation, clipping, Muon + AdamW)."""
    torch.manual_seed(0)
    raw = GPT(config_from_depth(depth, vocab, pc.seq_len, flavour))
    raw.init_weights()
    raw.to(device).train()
    optimizer = build_optimizer(raw, pc.optim)
    if "muon" in optimizer.optimizers:
        optimizer.optimizers["muon"].batched = batched_ns
    x, _ = batch
    accum = max(1, pc.total_batch_tokens // x.numel()) if pc.total_batch_tokens else 1
    run = Run(cfg=pc, d=Dist(device=device), rd=Path("."), shards_dir=Path("."), base_dir=Path("."),
              dtype=train_dtype(device, pc.dtype), tokenizer=None,
              model=torch.compile(raw) if do_compile else raw, raw_model=raw, optimizer=optimizer,
              loader=FixedBatch(batch), B=x.size(0), T=x.size(1), total_batch=x.numel() * accum, grad_accum=accum,
              total_steps=10**9, tbytes=torch.zeros(vocab), has_val=False, step=100)   # inside WSD's stable phase

    def step() -> None:
        train_step(run)
        run.history.clear()
    return Row(step, optimizer, x.numel() * accum, raw.flops_per_token(), device)


def hf_row(depth: int, pc: PretrainConfig, batch, vocab: int, device: str) -> Row:
    torch.manual_seed(0)
    model = hf_gpt2(config_from_depth(depth, vocab, pc.seq_len, "gpt2")).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95),
                            fused=torch.device(device).type in ("cuda", "cpu"))
    x, _ = batch

    def step():
        loss = model(input_ids=x, labels=x).loss   # HF shifts labels internally
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    ours = GPT(config_from_depth(depth, vocab, pc.seq_len, "gpt2"))
    return Row(step, opt, x.numel(), ours.flops_per_token(), device)


def mm_gflops(device: str, n: int = 1024, reps: int = 15) -> float:
    """Median fp32 GFLOP/s of an n^3 matmul, after warm-up calls that spin up the thread pool."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16, help="sequences per micro-step (B)")
    ap.add_argument("--tokens-per-step", type=int, default=-1,
                    help="tokens per optimizer step (-1 = PretrainConfig's default; 0 = B*T)")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per timing")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd llama step")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers row")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    pc = PretrainConfig(seq_len=args.seq_len, device_batch_size=args.batch)
    if args.tokens_per_step >= 0:
        pc = replace(pc, total_batch_tokens=args.tokens_per_step)
    micro = args.batch * args.seq_len
    mm = mm_gflops(dev)
    peak = peak_flops(dev)
    print(f"B={args.batch} T={args.seq_len} V={args.vocab}, {pc.total_batch_tokens or micro} tokens per optimizer "
          f"step, {args.steps} steps per timing, median of {args.runs}, device {dev}, torch threads "
          f"{torch.get_num_threads()}, dtype {train_dtype(dev, pc.dtype)}; torch.mm 1024^3: {mm:.0f} GFLOP/s")
    for depth in args.depths:
        g = torch.Generator().manual_seed(0)
        w = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=g)
        batch = (w[:, :-1].contiguous().to(dev), w[:, 1:].contiguous().to(dev))
        rows = {"chatforge llama": chatforge_row(depth, "llama", pc, batch, args.vocab, dev),
                "chatforge gpt2": chatforge_row(depth, "gpt2", pc, batch, args.vocab, dev),
                "llama, before": chatforge_row(depth, "llama", replace(pc, total_batch_tokens=0), batch, args.vocab, dev,
                                               batched_ns=False)}
        if args.compile:
            rows["llama, compiled"] = chatforge_row(depth, "llama", pc, batch, args.vocab, dev,
                                                     do_compile=True)
        if not args.no_hf:
            rows["transformers GPT2"] = hf_row(depth, pc, batch, args.vocab, dev)
        for r in rows.values():       # warm-up: allocator, optimizer state, compilation
            sync(dev)
            t0 = time.perf_counter()
            r.step()
            sync(dev)
            r.warm_s = time.perf_counter() - t0
        for _ in range(args.runs):    # interleaved, so load spikes hit every row
            for r in rows.values():
                r.opt_s = 0.0
                sync(dev)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    r.step()
                sync(dev)
                r.times.append(time.perf_counter() - t0)
                r.shares.append(r.opt_s / r.times[-1])
        tps = {name: r.tokens * args.steps / statistics.median(r.times) for name, r in rows.items()}
        ref = tps.get("transformers GPT2")
        print(f"d{depth}:")
        for name, r in rows.items():
            gflops = r.fpt * tps[name] / 1e9
            line = (f"  {name:<18} {tps[name]:8,.0f} tok/s  {r.tokens:6d} tok/step  "
                    + (f"{tps[name] / ref:5.2f}x transformers  " if ref else "")
                    + f"{tps[name] / tps['llama, before']:5.2f}x before  optimizer {100 * statistics.median(r.shares):4.1f}%"
                    f"  {gflops:5.0f} GFLOP/s = {100 * gflops / mm:3.0f}% of torch.mm")
            if peak:
                line += f"  MFU {100 * gflops * 1e9 / peak:5.1f}%"
            if name.endswith("compiled"):   # what compile_pays weighs: compile seconds and the speedup
                line += (f"  first step {r.warm_s:.1f} s (compiling), {tps[name] / tps['chatforge llama']:.2f}x eager")
            print(line)


if __name__ == "__main__":
    main()
