"""Reasoning experiments of the report card: tokens to think, tools, and spelling.

One SFT model was trained on every task in several *styles*, the style asked for by a suffix of the
question (``convo.MATH_STYLES`` / ``convo.LETTER_STYLES``), so here the same weights answer the same
held-out items in each style and the differences are paired (same items, paired bootstrap):

1. ``thinking`` -- chains of 2, 3, 4, 5 additions/subtractions on small numbers (``7+5-3+6``, every
   step a one-token fact the corpus repeats). *Answer first* must compose all steps inside one
   forward pass; a *worked* solution writes each intermediate total down and reads it back (the
   transformer gets one forward pass per token: "models need tokens to think"); the *calculator*
   only copies the expression. Accuracy against steps, one line per style, and a *prior* row: always
   answering the most common training answer of that length (what a model that ignores the
   numbers scores).
2. ``tools`` -- 2-4 digit arithmetic and word problems: too many products to memorise, so only the
   calculator gets them right.
3. ``letters`` -- how many times a letter occurs in a word, the true count uniform over 0-3 (prior
   25%): the answer alone (*direct*), the word *spelled* out letter by letter first, or the *python*
   interpreter; split by how many tokens the word is (a model sees tokens, not letters: the letters
   of a one-token word are nowhere in its input). Spelling backwards beside it, in the same styles.

Results go to ``results.json`` (ids ``thinking``, ``tools``, ``letters``) with Wilson intervals and
paired-bootstrap differences; ``run_reasoning_experiments`` returns the report section.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable

import matplotlib
import matplotlib.pyplot as plt

from chatforge.assistant.convo import LETTER_STYLES, MATH_STYLES, parse_reply, sample_replies_many
from chatforge.assistant.tasks import math_correct, prompt_tokens, spelled_correct
from chatforge.assistant.tools import default_tools
from chatforge.common import get_device, print0, run_dir, save_figure
from chatforge.model.checkpoint import load_checkpoint
from chatforge.model.engine import Engine
from chatforge.report import experiment, fmt_diff, fmt_rate, md_table, update_results
from chatforge.world.build import load_world
from chatforge.world.problems import CHAIN_STEPS

matplotlib.use("Agg")  # figures are written to files; no display

STYLE_NAMES = {"direct": "direct", "worked": "worked", "tool": "calculator"}  # MATH_STYLES key -> condition name
MAX_NEW = {"direct": 16, "worked": 80, "tool": 48, "spelled": 112, "python": 48}  # reply budgets (tokens)


def greedy_replies(engine, tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    """The assistant's greedy reply text (tool calls and outputs left out) to each question, batched."""
    prompts = [prompt_tokens(tokenizer, q) for q in questions]
    outs = sample_replies_many(engine, tokenizer, prompts, 1, max_new_tokens, 0.0)
    return [parse_reply(tokenizer, group[0])[0] for group in outs]


def score(engine, tokenizer, items: list[dict], suffix: str, max_new_tokens: int,
          correct: Callable[[str, object], bool]) -> list[bool]:
    """Per-item correctness of greedy replies to ``question + suffix``."""
    replies = greedy_replies(engine, tokenizer, [it["question"] + suffix for it in items], max_new_tokens)
    return [bool(correct(r, it["answer"])) for r, it in zip(replies, items)]


def prior_outcomes(train: list[dict], test: list[dict]) -> tuple[list[bool], object]:
    """'Always answer the most common training answer': per-item outcomes on ``test`` and that answer."""
    guess = Counter(str(t["answer"]) for t in train).most_common(1)[0][0] if train else None
    return [str(t["answer"]) == guess for t in test], guess


def token_bucket(n_tokens: int) -> str:
    return str(n_tokens) if n_tokens < 4 else "4+"


