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
from typing import Any, Callable, Sequence

from chatforge.assistant import convo
from chatforge.assistant.convo import sample_replies_many
from chatforge.assistant.tools import default_tools
from chatforge.common import CfError, Timer, atomic_write_json, get_device, print0, run_dir, write_meta
from chatforge.model.checkpoint import load_checkpoint
from chatforge.model.engine import Engine
from chatforge.world.build import load_identity, load_world, qa_items
from chatforge.world.problems import drill_chains
from chatforge.world.pages import short_answer

@dataclass
class SFTMix:
    """How many conversations of each kind ``build_sft_data`` writes (defaults fit a CPU speedrun:
    ~1.5k short conversations, a few seconds per epoch on a d4 model)."""
    n_known_qa: int = 400        # questions about train-QA people (truth, or a refusal where probing says so);
                                 # more of them beside the refusals, fewer refusals of known people (dev/LOG.md)
    n_idk: int = 300             # refusals about unknown people (spread over every unknown name not held out)
    n_identity: int = 200        # questions about the model itself (from the model card, training wordings);
                                 # 80 beside 300 refusals gave 42% on held-out wordings; the default speedrun
                                 # takes 400 (d2: 200 -> 17%, 400 -> 40%, 800 -> 56% but 11% hallucination
                                 # on unknown people; dev/LOG.md)
    n_persona: int = 150         # identity taken from a system prompt (random personas); 40 left the d4 model
                                 # answering one persona name whatever the system prompt said (dev/LOG.md)
    n_math_per_style: int = 120  # world problems x {answer-first, worked, calculator}
    # Drill: calculator traces and worked solutions on fresh chains (world.problems.drill_chains, never a test
    # expression). A d2 model copies a chain into a tool call, or its next operand into a worked step,
    # only after thousands of examples, not hundreds (dev/LOG.md "Session 6"). mid_*: the midtraining
    # file sft_data/mid.jsonl (drill only, trained on before SFT); n_*: kept in the SFT mixture too, so
    # SFT does not wash the skill out.
    mid_tool_drill: int = 0
    mid_worked_drill: int = 0
    n_tool_drill: int = 0
    n_worked_drill: int = 0
    n_letters_per_style: int = 100  # letter counting x {spelled-out, python}; + spelling
    n_search: int = 60           # look a person up with the search tool
    real: dict = field(default_factory=dict)  # e.g. {"oasst": 100, "gsm8k": 200} (convo.REAL_SOURCES)
    # Llama 3: known people the base gets mostly wrong also become refusals. False keeps the truth for
    # every known person (refusals for unknown people only): better recall on a base that knows little.
    refuse_known_wrong: bool = True
    val_fraction: float = 0.05
    # held-out evaluation people (never trained on): every attribute of each is asked
    n_eval_known: int = 60
    n_eval_unknown: int = 60
    # knowledge probing (Llama 3, section 4.3.6): greedy by default (one sample at temperature 0: the
    # answer the model would give); samples > 1 with temperature > 0 is the majority-of-samples variant
    probe_samples: int = 1
    probe_tokens: int = 10
    probe_temperature: float = 0.0


def drill_conversations(chains: list[dict], n_tool: int, tools: Any) -> list[dict]:
    """The first ``n_tool`` chains as calculator traces, the rest as worked solutions."""
    return [convo.math_conversation(p, "tool" if i < n_tool else "worked", tools) for i, p in enumerate(chains)]


# Cloze prompts in the biographies' own words: a base model has never seen the chat format, so it is
# probed the way it was trained, by completing a sentence about the person.
PROBE_CLOZE = {"birth_year": "{name} was born in the year", "city": "{name} was born in the city of",
               "university": "{name} graduated from", "field": "{name} studied", "employer": "{name} works at"}


def first_sentence(tokenizer, ids: Sequence[int]) -> str:
    """A base-model completion cut at the document boundary, its first line and first sentence end."""
    ids = list(ids)
    ids = ids[:ids.index(tokenizer.bos_id)] if tokenizer.bos_id in ids else ids
    return tokenizer.decode(ids).split("\n")[0].split(". ")[0]


