"""Knowledge, hallucination and self-knowledge: three measured experiments of the report card.

What each claims, and how it is measured (all greedy, batched, on items never trained on):

* ``knowledge``: a fact the model read in pretraining can be *extracted* by a question only when the
  person was described in several paraphrased biographies (Allen-Zhu & Li, "Physics of Language
  Models, Part 3.1", 2023). Conditions: ``heldout_k8`` (people with K bios, never asked in training),
  ``heldout_k1`` (one bio, never asked), ``train_qa`` (asked in training: memorisation, not
  extraction) and a majority baseline (always the most common value of the attribute). It is
  measured, as in that paper, on a model fine-tuned on questions about the train half with the true
  answers only: the ablation SFT without refusals (the main assistant, which also learned to refuse,
  is measured on the same people in ``hallucination``). The difference ``heldout_k8 - heldout_k1``
  compares two groups of different people, so its bootstrap resamples the people of each group
  independently; ``base_cloze_k8 - base_cloze_k1`` is the same comparison one step earlier, on what
  the base model stored (cloze prompts in the biographies' words). The *re-probe* asks the base and
  the SFT model the same cloze prompts as knowledge probing: a fact the base completed but the SFT
  model does not was forgotten in SFT; one the SFT model completes but does not answer as a question
  was stored but not extracted.
* ``hallucination``: Llama 3's knowledge probing (Dubey et al. 2024, section 4.3.6) turns questions
  the base model gets wrong, and questions about people it never saw, into "I don't know" targets.
  Conditions: the rate of informative (non-refusal) answers about unknown people, with and without
  those refusals in SFT, and the accuracy on held-out known people with and without them (a model
  that refuses everyone scores 0 there). The "without IDK" model is the ablation SFT: the same
  mixture with the truth in place of every refusal and without the identity conversations, trained
  here with the main SFT's steps.
* ``identity``: does the model say who it is on wordings it never saw? Conditions: ``no_data`` (the
  ablation SFT, without the identity conversations), ``system_prompt`` (that model with "You are
  <name>, made by <maker>."), ``with_data`` (the main SFT). Judged by whole words ("Forge" does not
  match "chatforge").

Every condition is a list of per-item 0/1 outcomes; ``report.experiment`` turns them into Wilson
intervals and paired-bootstrap differences (clusters = person) in ``results.json``.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from chatforge.assistant.convo import answer_matches, chat, is_refusal, parse_reply, system_prompt_for
from chatforge.common import get_device, independent_bootstrap, make_config, print0, read_json, run_dir
from chatforge.model.checkpoint import Checkpoint, load_checkpoint
from chatforge.model.engine import Engine
from chatforge.report import condition, experiment, fmt_diff, fmt_rate, results_table, update_results
from chatforge.train.sft import sft, SFTConfig
from chatforge.train.sft_data import first_sentence, PROBE_CLOZE

# the ablation SFT model (no refusals, no identity data): stage folder, training file under sft_data/
ABLATION = ("sft_ablation", "train_ablation.jsonl")
TARGETS = {"heldout_k8": 0.80, "unknown_with_idk": 0.10, "known_drop": 0.10, "with_data": 0.90}


# ----------------------------------------------------------------------------- generation and judging

def chat_replies(ck: Checkpoint, questions: Sequence[str], system: str | None = None,
                 max_new_tokens: int = 20) -> list[str]:
    """Greedy assistant replies (text) to single-turn questions, decoded in batches."""
    tok = ck.tokenizer
    prompts = [tok.render_for_completion(chat(q, system=system)) for q in questions]
    stops = [tok.special("<|assistant_end|>"), tok.bos_id]
    gens = Engine(ck.model, tok).generate_many(prompts, max_new_tokens, 0.0, stop_tokens=stops)
    return [parse_reply(tok, g)[0] for g in gens]


def cloze_answers(ck: Checkpoint, items: Sequence[dict], max_new_tokens: int = 10) -> list[str]:
    """Greedy completions of the probing cloze prompts (``<name> was born in the year``), first sentence."""
    tok = ck.tokenizer
    prompts = [[tok.bos_id] + tok.encode(PROBE_CLOZE[it["attribute"]].format(name=it["name"])) for it in items]
    gens = Engine(ck.model, tok).generate_many(prompts, max_new_tokens, 0.0, stop_tokens=[tok.bos_id])
    return [first_sentence(tok, g) for g in gens]


def correct(replies: Sequence[str], items: Sequence[dict]) -> list[int]:
    """1 where the reply is informative and contains the true value as whole words."""
    return [int(not is_refusal(r) and answer_matches(r, it["answer"])) for r, it in zip(replies, items)]


def informative(replies: Sequence[str]) -> list[int]:
    """1 where the reply is not a refusal: about a person the model never saw, a hallucination."""
    return [int(not is_refusal(r)) for r in replies]


def identity_judge(identity: dict, kind: str, reply: str) -> bool:
    """Whole-word match of the card's name (kind "name") or the maker's distinctive word ("maker")."""
    target = identity["name"] if kind == "name" else max(identity["maker"].split(), key=len)
    return re.search(r"\b" + re.escape(target) + r"\b", reply, flags=re.IGNORECASE) is not None


def majority_answers(train_items: Sequence[dict], items: Sequence[dict]) -> list[str]:
    """The prior baseline: for each item, the most common value of its attribute among ``train_items``."""
    top = {a: Counter(it["answer"] for it in train_items if it["attribute"] == a).most_common(1)
           for a in {it["attribute"] for it in items}}
    return [top[it["attribute"]][0][0] if top[it["attribute"]] else "" for it in items]


# ----------------------------------------------------------------------------- ablation models

def train_ablation(rd: Path, main: Checkpoint, out: str, data: str, device: str) -> Checkpoint:
    """SFT from the same base with the main SFT's settings and steps on another mixture, into a fresh
    ``<rd>/<out>`` (an old folder is removed first: no stage ever scores a previous run's model)."""
    keys = {f.name for f in dataclasses.fields(SFTConfig)}
    same = {k: v for k, v in (main.state.get("train_config") or {}).items() if k in keys}
    if (rd / out).exists():
        shutil.rmtree(rd / out)
    sft(make_config(SFTConfig, **{**same, "run": str(rd), "out": out, "device": device,
                                  "data": str(rd / "sft_data" / data)}))
    return load_checkpoint(rd / out, device=device)


# ----------------------------------------------------------------------------- the experiments

def knowledge_experiment(sft_model: Checkpoint, base: Checkpoint, people: dict[str, list[dict]]) -> dict[str, Any]:
    """``sft_model``: fine-tuned on train-QA questions with true answers only (the ablation SFT)."""
    k8, k1, tq = people["heldout_k8"], people["heldout_k1"], people["train_qa"]
    out = {name: correct(chat_replies(sft_model, [it["question"] for it in items]), items)
           for name, items in (("heldout_k8", k8), ("heldout_k1", k1), ("train_qa", tq))}
    out["majority_baseline"] = correct(majority_answers(tq, k8), k8)
    # the re-probe: the same cloze prompts on the base and on the SFT model
    out["base_cloze_k8"] = correct(cloze_answers(base, k8), k8)
    out["base_cloze_k1"] = correct(cloze_answers(base, k1), k1)
    out["sft_cloze_k8"] = correct(cloze_answers(sft_model, k8), k8)
    exp = experiment(out, diffs=[("heldout_k8", "majority_baseline"), ("sft_cloze_k8", "base_cloze_k8"),
                                 ("heldout_k8", "sft_cloze_k8")], clusters=[it["person"] for it in k8])
    for a, b in (("heldout_k8", "heldout_k1"), ("base_cloze_k8", "base_cloze_k1")):
        delta, lo, hi = independent_bootstrap(out[a], [it["person"] for it in k8], out[b], [it["person"] for it in k1])
        exp["diffs"][f"{a} - {b}"] = {"delta": delta, "ci": [lo, hi],
                                      "method": "bootstrap (independent groups, clusters = person)"}
    b, s, q = out["base_cloze_k8"], out["sft_cloze_k8"], out["heldout_k8"]
    exp["reprobe"] = {"base_knew": sum(b), "base_knew_sft_forgot": sum(x and not y for x, y in zip(b, s)),
                      "sft_knows_not_extracted": sum(y and not z for y, z in zip(s, q)),
                      "extracted_without_cloze": sum(z and not y for y, z in zip(s, q)), "n": len(k8)}
    exp["by_attribute"] = {a: sum(o for o, it in zip(q, k8) if it["attribute"] == a) /
                           max(1, sum(it["attribute"] == a for it in k8)) for a in sorted({it["attribute"] for it in k8})}
    return exp


def hallucination_experiment(main: Checkpoint, ablation: Checkpoint, people: dict[str, list[dict]]) -> dict[str, Any]:
    k8, unk = people["heldout_k8"], people["unknown"]
    qk, qu = [it["question"] for it in k8], [it["question"] for it in unk]
    rk = {"with_idk": chat_replies(main, qk), "without_idk": chat_replies(ablation, qk)}
    ru = {"with_idk": chat_replies(main, qu), "without_idk": chat_replies(ablation, qu)}
    out = {f"unknown_{c}": informative(ru[c]) for c in ru} | {f"known_{c}": correct(rk[c], k8) for c in rk}
    majority = majority_answers(people["train_qa"], k8)
    out["majority_known"] = correct(majority, k8)  # a prior that never refuses: it hallucinates on every unknown
    # the two pairs compare different people (unknown vs known), so each diff is within one set
    exp = experiment({k: out[k] for k in ("unknown_with_idk", "unknown_without_idk")},
                     diffs=[("unknown_with_idk", "unknown_without_idk")], clusters=[it["person"] for it in unk])
    known = experiment({k: out[k] for k in ("known_with_idk", "known_without_idk", "majority_known")},
                       diffs=[("known_with_idk", "known_without_idk")], clusters=[it["person"] for it in k8])
    exp["conditions"].update(known["conditions"])
    exp["conditions"]["majority_unknown"] = condition([1] * len(unk))
    exp["diffs"].update(known["diffs"])
    exp["refusal_rate"] = {f"known_{c}": sum(map(is_refusal, rk[c])) / len(k8) for c in rk} | \
                          {f"unknown_{c}": sum(map(is_refusal, ru[c])) / len(unk) for c in ru}
    return exp


ID_REPLY_TOKENS = 40  # room for a whole reply of the trained kinds (name, maker, persona: < 20 tokens): 24 once
                      # cut a reply inside the maker's name ("...trained from scratch by the chatfor")


def identity_experiment(main: Checkpoint, ablation: Checkpoint, identity: dict,
                        questions: list[dict]) -> dict[str, Any]:
    qs = [q["question"] for q in questions]
    n = ID_REPLY_TOKENS
    replies = {"no_data": chat_replies(ablation, qs, max_new_tokens=n),
               "system_prompt": chat_replies(ablation, qs, system=system_prompt_for(identity), max_new_tokens=n),
               "with_data": chat_replies(main, qs, max_new_tokens=n)}
    replies["constant_baseline"] = ["I am a chat assistant."] * len(qs)
    out = {c: [int(identity_judge(identity, q["kind"], r)) for q, r in zip(questions, rs)] for c, rs in replies.items()}
    exp = experiment(out, diffs=[("with_data", "no_data"), ("system_prompt", "no_data"), ("with_data", "system_prompt")])
    exp["n_wordings"] = len(set(qs))
    exp["examples"] = {c: [{"q": q, "reply": r} for q, r in list(zip(qs, rs))[:3]] for c, rs in replies.items()}
    return exp


def _verdict(ok: bool, text: str) -> str:
    return f"target met: {text}" if ok else f"**target NOT met**: {text}"


def render_markdown(res: dict[str, dict], seconds: dict[str, float]) -> str:
    kn, ha, idt = res["knowledge"], res["hallucination"], res["identity"]
    c = kn["conditions"]
    d = kn["diffs"]["heldout_k8 - heldout_k1"]
    rp = kn["reprobe"]
    drop = -ha["diffs"]["known_with_idk - known_without_idk"]["delta"]
    known_without = ha["conditions"]["known_without_idk"]["rate"]
    vacuous = (f" This says little: without the refusals the model already answers only {100 * known_without:.0f}% of "
               f"held-out known facts, so there is almost no knowledge the refusals could cost (it refuses "
               f"{100 * ha['refusal_rate']['known_with_idk']:.0f}% of known people)." if known_without < 0.2 else "")
    lines = [
        "## Knowledge, hallucination and identity", "",
        "Greedy replies on items never trained on; Wilson 95% intervals; differences with bootstrap intervals "
        "(clusters = person). Numbers from `results.json`.", "",
        "### Knowledge extraction (Physics of LMs 3.1: varied restatements make facts extractable)", "",
        "Measured on the SFT model trained on the train half's questions with true answers only (no refusals).", "",
        results_table(kn), "",
        "- heldout_k8 " + fmt_rate(c["heldout_k8"]) + ": " + _verdict(
            c["heldout_k8"]["rate"] >= TARGETS["heldout_k8"] and d["ci"][0] > 0,
            f"≥ 80% and heldout_k8 − heldout_k1 with a CI above 0 (Δ {100 * d['delta']:+.1f} points "
            f"[{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}])."),
        f"- re-probe (cloze prompts, held-out K people, n={rp['n']}): the base completed {rp['base_knew']}; the SFT "
        f"model forgot {rp['base_knew_sft_forgot']} of those; {rp['sft_knows_not_extracted']} facts the SFT model "
        f"completes as a sentence it does not give as an answer (stored, not extracted).",
        f"- stored by the base (cloze): K = 24 bios {fmt_rate(c['base_cloze_k8'])} vs K = 1 {fmt_rate(c['base_cloze_k1'])}: "
        + fmt_diff(kn["diffs"]["base_cloze_k8 - base_cloze_k1"]) + ".",
        "- by attribute (heldout_k8): " + ", ".join(f"{a} {100 * v:.0f}%" for a, v in kn["by_attribute"].items()), "",
        "### Hallucination and \"I don't know\" (Llama 3 knowledge probing)", "",
        "unknown_*: informative (non-refusal) answers about people never seen = hallucinations; known_*: accuracy "
        "on held-out known people. The majority prior never refuses.", "", results_table(ha), "",
        "- unknown_with_idk " + fmt_rate(ha["conditions"]["unknown_with_idk"]) + ": " + _verdict(
            ha["conditions"]["unknown_with_idk"]["rate"] <= TARGETS["unknown_with_idk"] and drop <= TARGETS["known_drop"],
            f"≤ 10% hallucination with known accuracy dropping ≤ 10 points (it dropped {100 * drop:.1f} points)."
            + vacuous), "",
        "### Identity (held-out wordings, whole-word judge)", "",
        results_table(idt), "",
        f"- with_data on {idt['n_wordings']} held-out wordings " + fmt_rate(idt["conditions"]["with_data"]) + ": "
        + _verdict(idt["conditions"]["with_data"]["rate"] >= TARGETS["with_data"] and idt["n_wordings"] >= 40,
                   "≥ 90% on ≥ 40 held-out wordings."),
        "", "Time: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def run_knowledge_experiments(run: str | Path, device: str = "auto", n_eval: int = 0) -> str:
    """The three experiments on ``<run>/sft`` (+ ``<run>/base`` for the re-probe), training the
    ablation SFT model first; writes their objects into ``<run>/results.json`` and returns markdown.
    ``n_eval`` > 0 caps the items per cell (tests); 0 = every item of the world's groups."""
    rd = run_dir(run)
    device = get_device(device)
    ev = read_json(rd / "sft_data" / "eval.json", "SFT evaluation items")
    people = {k: (v[:n_eval] if n_eval else v) for k, v in ev["people"].items()}
    main = load_checkpoint(rd / "sft", device=device)
    base = load_checkpoint(rd / "base", device=device, tokenizer=main.tokenizer)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    ablation = train_ablation(rd, main, *ABLATION, device)
    seconds["ablation SFT"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = {"knowledge": knowledge_experiment(ablation, base, people),
           "hallucination": hallucination_experiment(main, ablation, people),
           "identity": identity_experiment(main, ablation, ev["identity"], ev["identity_questions"])}
    seconds["evaluation"] = time.perf_counter() - t0
    for exp_id, obj in res.items():
        update_results(rd, exp_id, obj)
    md = render_markdown(res, seconds)
    print0(md)
    return md
