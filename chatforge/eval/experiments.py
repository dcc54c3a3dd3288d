"""Evaluation: the measured experiments of the speedrun report and real benchmarks.

Every figure is a proportion k/n reported with n and a 95% Wilson score interval (Wilson 1927;
``common.wilson``, one entry per condition from ``report.condition``, shown by ``report.fmt_rate``): for
a proportion p = k/n and z = 1.96,

    center = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)

Unlike the normal approximation p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and does not collapse to
a zero-width interval at p = 0 or 1, which matters for the small n a CPU speedrun can afford.

Experiments (``run_experiments``): ``knowledge.py`` (knowledge extraction, hallucination and "I don't
know", identity) and ``reasoning.py`` (tokens to think, tools, spelling and counting), each writing its
ids into ``<run>/results.json`` with paired-bootstrap differences.

Benchmarks (``--eval-set``): GSM8K exact match (generation with the calculator), and ARC / MMLU /
HellaSwag multiple choice by comparing the mean log-likelihood of each option's tokens.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import torch

from chatforge.assistant.convo import ask, gsm8k_items
from chatforge.assistant.sandbox import add_unsafe_python_arg, apply_unsafe_python_arg
from chatforge.assistant.tasks import math_correct
from chatforge.assistant.tools import default_tools
from chatforge.common import CfError, get_device, make_parser, print0, read_jsonl, run_dir
from chatforge.common import data_dir as common_data_dir
from chatforge.eval.core import core_cli, select_tasks
from chatforge.eval.knowledge import run_knowledge_experiments
from chatforge.eval.reasoning import run_reasoning_experiments
from chatforge.model.checkpoint import load_checkpoint
from chatforge.model.engine import Engine
from chatforge.model.quant import KINDS, quantize_for_inference
from chatforge.report import condition, fmt_rate
from chatforge.world.build import load_world


# ----------------------------------------------------------------------------- benchmark loaders

def load_mc_set(name: str, data_dir: Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Multiple-choice items {context, options, gold} for arc_easy | arc_challenge | mmlu | hellaswag."""
    data_dir = Path(data_dir) if data_dir else common_data_dir()
    items: list[dict[str, Any]] = []
    if name in ("arc_easy", "arc_challenge"):
        p = data_dir / "arc" / f"{name}.jsonl"
        for lineno, ex in read_jsonl(p, limit):
            if not {"query", "choices", "gold"} <= ex.keys():
                raise CfError(f"{p}:{lineno}: expected query, choices, gold")
            items.append({"context": ex["query"].strip() + "\nAnswer:", "options": [" " + c for c in ex["choices"]],
                          "gold": int(ex["gold"])})
    elif name == "hellaswag":
        p = data_dir / "hellaswag" / "hellaswag.jsonl"
        for lineno, ex in read_jsonl(p, limit):
            if not {"ctx", "endings", "label"} <= ex.keys():
                raise CfError(f"{p}:{lineno}: expected ctx, endings, label")
            items.append({"context": ex["ctx"], "options": [" " + e for e in ex["endings"]], "gold": int(ex["label"])})
    elif name == "mmlu":
        d = data_dir / "mmlu" / "test"
        if not d.is_dir():
            raise CfError(f"{d}: MMLU test folder not found")
        for p in sorted(d.glob("*_test.csv")):  # round-robin over subjects would be fairer; keep it simple
            with open(p, encoding="utf-8", newline="") as f:
                for lineno, row in enumerate(csv.DictReader(f), 2):
                    try:
                        opts = [row[f"choice{i}"] for i in range(4)]
                        items.append({"context": f"Question: {row['question'].strip()}\nAnswer:",
                                      "options": [" " + o for o in opts], "gold": int(row["answer"])})
                    except (KeyError, ValueError, TypeError):
                        raise CfError(f"{p}:{lineno}: expected question,choice0..choice3,answer(0-3)") from None
                    if limit is not None and len(items) >= limit:
                        return items
    else:
        raise CfError(f"--eval-set: unknown multiple-choice set '{name}'; expected arc_easy, arc_challenge, mmlu, hellaswag")
    if not items:
        raise CfError(f"{name}: no items found under {data_dir}")
    return items


EVAL_SETS = ("gsm8k", "arc_easy", "arc_challenge", "mmlu", "hellaswag")


# ----------------------------------------------------------------------------- benchmark scoring

