"""The SFT data mixture: conversations from the world, and knowledge probing of the base model.

``build_sft_data`` writes ``runs/<run>/sft_data/`` (train/val/ablation JSONL and the held-out
evaluation items) from the world, the base model's probe answers (Llama 3's knowledge probing: what
the base model answers wrongly becomes "I don't know"), identity and tool-use conversations. What
each part teaches is explained in ``assistant/convo.py``.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from chatforge.assistant import convo
from chatforge.assistant.convo import sample_replies_many
from chatforge.assistant.tools import default_tools
from chatforge.common import CfError, Timer, atomic_write_json, get_device, print0, run_dir, write_meta
from chatforge.model.checkpoint import load_checkpoint
from chatforge.model.engine import Engine
from chatforge.world.build import load_identity, load_world, qa_items

@dataclass
class SFTMix:
    """How many conversations of each kind ``build_sft_data`` writes (defaults fit a CPU speedrun:
    ~1.5k short conversations, a few seconds per epoch on a d4 model)."""
    n_known_qa: int = 400        # questions about known people (truth, or a refusal where probing says so)
    n_idk: int = 150             # refusals about unknown people
    n_identity: int = 60         # questions about the model itself (from the model card)
    n_persona: int = 40          # identity taken from a system prompt (random personas)
    n_math_per_style: int = 120  # world problems x {answer-first, worked, calculator}
    n_letters_per_style: int = 100  # letter counting x {spelled-out, python}; + spelling
    n_search: int = 60           # look a person up with the search tool
    real: dict = field(default_factory=dict)  # e.g. {"oasst": 100, "gsm8k": 200} (convo.REAL_SOURCES)
    # Llama 3: known people the base gets mostly wrong also become refusals. False keeps the truth for
    # every known person (refusals for unknown people only): better recall on a base that knows little.
    refuse_known_wrong: bool = True
    val_fraction: float = 0.05
    # held-out evaluation items (never trained on)
    n_eval_known: int = 60
    n_eval_unknown: int = 60
    # knowledge probing (Llama 3): samples per question, tokens per sample
    probe_samples: int = 3
    probe_tokens: int = 10
    probe_temperature: float = 1.0


# Cloze prompts in the biographies' own words: a base model has never seen the chat format, so it is
# probed the way it was trained, by completing a sentence about the person.
PROBE_CLOZE = {"birth_date": "{name} was born on", "city": "{name} was born in the city of",
               "university": "{name} graduated from", "field": "{name} studied", "employer": "{name} works at"}


def probe_base_model(model, tokenizer, items: list[dict], samples: int, max_new_tokens: int,
                     temperature: float, seed: int = 0) -> list[list[str]]:
    """Sample ``samples`` completions of each item's cloze prompt; each cut at the first sentence end."""
    engine = Engine(model, tokenizer)
    prompts = [[tokenizer.bos_id] + tokenizer.encode(PROBE_CLOZE[it["attribute"]].format(name=it["name"]))
               for it in items]
    out = []
    for gens in sample_replies_many(engine, tokenizer, prompts, samples, max_new_tokens, temperature, seed,
                                    stop_at_end=False):   # item i seeded seed + i
        texts = []
        for g in gens:  # a sample ends at the document boundary, its first line and sentence end
            g = g[:g.index(tokenizer.bos_id)] if tokenizer.bos_id in g else g
            texts.append(tokenizer.decode(g).split("\n")[0].split(". ")[0])
        out.append(texts)
    return out