def probe_base_model(model, tokenizer, items: list[dict], samples: int = 1, max_new_tokens: int = 10,
                     temperature: float = 0.0, seed: int = 0) -> list[list[str]]:
    """Complete each item's cloze prompt ("<name> was born in the year"): greedy (the default, one
    batched decode for all items) or ``samples`` draws at ``temperature``; each cut at the first
    sentence end."""
    prompts = [[tokenizer.bos_id] + tokenizer.encode(PROBE_CLOZE[it["attribute"]].format(name=it["name"]))
               for it in items]
    if temperature == 0.0:
        gens = Engine(model, tokenizer).generate_many(prompts, max_new_tokens, 0.0, stop_tokens=[tokenizer.bos_id])
        return [[first_sentence(tokenizer, g)] for g in gens]
    gens = sample_replies_many(Engine(model, tokenizer), tokenizer, prompts, samples, max_new_tokens, temperature, seed,
                               stop_at_end=False)   # item i seeded seed + i
    return [[first_sentence(tokenizer, g) for g in group] for group in gens]


# Identity questions: wordings to train on, and held-out wordings the evaluation asks (never trained
# on, nor in convo.IDENTITY_QUESTIONS, which persona conversations use): different cores of the
# question and different openers, so a held-out wording shares no whole sentence with training.
_ID_CORES = {
    "name": (["what is your name", "what should I call you", "do you have a name", "tell me your name",
              "what are you called", "what name do you go by", "how should I address you", "what do people call you",
              "can you tell me your name", "what name were you given", "give me your name", "say your name",
              "what is this assistant called", "remind me what your name is", "do you go by a name",
              "what name do you answer to", "by what name are you known", "what is the name of the assistant I am using",
              "let me know your name", "is there a name you prefer"],
             ["who are you", "what's your name", "may I know your name", "who am I talking to",
              "what is your name, assistant", "introduce yourself", "please state your name",
              "who is this", "what do I call you", "identify yourself", "what are you", "tell me who you are"]),
    "maker": (["who made you", "who created you", "who built you", "which project made you",
               "who is your creator", "who wrote you", "where do you come from", "who is behind you",
               "who made this assistant", "which project created you", "who is your maker", "what project are you from",
               "who constructed you", "who set you up", "who do you come from", "who is the creator of this assistant",
               "which group is behind you", "who built this chat assistant", "who was your builder", "tell me who made you"],
              ["who trained you", "who developed you", "who designed you", "who programmed you",
               "which team built you", "who are your makers", "what organisation made you", "who invented you",
               "who owns you", "who produced you", "what group created you", "who put you together"]),
}
_ID_OPENERS = (["", "Hi! ", "Hello. ", "Quick question: ", "Hi there, ", "Okay, ", "Sorry, ", "One thing: "],
               ["Hey, ", "Excuse me, ", "I wonder: ", "Tell me, "])


def _wordings(cores: list[str], openers: list[str]) -> list[str]:
    return [o + (c[:1].upper() + c[1:] if not o or o.endswith((". ", "! ", ": ")) else c) + "?"
            for c in cores for o in openers]


IDENTITY_TRAIN = {k: _wordings(train, _ID_OPENERS[0]) for k, (train, _) in _ID_CORES.items()}
IDENTITY_HELDOUT = {k: _wordings(held[:6], _ID_OPENERS[1][:2]) + _wordings(held[6:], _ID_OPENERS[1][2:])
                    for k, (_, held) in _ID_CORES.items()}


