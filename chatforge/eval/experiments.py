"""Evaluation: the measured experiments of the speedrun report and real benchmarks.

Every figure is a proportion k/n reported with n and a 95% Wilson score interval (Wilson 1927): for a
proportion p = k/n and z = 1.96,

    center = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)

Unlike the normal approximation p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and does not collapse to
a zero-width interval at p = 0 or 1, which matters for the small n a CPU speedrun can afford.

Experiments (``run_experiments``), all on held-out world items:
1. accuracy on known-people questions (people whose facts were in pretraining but not in SFT);
2. hallucination rate (informative wrong answers) on unknown people, SFT without vs with the
   "I don't know" data (the second model is an ablation SFT trained here on the people part of the
   mixture -- known-people Q&A with the truth, personas, search -- without refusals or identity data);
3. arithmetic: answer-first vs worked solution vs calculator tool (one model, the style is asked for
   in the prompt, as the SFT data teaches), on small-number 3-step chains and on 2-3 digit problems;
4. letter counting with vs without the python interpreter;
5. identity answers with vs without the identity data, and with a system prompt instead.

Benchmarks (``--eval-set``): GSM8K exact match (generation with the calculator), and ARC / MMLU /
HellaSwag multiple choice by comparing the mean log-likelihood of each option's tokens.
"""
from __future__ import annotations

import csv
import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from chatforge.assistant.convo import (answer_matches, ask, chat, gsm8k_items, IDENTITY_QUESTIONS,
                                       is_refusal, LETTER_STYLES, MATH_STYLES, parse_reply, sample_replies_many,
                                       system_prompt_for)
from chatforge.assistant.sandbox import add_unsafe_python_arg, apply_unsafe_python_arg
from chatforge.assistant.tasks import math_correct
from chatforge.assistant.tools import default_tools
from chatforge.common import data_dir as common_data_dir
from chatforge.common import (atomic_write_json, CfError, get_device, make_config, make_parser, print0, read_json,
                              read_jsonl, run_dir, wilson)
from chatforge.eval.core import core_cli, select_tasks
from chatforge.model.checkpoint import latest_checkpoint, load_checkpoint
from chatforge.model.engine import Engine
from chatforge.model.quant import KINDS, quantize_for_inference
from chatforge.train.sft import sft, SFTConfig
from chatforge.world.build import load_world





# ----------------------------------------------------------------------------- statistics

def proportion(k: int, n: int) -> dict[str, float | int]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "p": k / n if n else float("nan"), "lo": lo, "hi": hi}


def fmt_prop(m: dict[str, Any]) -> str:
    if not m["n"]:
        return "n/a (n=0)"
    return f"{100 * m['p']:.1f}% [{100 * m['lo']:.1f}, {100 * m['hi']:.1f}] (n={m['n']})"


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
    k = 0
    for it in items:
        lp = option_logprobs(model, tokenizer, it["context"], it["options"], device)
        k += int(max(range(len(lp)), key=lp.__getitem__) == it["gold"])
    return proportion(k, len(items))


def eval_gsm8k(engine, tokenizer, items: list[tuple[str, str, str]], max_new_tokens: int = 256) -> dict[str, Any]:
    """Exact match of the final number of a greedy chat reply (tasks.math_correct; the engine runs the calculator)."""
    convs = [{"messages": [{"role": "user", "content": q}]} for q, _, _ in items]
    replies = _replies(engine, tokenizer, convs, max_new_tokens)
    k = sum(int(math_correct(reply, gold)) for (reply, _), (_, _, gold) in zip(replies, items))
    return proportion(k, len(items))


def generate_reply(engine, tokenizer, conv: dict, max_new_tokens: int = 64) -> str:
    """Greedy assistant reply text to a conversation ending with a user message."""
    return ask(engine, tokenizer, conv, n=1, max_new_tokens=max_new_tokens, temperature=0.0)[0]


# ----------------------------------------------------------------------------- the experiments

def _replies(engine, tokenizer, convs: list[dict], max_new_tokens: int) -> list[tuple[str, list[dict]]]:
    """Greedy (text, parts) replies, all conversations in one batched engine call; parts include the
    tool calls and outputs."""
    prompts = [tokenizer.render_for_completion(c) for c in convs]
    return [parse_reply(tokenizer, g[0]) for g in sample_replies_many(engine, tokenizer, prompts, 1, max_new_tokens)]


def _judge(convs: list[dict], replies: list[tuple[str, list[dict]]], judge: Callable[[int, str], bool],
           examples: list | None = None) -> dict[str, Any]:
    """``judge(i, reply text)`` -> success for each reply; counts replies that called a tool and keeps
    two examples (with their tool calls) for the report."""
    oks = [bool(judge(i, r)) for i, (r, _) in enumerate(replies)]
    if examples is not None:
        examples += [{"q": c["messages"][-1]["content"], "reply": r, "ok": ok,
                      "tools": [f"{p['name']}({p['input']!r})" for p in parts if p["type"] == "tool_call"]}
                     for c, (r, parts), ok in list(zip(convs, replies, oks))[:2]]
    m = proportion(sum(oks), len(oks))
    m["tool_calls"] = sum(any(p["type"] == "tool_call" for p in parts) for _, parts in replies)
    return m