def build_sft_data(run: str | Path, identity: str | None = None, probe: bool = True, mix: SFTMix | None = None,
                   real_data_dir: str | Path | None = None, device: str = "auto", seed: int = 0,
                   probe_fn: Callable[[list[dict]], list[list[str]]] | None = None) -> dict[str, Any]:
    """Write ``<run>/sft_data/``: train.jsonl (the full mixture), train_ablation.jsonl (the people part
    of the mixture without refusals or identity data: the "before" model of the experiments),
    val.jsonl, eval.json (held-out items) and data.json (counts, probe statistics, provenance).
    Returns data.json's content.

    Knowledge probing samples the base model (``<run>/base``) on cloze prompts for the known people
    used in SFT (``probe_fn`` replaces the model, e.g. in tests); where most samples are wrong the
    target becomes a refusal (``convo.probe_decisions``). Unknown people always get refusals.
    """
    mix = mix or SFTMix()
    rd = run_dir(run)
    world = load_world(rd)
    ident = load_identity(identity) if identity else world.identity
    rng = random.Random(seed)
    tools = default_tools(world)

    known, unknown = list(world.known), list(world.unknown)
    rng.shuffle(known)
    rng.shuffle(unknown)
    n_ke, n_ue = min(mix.n_eval_known, len(known) // 2), min(mix.n_eval_unknown, len(unknown) // 2)
    known_eval, known_train = known[:n_ke], known[n_ke:]
    unknown_eval, unknown_train = unknown[:n_ue], unknown[n_ue:]
    if not unknown_train and mix.n_idk:
        raise CfError(f"{rd}/world: no unknown people left for refusals after {mix.n_eval_unknown} held out")

    def one_question_each(people, n):
        items = qa_items(world, people, rng)
        rng.shuffle(items)
        seen, out = {}, []
        for it in items:  # at most ceil(n / people) questions per person, spread over people
            if seen.get(it["person"], 0) < max(1, -(-n // max(1, len(people)))):
                seen[it["person"]] = seen.get(it["person"], 0) + 1
                out.append(it)
        return out[:n]

    # ---- known people, with knowledge probing
    kq = one_question_each(known_train, mix.n_known_qa)
    pitems = [convo.ProbeItem(it["name"], it["question"], it["answer"],
                              convo.answer_sentence(it["name"], it["attribute"], it["answer"])) for it in kq]
    probe_stats: dict[str, Any] = {"probed": 0}
    if probe and kq:
        if probe_fn is None:
            ck = load_checkpoint(rd / "base", device=get_device(device))
            probe_fn = lambda items: probe_base_model(ck.model, ck.tokenizer, items, mix.probe_samples,  # noqa: E731
                                                      mix.probe_tokens, mix.probe_temperature, seed)
        with Timer("knowledge probing", quiet=True) as t:
            answers = probe_fn(kq)
        decisions = convo.probe_decisions(pitems, answers, rng=rng)
        probe_stats = {"probed": len(decisions), "seconds": round(t.seconds, 2),
                       "kept_answer": sum(d.kind == "answer" for d in decisions),
                       "refused": sum(d.kind == "refuse" for d in decisions),
                       "confidently_wrong": sum(d.confidently_wrong for d in decisions),
                       "examples": [{"q": d.item.question, "truth": d.item.truth, "samples": a, "target": d.target}
                                    for d, a in list(zip(decisions, answers))[:5]]}
        known_full = (convo.decisions_to_conversations(decisions) if mix.refuse_known_wrong
                      else [convo.chat(p.question, p.answer) for p in pitems])
    else:
        known_full = [convo.chat(p.question, p.answer) for p in pitems]
    known_truth = [convo.chat(p.question, p.answer) for p in pitems]

    # ---- unknown people: refusals (any informative answer would be a hallucination)
    uq = one_question_each(unknown_train, mix.n_idk)
    idk = [convo.chat(it["question"], convo.refusal(it["name"], rng)) for it in uq]

    # ---- identity, personas, tools, problems
    identity_convs = convo.identity_conversations(ident, rng, mix.n_identity)
    persona = convo.persona_conversations(rng, mix.n_persona)
    train_problems = [p for p in world.problems if p.get("split") == "train"]
    rng.shuffle(train_problems)
    math = [convo.math_conversation(p, style, tools) for i, style in enumerate(convo.MATH_STYLES)
            for p in train_problems[i * mix.n_math_per_style:(i + 1) * mix.n_math_per_style]]
    train_letters = [t for t in world.letters if t.get("split") == "train"]
    counts = [t for t in train_letters if t["kind"] == "count_letter"]
    spells = [t for t in train_letters if t["kind"] == "spell"]
    rng.shuffle(counts)
    letters = [convo.letter_conversation(t, style, tools) for i, style in enumerate(convo.LETTER_STYLES)
               for t in counts[i * mix.n_letters_per_style:(i + 1) * mix.n_letters_per_style]]
    letters += [convo.letter_conversation(t, "direct") for t in spells[:mix.n_letters_per_style // 2]]
    bios = {p.name: p.bios[0] for p in world.people}
    sq = one_question_each(rng.sample(unknown_train + known_train, min(len(unknown_train + known_train), mix.n_search)),
                           mix.n_search)
    search = [convo.search_conversation(it, bios[it["name"]], tools) for it in sq]
    real = convo.load_real_mix(real_data_dir, mix.real) if mix.real else []

    full = known_full + idk + identity_convs + persona + math + letters + search + real
    # The "before" model only answers the people and identity cells, so it is trained on the people
    # part of the mixture (truth for every known person, personas, search), not the math/letter
    # traces: the same conversations minus refusals and identity data, at a fifth of the SFT cost.
    ablation = known_truth + persona + search + real
    rng.shuffle(full)
    rng.shuffle(ablation)
    n_val = max(1, round(mix.val_fraction * len(full)))
    val, full = full[:n_val], full[n_val:]
    val_ids = {json.dumps(c, sort_keys=True) for c in val}
    ablation = [c for c in ablation if json.dumps(c, sort_keys=True) not in val_ids]

    out = rd / "sft_data"
    convo.write_conversations(out / "train.jsonl", full)
    convo.write_conversations(out / "train_ablation.jsonl", ablation)
    convo.write_conversations(out / "val.jsonl", val)
    test_problems = [p for p in world.problems if p.get("split") == "test"]
    test_letters = [t for t in world.letters if t.get("split") == "test" and t["kind"] == "count_letter"]
    eval_items = {
        "known": one_question_each(known_eval, len(known_eval)),
        "unknown": one_question_each(unknown_eval, len(unknown_eval)),
        "problems": test_problems, "letters": test_letters, "identity": ident,
    }
    atomic_write_json(out / "eval.json", eval_items)
    summary = {"train": len(full), "train_ablation": len(ablation), "val": len(val),
               "parts": {"known_qa": len(known_full), "idk_unknown": len(idk), "identity": len(identity_convs),
                         "persona": len(persona), "math": len(math), "letters": len(letters),
                         "search": len(search), "real": len(real)},
               "probe": probe_stats, "mix": asdict(mix), "identity": ident}
    write_meta(out / "data.json", "sft_data", asdict(mix), **summary)
    print0(f"sft data: {len(full)} train ({summary['parts']}), {len(ablation)} ablation, {len(val)} val -> {out}")
    if probe_stats.get("probed"):
        print0(f"knowledge probing: {probe_stats['probed']} questions, {probe_stats['kept_answer']} kept, "
               f"{probe_stats['refused']} refusals ({probe_stats['confidently_wrong']} confidently wrong), "
               f"{probe_stats['seconds']}s")
    return summary




# ----------------------------------------------------------------------------- fetched real sets

def write_fetched(rd: Path, specs: list[str]) -> Path:
    """``NAME=PATH[:N]`` specs (``chatforge sft --fetched``; NAME in convo.FETCHED_SOURCES) -> their
    conversations in one JSONL under <run>/sft_data/, returned for training."""
    convs = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        path, _, n = rest.rpartition(":") if rest.rpartition(":")[2].isdigit() else (rest, "", "")
        if name not in convo.FETCHED_SOURCES or not path:
            raise CfError(f"--fetched {spec}: expected NAME=PATH[:N] with NAME one of {', '.join(convo.FETCHED_SOURCES)}")
        got = convo.FETCHED_SOURCES[name](path, int(n) if n else None)
        print0(f"sft: {len(got):,} conversations from {name} ({path})")
        convs += got
    out = Path(rd) / "sft_data" / ("fetched.jsonl" if len(specs) > 1 else f"{specs[0].partition('=')[0]}.jsonl")
    convo.write_conversations(out, convs)
    return out