def option_logprobs(model, tokenizer, context: str, options: Sequence[str], device: str = "cpu") -> list[float]:
    """Mean log-probability of each option's tokens after ``<|bos|> context`` (one batch, padded)."""
    ctx = [tokenizer.bos_id] + tokenizer.encode(context)
    seqs, spans = [], []
    for o in options:
        cont = tokenizer.encode(o)
        if not cont:
            cont = tokenizer.encode(" ")
        s = (ctx + cont)[-model.config.seq_len - 1:]  # keep the end (the option) if too long
        seqs.append(s)
        spans.append(len(cont))
    T = max(len(s) for s in seqs) - 1
    x = torch.zeros(len(seqs), T, dtype=torch.long)
    y = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, spans)):
        t = torch.tensor(s)
        x[i, :len(s) - 1] = t[:-1]
        y[i, len(s) - 1 - n:len(s) - 1] = t[-n:]  # only the option's tokens are scored
    with torch.no_grad():
        loss = model(x.to(device), targets=y.to(device), reduction="none").float().cpu()  # (B, T) nll
    mask = (y >= 0).float()
    return (-(loss * mask).sum(1) / mask.sum(1)).tolist()


def eval_multiple_choice(model, tokenizer, items: list[dict[str, Any]], device: str = "cpu") -> dict[str, Any]:
    """Accuracy (``report.condition``) of picking the option with the highest mean log-probability."""
    outcomes = []
    for it in items:
        lp = option_logprobs(model, tokenizer, it["context"], it["options"], device)
        outcomes.append(max(range(len(lp)), key=lp.__getitem__) == it["gold"])
    return condition(outcomes)


def eval_gsm8k(engine, tokenizer, items: list[tuple[str, str, str]], max_new_tokens: int = 256) -> dict[str, Any]:
    """Exact match of the final number of a greedy chat reply (tasks.math_correct; the engine runs the calculator)."""
    return condition([math_correct(ask(engine, tokenizer, {"messages": [{"role": "user", "content": q}]}, n=1,
                                       max_new_tokens=max_new_tokens, temperature=0.0)[0], gold)
                      for q, _, gold in items])


# ----------------------------------------------------------------------------- the experiments

def run_experiments(run: str | Path, device: str = "auto", n_reason: int = 100) -> str:
    """The report card's measured claims on a run with an SFT model: knowledge, hallucination and identity
    (``knowledge.py``, which trains its ablation SFT), then tokens to think, tools and letters
    (``reasoning.py``). Each writes its ids into ``<run>/results.json``; returns the markdown."""
    rd = run_dir(run)
    return "\n\n".join([run_knowledge_experiments(rd, device=device),
                         run_reasoning_experiments(rd, device=device, n=n_reason, n_letters=4 * n_reason)])


# ----------------------------------------------------------------------------- benchmarks and CLI

def parse_eval_set(spec: str) -> tuple[str, int | None]:
    """``"gsm8k:50"`` -> ("gsm8k", 50); ``"mmlu"`` -> ("mmlu", None)."""
    name, _, lim = spec.partition(":")
    if name not in EVAL_SETS:
        raise CfError(f"--eval-set: unknown set '{name}'; expected one of {', '.join(EVAL_SETS)} (optionally NAME:N)")
    try:
        return name, (int(lim) if lim else None)
    except ValueError:
        raise CfError(f"--eval-set {spec}: expected NAME:N with an integer N") from None


def eval_benchmarks(model, tokenizer, specs: Sequence[str], data_dir: Path | None = None, device: str = "cpu",
                    tools=None) -> tuple[str, dict[str, Any]]:
    """Real benchmarks on files under ``data_dir`` (default: the shared-data folder): GSM8K exact match (chat generation with the
    calculator), ARC/MMLU/HellaSwag multiple choice by option log-likelihood (works on base models)."""
    metrics: dict[str, Any] = {}
    for spec in specs:
        name, lim = parse_eval_set(spec)
        if name == "gsm8k":
            items = gsm8k_items((Path(data_dir) if data_dir else common_data_dir()) / "gsm8k" / "test.jsonl", lim)
            metrics[name] = eval_gsm8k(Engine(model, tokenizer, tools=tools), tokenizer, items)
        else:
            metrics[name] = eval_multiple_choice(model, tokenizer, load_mc_set(name, data_dir, lim), device)
    md = ["## Benchmarks", "", "| benchmark | accuracy [95% CI] (k/n) | chance |", "|---|---|---|"]
    chance = {"gsm8k": "0%", "hellaswag": "25%", "mmlu": "25%", "arc_easy": "~25%", "arc_challenge": "~25%"}
    md += [f"| {k} | {fmt_rate(v)} | {chance[k]} |" for k, v in metrics.items()]
    return "\n".join(md) + "\n", metrics