def _user(q: str, system: str | None = None) -> dict:
    return chat(q, system=system)


def run_experiments(run: str | Path, n_eval: int = 40, device: str = "auto", ablation: bool = True,
                    max_new_tokens: int | None = None, weights: str = "fp32") -> tuple[str, dict[str, Any]]:
    """The measured experiments on ``<run>/sft`` (and the ablation ``<run>/sft_ablation``, trained here
    from ``sft_data/train_ablation.jsonl`` with the main SFT's config when absent).

    ``n_eval`` caps the questions per cell; ``max_new_tokens`` caps every reply (tests); ``weights``:
    the models decode with quant.quantize_for_inference(model, weights). Returns (markdown section,
    metrics dict) and writes
    ``<run>/sft/experiments.json``.
    """
    t0 = time.perf_counter()
    n = n_eval
    rd = run_dir(run)
    device = get_device(device)
    ev = read_json(rd / "sft_data" / "eval.json", "SFT evaluation items")
    world = load_world(rd)
    tools = default_tools(world)
    main = load_checkpoint(rd / "sft", device=device)
    tok = main.tokenizer
    engines = {"with": Engine(quantize_for_inference(main.model, weights), tok, tools=tools)}
    abl_seconds = 0.0
    if ablation:
        abl_dir = rd / "sft_ablation"
        if latest_checkpoint(abl_dir) is None:
            known = {f.name for f in dataclasses.fields(SFTConfig)}  # the main SFT's settings, same budget
            prev = {k: v for k, v in (main.state.get("train_config") or {}).items() if k in known}
            cfg = make_config(SFTConfig, **{**prev, "run": str(rd), "out": "sft_ablation", "init": prev.get("init", ""),
                                            "data": str(rd / "sft_data" / "train_ablation.jsonl"), "device": device})
            t1 = time.perf_counter()
            sft(cfg)
            abl_seconds = time.perf_counter() - t1
        engines["without"] = Engine(quantize_for_inference(load_checkpoint(abl_dir, device=device).model, weights),
                                    tok, tools=tools)

    m: dict[str, Any] = {"n_cap": n, "examples": {}}
    rows: list[list[str]] = []

    def cell(key: str, label: str, cond: str, engine, convs, judge, max_new, replies=None) -> list:
        max_new = min(max_new, max_new_tokens or max_new)
        if replies is None:
            replies = _replies(engine, tok, convs, max_new)
        ex: list = []
        m[key] = _judge(convs, replies, judge, ex)
        m["examples"][key] = ex
        tc = f"; {m[key]['tool_calls']}/{m[key]['n']} called a tool" if m[key]["tool_calls"] else ""
        rows.append([label, cond, fmt_prop(m[key]) + tc])
        return replies

    known = ev["known"][:n]
    unknown = ev["unknown"][:n]
    kconv = [_user(it["question"]) for it in known]
    uconv = [_user(it["question"]) for it in unknown]
    k_ok = lambda i, r: (not is_refusal(r)) and answer_matches(r, known[i]["answer"])  # noqa: E731
    halluc = lambda i, r: not is_refusal(r)  # noqa: E731  (any informative answer is wrong)
    refused = lambda i, r: is_refusal(r)  # noqa: E731
    for cond, eng in engines.items():
        tag = "with IDK data" if cond == "with" else "without IDK data"
        r = cell(f"known_acc_{cond}", "known people: accuracy", tag, eng, kconv, k_ok, 24)
        cell(f"known_refusal_{cond}", "known people: refusal rate", tag, eng, kconv, refused, 24, replies=r)
        cell(f"hallucination_{cond}", "unknown people: hallucination rate", tag, eng, uconv, halluc, 24)

    # Two problem sets: 3-step chains on small numbers (every step a fact the corpus repeats: does
    # writing the steps out help?) and 2-step word/arithmetic problems on 2-3 digit numbers (too many
    # products to memorise: does the calculator help?).
    sets = {"chain": ("small-number 3-step chains", [p for p in ev["problems"] if p["kind"] == "chain"][:n]),
            "math": ("word/arithmetic problems", [p for p in ev["problems"] if p["kind"] != "chain"][:n])}
    for key, (label, probs) in sets.items():
        for style, suffix in MATH_STYLES.items():
            convs = [_user(p["question"] + suffix) for p in probs]
            cell(f"{key}_{style}", f"{label}: accuracy", {"direct": "answer first", "worked": "worked solution",
                 "tool": "calculator"}[style], engines["with"], convs,
                 lambda i, r, probs=probs: math_correct(r, probs[i]["answer"]),
                 {"direct": 12}.get(style, 64))
    letters = ev["letters"][:n]
    for style, suffix in LETTER_STYLES.items():
        convs = [_user(t["question"] + suffix) for t in letters]
        cell(f"letters_{style}", "letter counting: accuracy", "python interpreter" if style == "tool" else
             "no interpreter (spelled out)", engines["with"], convs,
             lambda i, r: math_correct(r, letters[i]["answer"]), 64)
    # the no-model baseline: always give the most common count of the training tasks (counts are small,
    # so a model that cannot read the word still scores well above 0)
    counts = Counter(t["answer"] for t in world.letters if t["kind"] == "count_letter" and t.get("split") == "train")
    guess = counts.most_common(1)[0][0] if counts else 0
    m["letters_prior"] = proportion(sum(t["answer"] == guess for t in letters), len(letters))
    rows.append(["letter counting: accuracy", f"baseline: always {guess} (no model)", fmt_prop(m["letters_prior"])])

    ident = ev["identity"]
    qs = {kind: sum(IDENTITY_QUESTIONS[kind], []) for kind in ("name", "maker")}  # train + held-out wordings
    iq = [(kind, q) for pair in zip(*[[(k, q) for q in v] for k, v in qs.items()]) for kind, q in pair][:n]
    target = lambda i: ident["name"] if iq[i][0] == "name" else ident["maker"]  # noqa: E731
    id_ok = lambda i, r: target(i).lower() in r.lower()  # noqa: E731
    if "without" in engines:
        cell("identity_without", "identity: names itself/maker", "without identity data", engines["without"],
             [_user(q) for _, q in iq], id_ok, 40)
        cell("identity_sysprompt", "identity: names itself/maker", "without identity data, system prompt",
             engines["without"], [_user(q, system_prompt_for(ident)) for _, q in iq], id_ok, 40)
    cell("identity_with", "identity: names itself/maker", "with identity data", engines["with"],
         [_user(q) for _, q in iq], id_ok, 40)

    m["seconds"] = time.perf_counter() - t0
    m["ablation_sft_seconds"] = abl_seconds
    md = ["## Assistant experiments", "",
          f"Greedy replies of `{main.path.relative_to(rd) if main.path.is_relative_to(rd) else main.path}` on held-out "
          f"items (never trained on); each cell gives the rate, its 95% Wilson interval and the number of "
          f"questions. \"without\" is an ablation SFT on the people part of the mixture (known-people Q&A with "
          f"the truth, personas, search) without the \"I don't know\" refusals (knowledge probing) or the identity "
          f"conversations; the math and letter cells use the main model.", "",
          "| experiment | condition | result [95% CI] (n) |", "|---|---|---|"]
    md += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    md += ["", f"Experiments took {m['seconds']:.1f}s (ablation SFT {abl_seconds:.1f}s)."]
    markdown = "\n".join(md) + "\n"
    atomic_write_json(main.path.parent / "experiments.json", m)
    print0(markdown)
    return markdown, m


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
    md = ["## Benchmarks", "", "| benchmark | accuracy [95% CI] (n) | chance |", "|---|---|---|"]
    chance = {"gsm8k": "0%", "hellaswag": "25%", "mmlu": "25%", "arc_easy": "~25%", "arc_challenge": "~25%"}
    md += [f"| {k} | {fmt_prop(v)} | {chance[k]} |" for k, v in metrics.items()]
    return "\n".join(md) + "\n", metrics


