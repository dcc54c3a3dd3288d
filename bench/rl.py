"""RL rollout benchmark (CPU): batched KV-cached engine vs naive per-sample generation, and the share
of an RL step spent generating.

    .venv/bin/python bench/rl.py [--run rltiny] [--make-sft-seconds 120] [--depth 4] [--repeats 3]

Needs ``runs/<run>/sft``; ``--make-sft-seconds N`` first builds a tiny one in N seconds (world word
problems with calculator traces, tokenizer and model trained from scratch -- no pretraining), which
is also what dev experiments with ``chatforge.rl.run_rl_stage`` start from.
Prints medians of ``--repeats`` runs and ratios against the naive reference measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.assistant import tasks  # noqa: E402
from chatforge.assistant.convo import math_conversation  # noqa: E402
from chatforge.assistant.tools import ToolBox  # noqa: E402
from chatforge.common import make_config, run_dir  # noqa: E402
from chatforge.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from chatforge.model.engine import naive_generate  # noqa: E402
from chatforge.model.gpt import GPT, config_from_depth  # noqa: E402
from chatforge.rl import grpo as rl  # noqa: E402
from chatforge.rl import rollout  # noqa: E402
from chatforge.tokenizer.tokenizer import train_tokenizer  # noqa: E402
from chatforge.train.sft import SFTConfig, train_sft  # noqa: E402
from chatforge.world.build import WorldConfig, build_world, write_world  # noqa: E402


def make_tiny_sft(run: str, depth: int = 4, seconds: float = 120.0, seed: int = 0) -> Path:
    """A tiny SFT checkpoint in ``runs/<run>/sft`` trained from scratch on the world's word problems
    (calculator style), plus ``runs/<run>/world/world.json`` so later stages see the same split."""
    rd = run_dir(run)
    world = build_world(WorldConfig(seed=1337, n_people=20, n_cities=8, n_countries=3, n_universities=4,
                                    n_employers=4, n_filler_per_entity=1, n_problems=6000, n_spelling=10))
    write_world(world, rd)
    tools = ToolBox(enabled=("calculator",))
    train = [p for p in world.problems if p["split"] == "train" and p["kind"] == "word"]
    convs = [math_conversation(p, "tool", tools) for p in train]
    texts = [p["question"] + " Use the calculator. " + " ".join(p["steps"]) + f" The answer is {p['answer']}."
             for p in train]
    tok = train_tokenizer(texts, 512)
    torch.manual_seed(seed)
    model = GPT(config_from_depth(depth, tok.n_vocab, 192))
    model.init_weights()
    # ~0.1 s/step for d4 at batch 32 on a shared 2-core CPU; measure one step to fit the budget
    cfg = make_config(SFTConfig, run=str(rd), out="sft", max_steps=5, batch_size=32, lr=3e-3, schedule="constant",
                    warmup=0, eval_every=0, device="cpu")
    t0 = time.perf_counter()
    train_sft(cfg, model, tok, convs[:200])
    per_step = (time.perf_counter() - t0) / 5
    steps = max(20, int(seconds / per_step))
    cfg = make_config(SFTConfig, run=str(rd), out="sft", max_steps=steps, batch_size=32, lr=3e-3, schedule="wsd",
                    warmup=10, decay_frac=0.3, eval_every=0, device="cpu")
    m = train_sft(cfg, model, tok, convs)
    return Path(save_checkpoint(rd / "sft", steps, model, tok, cfg, metrics={k: v for k, v in m.items() if k != "history"}))


def bench(run: str, repeats: int, n: int, max_new: int) -> None:
    ck = load_checkpoint(run_dir(run) / "sft")
    model, tok = ck.model, ck.tokenizer
    engine = rollout.make_engine(model, tok, use_tools=False)
    probs = tasks.with_style(tasks.world_problems(run, "test", n=4), "tool")
    prompts = [tasks.prompt_tokens(tok, p["question"]) for p in probs]
    stops = []  # fixed-length rollouts so both sides generate the same number of tokens

    def batched() -> int:
        return sum(len(r) for p in prompts for r, _ in rollout.sample_group(engine, p, n, max_new, 1.0, None, 0, stops))

    def naive() -> int:
        return sum(len(naive_generate(model, p, max_new, temperature=1.0, seed=s, stop_tokens=stops))
                   for p in prompts for s in range(n))

    res: dict[str, list[float]] = {"batched engine": [], "naive per-sample": []}
    for _ in range(repeats):
        for name, fn in (("naive per-sample", naive), ("batched engine", batched)):
            t0 = time.perf_counter()
            toks = fn()
            res[name].append(toks / (time.perf_counter() - t0))
    ref = statistics.median(res["naive per-sample"])
    print(f"model {ck.path} ({model.num_params() / 1e6:.2f}M params), {len(prompts)} prompts x {n} samples x "
          f"{max_new} tokens, torch threads {torch.get_num_threads()}, medians of {repeats}")
    for name, v in res.items():
        print(f"  {name:<18} {statistics.median(v):9.1f} tokens/s   x{statistics.median(v) / ref:.2f} vs naive")
    # share of an RL step spent in generation (GRPO, engine rollouts, including tool calls)
    shares = []
    for r in range(repeats):
        cfg = make_config(rl.RLConfig, run=run, steps=2, prompts_per_step=4, group_size=n, max_new_tokens=max_new,
                          eval_k=1, eval_every=0, eval_problems=0, device="cpu", seed=r)
        _, m = rl.train_rl(cfg, policy=model, tokenizer=tok, eval_problems=[], save=False)
        shares.append(m["gen_share"])
    print(f"  generation share of a GRPO step: {statistics.median(shares):.2f} (median of {repeats}; "
          f"{n} samples/prompt, {max_new} new tokens max)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="rltiny")
    ap.add_argument("--make-sft-seconds", type=float, default=0.0)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.make_sft_seconds > 0:
        print(f"built {make_tiny_sft(a.run, a.depth, a.make_sft_seconds)}")
    bench(a.run, a.repeats, a.samples, a.max_new)


if __name__ == "__main__":
    main()