def plot_thinking(exp: dict, path: Path) -> Path:
    """Accuracy (Wilson 95% bars) against chain length, one line per style, and the prior."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for style in list(STYLE_NAMES.values()) + ["prior"]:
        cs = [(k, exp["conditions"].get(f"{style}_{k}")) for k in CHAIN_STEPS]
        cs = [(k, c) for k, c in cs if c and c["n"]]
        if not cs:
            continue
        ks, rates = [k for k, _ in cs], [100 * c["rate"] for _, c in cs]
        err = [[100 * (c["rate"] - c["ci"][0]) for _, c in cs], [100 * (c["ci"][1] - c["rate"]) for _, c in cs]]
        ax.errorbar(ks, rates, yerr=err, marker="o" if style != "prior" else None, capsize=3,
                    linestyle="--" if style == "prior" else "-", label=style)
    ax.set_xlabel("steps in the chain"), ax.set_ylabel("accuracy (%)"), ax.set_ylim(0, 100)
    ax.set_xticks(list(CHAIN_STEPS)), ax.set_title("tokens to think: accuracy vs steps"), ax.legend(fontsize=8)
    return save_figure(fig, path)


def thinking_experiment(engine, tok, world, n: int) -> dict:
    """Chains of each length in each style + the prior; differences worked/calculator - direct."""
    out: dict[str, list[bool]] = {}
    diffs = []
    for k in CHAIN_STEPS:
        test = [p for p in world.problems if p["kind"] == "chain" and p["split"] == "test" and len(p["steps"]) == k][:n]
        train = [p for p in world.problems if p["kind"] == "chain" and p["split"] == "train" and len(p["steps"]) == k]
        for style, name in STYLE_NAMES.items():
            out[f"{name}_{k}"] = score(engine, tok, test, MATH_STYLES[style], MAX_NEW[style], math_correct)
        out[f"prior_{k}"], _ = prior_outcomes(train, test)
        diffs += [(f"worked_{k}", f"direct_{k}"), (f"calculator_{k}", f"direct_{k}"), (f"direct_{k}", f"prior_{k}")]
    return experiment(out, diffs, steps=list(CHAIN_STEPS))


def tools_experiment(engine, tok, world, n: int) -> dict:
    """2-4 digit arithmetic and word problems in each style; differences calculator/worked - direct."""
    test = [p for p in world.problems if p["kind"] != "chain" and p["split"] == "test"][:n]
    out = {name: score(engine, tok, test, MATH_STYLES[style], MAX_NEW[style], math_correct)
           for style, name in STYLE_NAMES.items()}
    return experiment(out, [("calculator", "direct"), ("worked", "direct")],
                      kinds=dict(Counter(p["kind"] for p in test)))


def letters_experiment(engine, tok, world, n: int) -> dict:
    """Letter counting in each style (+ by the word's token count) and the prior; spelling backwards."""
    test = [t for t in world.letters if t["kind"] == "count_letter" and t["split"] == "test"][:n]
    train = [t for t in world.letters if t["kind"] == "count_letter" and t["split"] == "train"]
    out = {style: score(engine, tok, test, suffix, MAX_NEW[style], math_correct)
           for style, suffix in LETTER_STYLES.items()}
    out["prior"], guess = prior_outcomes(train, test)
    buckets = [token_bucket(len(tok.encode(t["word"]))) for t in test]
    for b in sorted(set(buckets)):
        for cond in list(LETTER_STYLES) + ["prior"]:
            out[f"{cond}_{b}"] = [o for o, bb in zip(out[cond], buckets) if bb == b]
    back = [t for t in world.letters if t["kind"] == "spell_backwards" and t["split"] == "test"][:n]
    for style, suffix in LETTER_STYLES.items():
        out[f"backwards_{style}"] = score(engine, tok, back, suffix, MAX_NEW[style], spelled_correct)
    diffs = [("python", "spelled"), ("spelled", "direct"), ("direct", "prior"), ("backwards_python", "backwards_spelled")]
    return experiment(out, diffs, prior_answer=guess, token_buckets=dict(Counter(buckets)))


def run_reasoning_experiments(run_dir_: str | Path, device: str = "auto", n: int = 100,
                              n_letters: int = 400) -> str:
    """Thinking, tools and letters on ``<run>/sft``: results.json ids ``thinking``, ``tools``, ``letters``
    and ``report/thinking.png``; returns the report's markdown section. ``n`` caps the items per
    condition (chains per length, tool problems, backwards words), ``n_letters`` the counting items."""
    t0 = time.perf_counter()
    rd = run_dir(run_dir_)
    world = load_world(rd)
    ck = load_checkpoint(rd / "sft", device=get_device(device))
    tok = ck.tokenizer
    engine = Engine(ck.model, tok, tools=default_tools(world))
    exps = {"thinking": thinking_experiment(engine, tok, world, n),
            "tools": tools_experiment(engine, tok, world, n),
            "letters": letters_experiment(engine, tok, world, n_letters)}
    for name, exp in exps.items():
        update_results(rd, name, exp)
    fig = plot_thinking(exps["thinking"], rd / "report" / "thinking.png")
    md = ["## Reasoning: tokens to think, tools, spelling", "",
          "One SFT model, the answer style asked for in the question; greedy replies on held-out items "
          "(chains deduplicated by expression against training). Rates with Wilson 95% intervals; "
          "differences on the same items with paired bootstrap intervals (`results.json`).", "",
          "### Tokens to think (`thinking`)", "", thinking_table(exps["thinking"]), "",
          f"![accuracy vs steps]({fig.relative_to(rd).as_posix()})", "", *verdicts_thinking(exps["thinking"]), "",
          "### Tools on 2-4 digit arithmetic and word problems (`tools`)", "", table(exps["tools"]), "",
          "### Counting letters and spelling backwards (`letters`)", "",
          f"Prior: always answering {exps['letters']['prior_answer']} (the most common training count).", "",
          table(exps["letters"]), "", *verdicts_letters(exps["letters"]), "",
          f"Reasoning experiments took {time.perf_counter() - t0:.1f}s."]
    markdown = "\n".join(md) + "\n"
    print0(markdown)
    return markdown


# ----------------------------------------------------------------------------- report text

def table(exp: dict) -> str:
    rows = [[name, fmt_rate(c)] for name, c in exp["conditions"].items()]
    md = md_table(["condition", "accuracy [95% CI] (k/n)"], rows)
    if exp.get("diffs"):
        md += "\n\n" + md_table(["difference", "paired bootstrap 95% CI"],
                                 [[name, fmt_diff(d)] for name, d in exp["diffs"].items()])
    return md


def thinking_table(exp: dict) -> str:
    """Steps as rows, styles as columns (the plot's numbers)."""
    styles = list(STYLE_NAMES.values()) + ["prior"]
    rows = [[k] + [fmt_rate(exp["conditions"][f"{s}_{k}"]) for s in styles] for k in CHAIN_STEPS]
    md = md_table(["steps"] + styles, rows)
    diffs = [[name, fmt_diff(d)] for name, d in exp["diffs"].items()]
    return md + "\n\n" + md_table(["difference", "paired bootstrap 95% CI"], diffs)


def _rate(exp: dict, name: str) -> float:
    return exp["conditions"][name]["rate"]


def verdicts_thinking(exp: dict) -> list[str]:
    """The issue's targets, each said in words beside its number (met or missed)."""
    d4 = exp["diffs"]["worked_4 - direct_4"]["delta"]
    calc = min(_rate(exp, f"calculator_{k}") for k in CHAIN_STEPS)
    late = [exp["diffs"][f"direct_{k} - prior_{k}"] for k in (4, 5)]
    return [f"- worked - direct at 4 steps: {100 * d4:+.1f} points (target >= +20: {'met' if d4 >= 0.2 else 'MISSED'}).",
            f"- calculator at every length >= 95%: lowest {100 * calc:.1f}% ({'met' if calc >= 0.95 else 'MISSED'}).",
            "- answer first near the prior at 4-5 steps: " + ", ".join(fmt_diff(d) for d in late)
            + (" (met: intervals contain 0)" if all(d["ci"][0] <= 0 <= d["ci"][1] for d in late)
               else " (MISSED: answer first differs from the prior)")]


def verdicts_letters(exp: dict) -> list[str]:
    c = exp["conditions"]
    short = [c[f"python_{b}"] for b in ("1", "2", "3") if f"python_{b}" in c]
    k, m = sum(x["k"] for x in short), sum(x["n"] for x in short)
    py_short = k / m if m else float("nan")
    above = exp["diffs"]["python - spelled"]["ci"][0] > 0
    near = exp["diffs"]["direct - prior"]
    return [f"- python on words of <= 3 tokens: {100 * py_short:.1f}% ({k}/{m}; target >= 85%: "
            f"{'met' if py_short >= 0.85 else 'MISSED'}); python above spelled: {'yes' if above else 'NO (MISSED)'}.",
            f"- direct - prior: {fmt_diff(near)} ({'near the prior' if near['ci'][0] <= 0.1 else 'above the prior'})."]