def cli(argv: list[str]) -> None:
    p = make_parser("chatforge eval", "evaluate a checkpoint: the assistant experiments and/or real benchmarks")
    p.add_argument("--run", default="default", help="run name (runs/<run>) or run directory")
    p.add_argument("--stage", default=None, help="stage folder whose latest checkpoint is evaluated by --eval-set "
                                                 "(default sft) or --suite (default base)")
    p.add_argument("--checkpoint", default="", help="explicit checkpoint for --eval-set (overrides --stage)")
    p.add_argument("--experiments", action="store_true", help="run every assistant experiment (knowledge, "
                   "hallucination, identity, thinking, tools, letters; needs <run>/sft_data; writes results.json)")
    p.add_argument("--knowledge", action="store_true", help="only the knowledge, hallucination and identity "
                   "experiments (trains their ablation SFT; writes <run>/results.json)")
    p.add_argument("--n", type=int, default=100, help="items per reasoning cell (letters: 4x)")
    p.add_argument("--eval-set", action="append", default=[], metavar="NAME[:N]",
                   help=f"benchmark to run, repeatable: {', '.join(EVAL_SETS)}; N caps the items")
    p.add_argument("--data-dir", default="", help="folder holding gsm8k/, arc/, mmlu/, hellaswag/ and the CORE "
                                                  "task files (default: $CHATFORGE_DATA, else ../shared/data)")
    p.add_argument("--suite", choices=["core"], default=None,
                   help="core: the DCLM CORE suite (centered accuracy per task and averaged) + val bits per byte, "
                        "recorded in results.json; its data are found under $CHATFORGE_DATA")
    p.add_argument("--limit", type=int, default=None, help="--suite: at most this many items per task")
    p.add_argument("--tasks", default="", help="--suite: comma-separated task labels (default: all)")
    p.add_argument("--device", default="auto")
    add_unsafe_python_arg(p)
    p.add_argument("--weights", default="fp32", choices=list(KINDS),
                   help="inference weights: fp32 | bf16 | fp16 | int8 (weight-only, CPU)")
    args = p.parse_args(argv)
    apply_unsafe_python_arg(args)
    if not args.experiments and not args.knowledge and not args.eval_set and not args.suite:
        raise CfError("chatforge eval: nothing to do; pass --experiments, --knowledge, --eval-set NAME[:N] and/or "
                      "--suite core (`chatforge eval fetch` downloads the CORE data)")
    if args.limit is not None and args.limit < 1:
        raise CfError(f"--limit: expected a positive number of items per task, got {args.limit}")
    if args.n < 1:
        raise CfError(f"--n: expected a positive number of questions, got {args.n}")
    for spec in args.eval_set:
        parse_eval_set(spec)  # fail on a typo before loading anything
    rd = run_dir(args.run)
    device = get_device(args.device)
    if args.experiments:
        print0(run_experiments(rd, device=device, n_reason=args.n))
    elif args.knowledge:
        run_knowledge_experiments(rd, device=device)
    if args.suite == "core":
        tasks = [t for t in args.tasks.split(",") if t] or None
        select_tasks(tasks)  # fail on a typo before loading anything
        ck = load_checkpoint(args.checkpoint or rd / (args.stage or "base"), device=device)
        core_cli(ck.model, ck.tokenizer, rd, args.limit, device, tasks, Path(args.data_dir) if args.data_dir else None)
    if args.eval_set:
        ck = load_checkpoint(args.checkpoint or rd / (args.stage or "sft"), device=device)
        tools = None
        try:
            tools = default_tools(load_world(rd))
        except CfError:
            tools = default_tools(None)
        md, _ = eval_benchmarks(quantize_for_inference(ck.model, args.weights), ck.tokenizer, args.eval_set,
                                Path(args.data_dir) if args.data_dir else None, device, tools)
        print0(md)