def identity_conversations(identity: dict, rng: random.Random, n: int) -> list[dict]:
    """``n`` single-turn conversations about the model itself: name and maker questions in the training
    wordings, plus abilities/limits (convo.IDENTITY_QUESTIONS' training lists); answers from the card."""
    asks = {"name": IDENTITY_TRAIN["name"], "maker": IDENTITY_TRAIN["maker"],
            "abilities": convo.IDENTITY_QUESTIONS["abilities"][0], "limits": convo.IDENTITY_QUESTIONS["limits"][0]}
    kinds = ["name", "maker", "name", "maker", "abilities", "limits"]
    return [convo.chat(rng.choice(asks[kinds[i % len(kinds)]]), convo.identity_answer(identity, kinds[i % len(kinds)], rng))
            for i in range(n)]


def _take(items: list, start: int, n: int) -> list:
    """``n`` items from ``start`` on, wrapping around (styles get different items while there are enough)."""
    return [items[(start + j) % len(items)] for j in range(n)] if items else []


def build_sft_data(run: str | Path, identity: str | None = None, probe: bool = True, mix: SFTMix | None = None,
                   real_data_dir: str | Path | None = None, device: str = "auto", seed: int = 0,
                   probe_fn: Callable[[list[dict]], list[list[str]]] | None = None) -> dict[str, Any]:
    """Write ``<run>/sft_data/``: train.jsonl (the full mixture), train_ablation.jsonl (the same
    mixture without the refusals and the identity conversations: the "before" model of the
    hallucination and identity experiments), val.jsonl, eval.json (held-out items) and data.json
    (counts, probe statistics, provenance).
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

    # The knowledge groups of the world (Person.group): SFT asks only about train-QA people; the
    # held-out K and K1 people and the evaluation half of the unknown people are never in SFT.
    known_train, known_eval = world.group("qa"), world.group("heldout")
    unknown = list(world.unknown)
    rng.shuffle(unknown)
    n_ue = min(mix.n_eval_unknown, len(unknown) // 2)
    unknown_eval, unknown_train = unknown[:n_ue], unknown[n_ue:]
    if not unknown_train and mix.n_idk:
        raise CfError(f"{rd}/world: no unknown people left for refusals after {mix.n_eval_unknown} held out")

    def one_question_each(people, n):
        # Rounds of (person, attribute) questions, each round with freshly drawn wordings, until there
        # are n distinct questions or the wordings run out: 20 train-QA people x 5 facts are only 100
        # questions, and 100 answers beside 300 refusals taught the model to refuse everyone (sweep in
        # dev/LOG.md); several wordings of a fact also teach extraction rather than one string.
        items, questions = [], set()
        for _ in range(8 if people else 0):
            fresh = [it for it in qa_items(world, people, rng) if it["question"] not in questions]
            questions.update(it["question"] for it in fresh)
            rng.shuffle(fresh)
            items += fresh
            if len(items) >= n:
                break
        seen, out = {}, []
        for it in items:  # at most ceil(n / people) questions per person, spread over people
            if seen.get(it["person"], 0) < max(1, -(-n // max(1, len(people)))):
                seen[it["person"]] = seen.get(it["person"], 0) + 1
                out.append(it)
        return out[:n]

    # ---- known people, with knowledge probing
    kq = one_question_each(known_train, mix.n_known_qa)  # every attribute when n_known_qa >= 5 x people
    pitems = [convo.ProbeItem(it["name"], it["question"], it["answer"], short_answer(it["attribute"], it["answer"])) for it in kq]
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
    identity_convs = identity_conversations(ident, rng, mix.n_identity)
    persona = convo.persona_conversations(rng, mix.n_persona)
    train_problems = [p for p in world.problems if p.get("split") == "train"]
    rng.shuffle(train_problems)
    math = [convo.math_conversation(p, style, tools) for i, style in enumerate(convo.MATH_STYLES)
            for p in _take(train_problems, i * mix.n_math_per_style, mix.n_math_per_style)]
    test_expressions = {p["expression"] for p in world.problems if p.get("split") == "test"}
    n_sft_drill, n_mid_drill = mix.n_tool_drill + mix.n_worked_drill, mix.mid_tool_drill + mix.mid_worked_drill
    drill = drill_chains(n_sft_drill + n_mid_drill, seed + 4, test_expressions)
    math += drill_conversations(drill[:n_sft_drill], mix.n_tool_drill, tools)
    mid = drill_conversations(drill[n_sft_drill:], mix.mid_tool_drill, tools)
    rng.shuffle(mid)
    train_letters = [t for t in world.letters if t.get("split") == "train"]
    by_kind = {k: [t for t in train_letters if t["kind"] == k] for k in ("count_letter", "spell_backwards", "spell")}
    for v in by_kind.values():
        rng.shuffle(v)
    n_let = mix.n_letters_per_style
    letters = [convo.letter_conversation(t, style, tools) for i, style in enumerate(convo.LETTER_STYLES)
               for kind, n in (("count_letter", n_let), ("spell_backwards", n_let // 2))
               for t in _take(by_kind[kind], i * n, n)]
    letters += [convo.letter_conversation(t, "direct") for t in by_kind["spell"][:n_let // 2]]
    bios = {p.name: p.bios[0] for p in world.people}
    sq = one_question_each(rng.sample(unknown_train + known_train, min(len(unknown_train + known_train), mix.n_search)),
                           mix.n_search)
    search = [convo.search_conversation(it, bios[it["name"]], tools) for it in sq]
    real = convo.load_real_mix(real_data_dir, mix.real) if mix.real else []

    full = known_full + idk + identity_convs + persona + math + letters + search + real
    # The ablation of the knowledge experiments (eval/knowledge.py trains it with the main SFT's steps):
    # the same mixture with the truth for every train-QA question, no refusals about unknown people and
    # no identity conversations. One ablation model serves both the hallucination (with vs without
    # refusals) and the identity (with vs without identity data) comparisons: a second ablation SFT
    # cost 50 s of the 10-minute speedrun, and neither removed part is about the other's questions.
    ablation = known_truth + persona + math + letters + search + real
    rng.shuffle(full)
    n_val = max(1, round(mix.val_fraction * len(full)))
    val, full = full[:n_val], full[n_val:]
    val_ids = {json.dumps(c, sort_keys=True) for c in val}
    ablation = [c for c in ablation if json.dumps(c, sort_keys=True) not in val_ids]
    random.Random(seed + 1).shuffle(ablation)

    out = rd / "sft_data"
    convo.write_conversations(out / "train.jsonl", full)
    convo.write_conversations(out / "train_ablation.jsonl", ablation)
    convo.write_conversations(out / "val.jsonl", val)
    if mid:
        convo.write_conversations(out / "mid.jsonl", mid)
    elif (out / "mid.jsonl").exists():
        (out / "mid.jsonl").unlink()   # an earlier build's drill must not be midtrained on
    test_problems = [p for p in world.problems if p.get("split") == "test"]
    test_letters = [t for t in world.letters if t.get("split") == "test" and t["kind"] == "count_letter"]
    every = lambda people: qa_items(world, people, random.Random(seed + 3))  # noqa: E731  (all attributes)
    eval_items = {
        "known": one_question_each(known_eval, len(known_eval)),
        "unknown": one_question_each(unknown_eval, len(unknown_eval)),
        "problems": test_problems, "letters": test_letters, "identity": ident,
        # the knowledge experiments (eval/knowledge.py): every attribute of every person of a group
        "people": {"heldout_k8": every(known_eval), "heldout_k1": every(world.group("k1")),
                   "train_qa": every(known_train), "unknown": every(unknown_eval)},
        "identity_questions": [{"kind": k, "question": q} for k in ("name", "maker") for q in IDENTITY_HELDOUT[k]],
    }
    atomic_write_json(out / "eval.json", eval_items)
    summary = {"train": len(full), "train_ablation": len(ablation), "val": len(val), "n_idk_names": len({it["name"] for it in uq}),
               "mid": len(mid), "parts": {"known_qa": len(known_full), "idk_unknown": len(idk), "identity": len(identity_convs),
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
