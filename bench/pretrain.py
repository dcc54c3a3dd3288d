"""Training throughput: chatforge GPT vs transformers' GPT2LMHeadModel of the same shape.

    .venv/bin/python bench/pretrain.py [--depths 4 8] [--batch 8] [--seq-len 256] [--runs 3] [--device cpu]

For each depth, both models are GPT-2 shaped (learned positions, LayerNorm, GELU 4C MLP, biases,
tied embeddings; ``config_from_depth(d, flavour="gpt2")``), trained on the same random batch with
the same optimizer (torch AdamW, lr 3e-4) for ``--steps`` steps per timing; timings alternate
between the two models (so a noisy machine hurts both alike) and the median of ``--runs`` is
reported as training tokens/s, with the ratio chatforge / transformers. The Llama-flavour chatforge
model of the same depth is timed too, for reference. On CUDA it runs under bf16 autocast and prints
MFU (from ``GPT.flops_per_token``) against the dense bf16 peak of known GPUs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from chatforge.common import autocast_ctx                 # noqa: E402
from chatforge.model.gpt import GPT, config_from_depth          # noqa: E402
from chatforge.train.pretrain import peak_flops                 # noqa: E402


def hf_gpt2(cfg):
    import transformers
    hc = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, n_embd=cfg.n_embd,
                                 n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.mlp_hidden,
                                 activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                 attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=True)
    return transformers.GPT2LMHeadModel(hc, attn_implementation="sdpa") if _accepts_attn(transformers) \
        else transformers.GPT2LMHeadModel(hc)


def _accepts_attn(transformers) -> bool:
    try:
        transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=8,
                                                             n_positions=4), attn_implementation="sdpa")
        return True
    except TypeError:
        return False


def make_step(model, x, y, device, kind):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95))

    def step():
        with autocast_ctx(device):
            if kind == "hf":   # HF shifts labels internally: feed the T+1 window's first T as both
                loss = model(input_ids=x, labels=x).loss
            else:
                loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def timeit(step, n, device) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="training steps per timing")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    tokens = args.batch * args.seq_len * args.steps
    peak = peak_flops(dev)
    print(f"B={args.batch} T={args.seq_len} V={args.vocab}, {args.steps} steps per timing, median of {args.runs}, "
          f"device {dev}, torch threads {torch.get_num_threads()}")
    for depth in args.depths:
        g = torch.Generator().manual_seed(0)
        w = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=g).to(dev)
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        models = {}
        torch.manual_seed(0)
        for name, flavour in (("chatforge gpt2", "gpt2"), ("chatforge llama", "llama")):
            m = GPT(config_from_depth(depth, args.vocab, args.seq_len, flavour))
            m.init_weights()
            models[name] = (m.to(dev).train(), "ours")
        models["transformers GPT2"] = (hf_gpt2(config_from_depth(depth, args.vocab, args.seq_len, "gpt2"))
                                       .to(dev).train(), "hf")
        steps = {name: make_step(m, x, y, dev, kind) for name, (m, kind) in models.items()}
        for s in steps.values():        # warm-up (allocator, optimizer state)
            s()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.runs):      # interleaved, so load spikes hit every model
            for name, s in steps.items():
                times[name].append(timeit(s, args.steps, dev))
        ref = statistics.median(times["transformers GPT2"])
        nparams = models["chatforge gpt2"][0].num_params()
        print(f"d{depth} ({nparams / 1e6:.1f}M params, gpt2 shape):")
        for name, ts in times.items():
            t = statistics.median(ts)
            line = f"  {name:<18} {tokens / t:10,.0f} tok/s   {ref / t:5.2f}x transformers"
            if peak and name.startswith("chatforge"):
                fpt = models[name][0].flops_per_token()
                line += f"   MFU {100 * fpt * tokens / t / peak:5.1f}%"
            print(line)


if __name__ == "__main__":
    main()