def cli(argv: list[str]) -> None:
    p = make_parser("chatforge eval", "evaluate a checkpoint: the assistant experiments and/or real benchmarks")
    p.add_argument("--run", default="default", help="run name (runs/<run>) or run directory")
    p.add_argument("--stage", default=None, help="stage folder whose latest checkpoint is evaluated by --eval-set "
                                                 "(default sft) or --suite (default base)")
    p.add_argument("--checkpoint", default="", help="explicit checkpoint for --eval-set (overrides --stage)")
    p.add_argument("--experiments", action="store_true", help="run the assistant experiments (needs <run>/sft_data)")
    p.add_argument("--n", type=int, default=40, help="questions per experiment cell at most")
    p.add_argument("--no-ablation", action="store_true", help="skip the ablation SFT (no before/after cells)")
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
    if not args.experiments and not args.eval_set and not args.suite:
        raise CfError("chatforge eval: nothing to do; pass --experiments, --eval-set NAME[:N] and/or --suite core "
                      "(`chatforge eval fetch` downloads the CORE data)")
    if args.limit is not None and args.limit < 1:
        raise CfError(f"--limit: expected a positive number of items per task, got {args.limit}")
    if args.n < 1:
        raise CfError(f"--n: expected a positive number of questions, got {args.n}")
    for spec in args.eval_set:
        parse_eval_set(spec)  # fail on a typo before loading anything
    rd = run_dir(args.run)
    device = get_device(args.device)
    if args.experiments:
        run_experiments(rd, n_eval=args.n, device=device, ablation=not args.no_ablation, weights=args.weights)
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
