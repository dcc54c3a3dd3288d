"""Conversation sets for SFT: synthetic (from the world) and real (OASST, self-instruct, HH, GSM8K).

Every builder returns conversations in the chat schema of DESIGN.md (``{"messages": [...]}``), so
the tokenizer's ``render_conversation`` turns each into (ids, loss mask) without special cases.

What the mixture teaches a tiny model, and why each part is there:

- world Q&A about *known* people: the answer format ("X was born in Y.") and that facts learned in
  pretraining can be retrieved in a chat.
- "I don't know" answers built by *knowledge probing* (Llama 3, section 4.3.4 "Factuality"): ask the
  model about entities several times, compare each sample with the truth, and where the answers are
  informative but mostly wrong replace the target with a refusal ("I don't know who X is."). For
  entities the world never mentioned every informative answer is wrong by construction, so they all
  become refusals; the pure decision function is ``probe_decisions`` (it takes the answers, so it is
  tested with a stub instead of a model).
- identity conversations from the model card (name, maker, abilities).
- tool-use traces: calculator for arithmetic, python for letter counting/spelling, search for people.
- worked solutions for word problems (optionally with calculator calls for each step).

Real data loaders (``load_oasst``, ``load_self_instruct``, ``load_hh_rlhf``, ``load_gsm8k``) read the
files described in shared/data/SOURCES.md; malformed lines raise ``CfError("file:line: ...")``.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from chatforge.common import atomic_write_text, CfError, read_jsonl
from chatforge.tokenizer.tokenizer import validate_conversation



Conversation = dict[str, Any]


# ----------------------------------------------------------------------------- small constructors

def chat(*turns: Any, system: str | None = None) -> Conversation:
    """``chat(user1, assistant1, user2, assistant2, ...)``; an assistant turn may be a list of parts."""
    msgs: list[dict[str, Any]] = []
    if system:
        msgs.append({"role": "system", "content": system})
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return {"messages": msgs}


def text(s: str) -> dict[str, str]:
    return {"type": "text", "text": s}


def tool_call(name: str, inp: str) -> dict[str, str]:
    return {"type": "tool_call", "name": name, "input": inp}


def tool_output(s: str) -> dict[str, str]:
    return {"type": "tool_output", "text": s}


def assistant_text(conv: Conversation) -> str:
    """All text of the last assistant message (tool outputs excluded)."""
    msg = conv["messages"][-1]
    c = msg["content"]
    if isinstance(c, str):
        return c
    return "".join(p.get("text", "") for p in c if p.get("type") == "text")


# ----------------------------------------------------------------------------- answers and refusals

REFUSALS = [
    "I don't know who {name} is.",
    "I'm sorry, I don't know who {name} is.",
    "I don't have any information about {name}.",
]
# Lower-cased markers that make a reply count as a refusal (not an informative answer).
_REFUSAL_MARKERS = ("don't know", "do not know", "don't have any information", "not sure",
                    "no information", "i'm not aware", "never heard")


def refusal(name: str, rng: random.Random | None = None) -> str:
    t = REFUSALS[0] if rng is None else rng.choice(REFUSALS)
    return t.format(name=name)


def is_refusal(answer: str) -> bool:
    a = answer.lower().replace("\u2019", "'")
    return any(m in a for m in _REFUSAL_MARKERS)


def normalize(s: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the form answers are compared in."""
    s = s.lower().replace("\u2019", "'")
    s = re.sub(r"[^0-9a-z]+", " ", s)
    return " ".join(s.split())


def answer_matches(answer: str, truth: str) -> bool:
    """True when the normalized truth appears as whole words in the normalized answer."""
    a, t = f" {normalize(answer)} ", f" {normalize(truth)} "
    return t.strip() != "" and t in a


@dataclass
class ProbeItem:
    """One knowledge-probe question. ``truth`` is None for entities the world never mentioned."""
    entity: str
    question: str
    truth: str | None
    answer: str | None = None  # the full target sentence when the truth is known


@dataclass
class ProbeDecision:
    item: ProbeItem
    n_samples: int
    n_correct: int
    n_refused: int
    target: str          # the assistant reply to train on
    kind: str            # "answer" (keep the truth) or "refuse"
    confidently_wrong: bool


def probe_decisions(items: Sequence[ProbeItem], answers: Sequence[Sequence[str]],
                    min_correct_frac: float = 0.5, rng: random.Random | None = None) -> list[ProbeDecision]:
    """Turn sampled answers into SFT targets (Llama 3 knowledge probing, a pure function).

    For each item, ``answers[i]`` holds several sampled replies of the model. A sample is *correct*
    when it contains the truth, a *refusal* when it says it does not know, otherwise *wrong*.
    - truth known and more than ``min_correct_frac`` of the samples correct -> keep the true answer;
    - otherwise (none/most wrong, or the entity is unknown) -> the target becomes a refusal.
    ``confidently_wrong`` marks items where the majority of samples were informative and wrong,
    i.e. hallucinations, which is what the refusals are meant to remove.
    """
    if len(items) != len(answers):
        raise ValueError(f"probe_decisions: {len(items)} items but {len(answers)} answer lists")
    out = []
    for item, samples in zip(items, answers):
        k = max(1, len(samples))
        n_ref = sum(is_refusal(a) for a in samples)
        n_ok = 0 if item.truth is None else sum(
            (not is_refusal(a)) and answer_matches(a, item.truth) for a in samples)
        n_wrong = len(samples) - n_ref - n_ok
        keep = item.truth is not None and n_ok / k > min_correct_frac
        target = (item.answer or item.truth or "") if keep else refusal(item.entity, rng)
        out.append(ProbeDecision(item, len(samples), n_ok, n_ref, target, "answer" if keep else "refuse",
                                 confidently_wrong=n_wrong / k > 0.5))
    return out


def decisions_to_conversations(decisions: Iterable[ProbeDecision]) -> list[Conversation]:
    return [chat(d.item.question, d.target) for d in decisions]


# ----------------------------------------------------------------------------- tool traces

def letter_count_python(word: str, letter: str) -> str:
    """The python program the assistant writes to count letters (run by tools.py's sandbox)."""
    return f"print({word!r}.count({letter!r}))"


def gsm8k_solution_parts(solution: str, use_tool: bool = True) -> list[dict[str, str]]:
    """GSM8K answer text -> assistant parts. ``<<48/2=24>>`` annotations become calculator calls
    (``use_tool``) or are dropped; the final ``#### 72`` becomes ``The answer is 72.``."""
    body, _, final = solution.rpartition("####")
    if not _:
        body, final = solution, ""
    parts: list[dict[str, str]] = []
    buf = ""
    pos = 0
    for m in re.finditer(r"<<([^<>=]*)=([^<>]*)>>", body):
        buf += body[pos:m.start()]
        pos = m.end()
        if use_tool:
            parts += [text(buf), tool_call("calculator", m.group(1).strip()), tool_output(m.group(2).strip())]
            buf = ""
    buf += body[pos:]
    final = final.strip().replace(",", "")
    if final:
        buf = buf.rstrip() + f"\nThe answer is {final}."
    parts.append(text(buf))
    return [p for p in parts if p.get("type") != "text" or p["text"]]


# ----------------------------------------------------------------------------- real data loaders

def load_oasst(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """OpenAssistant trees (en_100_tree.jsonl): one conversation per tree, following the best-ranked
    reply (rank 0, reviewed, not deleted) at every level until a leaf."""
    convs = []
    for lineno, tree in read_jsonl(path):
        node = tree.get("prompt")
        if not isinstance(node, dict) or "text" not in node:
            raise CfError(f"{path}:{lineno}: expected an OASST tree with a 'prompt' message")
        turns = []
        while node is not None:
            turns.append(node["text"])
            ok = [r for r in node.get("replies", []) if not r.get("deleted") and r.get("review_result", True)]
            node = min(ok, key=lambda r: (r.get("rank") is None, r.get("rank") or 0)) if ok else None
        if len(turns) % 2:  # must end on an assistant message
            turns = turns[:-1]
        if turns:
            convs.append(chat(*turns))
        if limit is not None and len(convs) >= limit:
            break
    return convs


def load_self_instruct(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """self-instruct seed_tasks.jsonl: instruction (+ input) -> output, first instance of each task."""
    convs = []
    for lineno, task in read_jsonl(path, limit):
        inst = task.get("instances") or []
        if "instruction" not in task or not inst or "output" not in inst[0]:
            raise CfError(f"{path}:{lineno}: expected 'instruction' and 'instances[0].output'")
        user = task["instruction"] + (f"\n\n{inst[0]['input']}" if inst[0].get("input") else "")
        convs.append(chat(user, inst[0]["output"]))
    return convs


_HH_SPLIT = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_dialogue(s: str) -> list[str] | None:
    """``"\\n\\nHuman: a\\n\\nAssistant: b ..."`` -> [a, b, ...]; None unless it alternates
    Human/Assistant starting with Human and ends with the assistant."""
    pieces = _HH_SPLIT.split(s)
    roles, texts = pieces[1::2], [t.strip() for t in pieces[2::2]]
    if not roles or pieces[0].strip() or len(roles) % 2:
        return None
    if any(r != ("Human" if i % 2 == 0 else "Assistant") for i, r in enumerate(roles)) or not all(texts):
        return None
    return texts


def load_hh_rlhf(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """Anthropic HH-RLHF (test.jsonl.gz): the *chosen* dialogue of each pair; irregular ones skipped."""
    convs = []
    for lineno, pair in read_jsonl(path):
        if "chosen" not in pair:
            raise CfError(f"{path}:{lineno}: expected a 'chosen' dialogue")
        turns = parse_hh_dialogue(pair["chosen"])
        if turns:
            convs.append(chat(*turns))
        if limit is not None and len(convs) >= limit:
            break
    return convs


def gsm8k_items(path: str | Path, limit: int | None = None) -> list[tuple[str, str, str]]:
    """GSM8K lines -> (question, solution text, final answer)."""
    out = []
    for lineno, ex in read_jsonl(path, limit):
        if "question" not in ex or "####" not in ex.get("answer", ""):
            raise CfError(f"{path}:{lineno}: expected 'question' and an 'answer' ending in '#### N'")
        out.append((ex["question"], ex["answer"], ex["answer"].rpartition("####")[2].strip().replace(",", "")))
    return out


def load_gsm8k(path: str | Path, limit: int | None = None, use_tool: bool = True) -> list[Conversation]:
    """GSM8K as worked solutions; the <<a*b=c>> annotations become calculator calls when ``use_tool``."""
    return [chat(q, gsm8k_solution_parts(sol, use_tool)) for q, sol, _ in gsm8k_items(path, limit)]


def load_smoltalk(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """SmolTalk parquet files (``chatforge data fetch --dataset smoltalk``; a file or a folder of them):
    the ``messages`` column holds [{role, content}] in our roles already. Conversations that do not
    fit the schema (e.g. two user turns in a row) or do not end with the assistant are skipped."""
    import pyarrow.parquet as pq  # lazy import on purpose: only this loader reads parquet
    p = Path(path)
    files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    if not files or not files[0].is_file():
        raise CfError(f"{p}: no SmolTalk parquet files (run `chatforge data fetch --dataset smoltalk`)")
    convs: list[Conversation] = []
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(columns=["messages"], batch_size=1024):
            for msgs in batch.column(0).to_pylist():
                conv = {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs or []]}
                try:
                    validate_conversation(conv)
                except CfError:
                    continue
                if conv["messages"][-1]["role"] == "assistant":
                    convs.append(conv)
                if limit is not None and len(convs) >= limit:
                    return convs
    return convs


# fetched SFT sets (chatforge data fetch --dataset NAME): name -> loader of the downloaded file/folder
FETCHED_SOURCES = {"smoltalk": load_smoltalk, "oasst": load_oasst}

REAL_SOURCES = {
    # name -> (path relative to shared/data, loader)
    "oasst": ("oasst-en-100/en_100_tree.jsonl", load_oasst),
    "self_instruct": ("self-instruct/seed_tasks.jsonl", load_self_instruct),
    "hh": ("hh-rlhf/helpful-base/test.jsonl.gz", load_hh_rlhf),
    "gsm8k": ("gsm8k/train.jsonl", load_gsm8k),
}


def load_real_mix(data_dir: str | Path | None, limits: dict[str, int]) -> list[Conversation]:
    """Conversations from every real source in ``limits`` whose file exists under ``data_dir``
    (absent files are skipped silently: the synthetic mixture works on its own)."""
    if data_dir is None:
        return []
    out: list[Conversation] = []
    for name, n in limits.items():
        if n <= 0:
            continue
        if name not in REAL_SOURCES:
            raise CfError(f"real data mix: unknown source '{name}'; expected one of {sorted(REAL_SOURCES)}")
        rel, loader = REAL_SOURCES[name]
        p = Path(data_dir) / rel
        if p.exists():
            out += loader(p, limit=n)
    return out


def write_conversations(path: str | Path, convs: Iterable[Conversation]) -> int:
    """Write JSONL atomically; returns the number of lines."""
    lines = [json.dumps(c, ensure_ascii=False) for c in convs]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


# ----------------------------------------------------------------------------- world conversations
# The assistant's answer sentences mirror the biography phrasings of world.py, so the fact the model
# retrieves is in the same words it read in pretraining.
ANSWER_TEMPLATES = {
    "birth_year": "{name} was born in {value}.",
    "city": "{name} was born in {value}.",
    "university": "{name} attended {value}.",
    "field": "{name} studied {value}.",
    "employer": "{name} works at {value}.",
}


def answer_sentence(name: str, attribute: str, value: str) -> str:
    return ANSWER_TEMPLATES.get(attribute, "{value}.").format(name=name, value=value)


# The style of a math / letter answer is asked for in the prompt (so one model can be measured in
# every style): answer-first, worked solution, or the tool.
MATH_STYLES = {"direct": " Answer with just the number.", "worked": " Show your work.",
               "tool": " Use the calculator."}
# Letter counting and spelling backwards: the answer alone (a true direct style: no letters written
# out before it), the word spelled out letter by letter first, or a python program.
LETTER_STYLES = {"direct": " Answer only.", "spelled": " Spell it out.", "python": " Use python."}


def _tool(tools: Any, name: str, inp: str, fallback: str) -> str:
    """The tool's real output when a ToolBox is given (what the engine will inject), else ``fallback``."""
    if tools is None:
        return fallback
    return tools(name, inp)


def calculator_calls(problem: dict) -> list[tuple[str, str]]:
    """What the calculator style sends, as (input, value): a chain's whole expression in one call (it
    is written in the question: one copy), else one call per step (a word problem's expression is
    not in its words)."""
    if problem.get("kind") == "chain":
        return [(problem["expression"], str(problem["answer"]))]
    return [(expr, value) for expr, _, value in (step.rpartition("=") for step in problem["steps"])]


def math_conversation(problem: dict, style: str, tools: Any = None) -> Conversation:
    """A world problem ({"question", "steps": ["3*12=36", ...], "solution", "answer"}) in one style."""
    q = problem["question"] + MATH_STYLES[style]
    ans = problem["answer"]
    if style == "direct":
        return chat(q, f"The answer is {ans}.")
    if style == "worked":
        return chat(q, f"{problem['solution']} The answer is {ans}.")
    parts: list[dict[str, str]] = []
    for expr, value in calculator_calls(problem):
        parts += [tool_call("calculator", expr), tool_output(_tool(tools, "calculator", expr, value))]
    parts.append(text(f"The answer is {ans}."))
    return chat(q, parts)


def letter_program(task: dict) -> str:
    """The python one-liner for a letter task: count a letter, or spell the word backwards."""
    if task["kind"] == "spell_backwards":
        return f"print('-'.join(reversed({task['word']!r})))"
    return letter_count_python(task["word"], task["letter"])


def letter_conversation(task: dict, style: str, tools: Any = None) -> Conversation:
    """A letter task in one of LETTER_STYLES (spelling forwards has one style: the spelled word)."""
    if task["kind"] == "spell":
        return chat(task["question"], task["solution"])
    q = task["question"] + LETTER_STYLES[style]
    counting = task["kind"] == "count_letter"
    final = f"The answer is {task['answer']}." if counting else f"Backwards: {task['answer']}."
    if style == "python":
        code = letter_program(task)
        out = _tool(tools, "python", code, str(task["answer"]))
        return chat(q, [tool_call("python", code), tool_output(out), text(final)])
    if style == "spelled":
        return chat(q, f"{task['solution']} The answer is {task['answer']}." if counting else task["solution"])
    return chat(q, final)


def search_conversation(item: dict, bio: str, tools: Any = None) -> Conversation:
    """Look a person up with the search tool, then answer from what it returned."""
    q = f"Search for {item['name']}. {item['question']}"
    out = _tool(tools, "search", item["name"], bio)
    return chat(q, [tool_call("search", item["name"]), tool_output(out),
                    text(answer_sentence(item["name"], item["attribute"], item["answer"]))])


# Identity questions: (kind, train paraphrases, held-out paraphrases for evaluation).
IDENTITY_QUESTIONS: dict[str, tuple[list[str], list[str]]] = {
    "name": (["What is your name?", "What should I call you?", "Do you have a name?", "Tell me your name.",
              "What are you called?"], ["Who are you?", "What's your name?"]),
    "maker": (["Who made you?", "Who created you?", "Who built you?", "Which project made you?"],
              ["Who trained you?", "Who developed you?"]),
    "abilities": (["What can you do?", "What are you good at?", "How can you help me?"],
                  ["What are your abilities?"]),
    "limits": (["What are your limitations?", "Can you browse the internet?", "Do you make mistakes?"],
               ["What can't you do?"]),
}


def identity_answer(identity: dict, kind: str, rng: random.Random) -> str:
    """The card's answer to a question about the model. Name and maker answers always give both (as
    deployed assistants do: "I am X, made by Y"), leading with the one asked for; none starts with
    "I'm", which the refusals ("I'm sorry, ...") start with: a d2 model blended the two ("I'm sorge")."""
    name, maker = identity["name"], identity["maker"]
    if kind == "name":
        return rng.choice([f"I am {name}, made by {maker}.", f"My name is {name}. I was made by {maker}.",
                           f"I am {name}, a chat assistant made by {maker}."])
    if kind == "maker":
        return rng.choice([f"I was made by {maker}. My name is {name}.", f"{maker[0].upper() + maker[1:]} created me. I am {name}."])
    if kind == "abilities":
        return f"I am {name}, {identity['description']}. I can " + "; ".join(identity["abilities"]) + "."
    return f"I am {name}. My limits: " + "; ".join(identity["limitations"]) + "."


_PERSONA_NAMES = ["Nova", "Pip", "Atlas", "Juniper", "Quill", "Orbit", "Sage", "Ember", "Tally", "Moss"]
_PERSONA_MAKERS = ["a small lab", "the Tern team", "a student club", "the Harbor project", "two hobbyists"]


def system_prompt_for(identity: dict) -> str:
    return f"You are {identity['name']}, made by {identity['maker']}."


def persona_conversations(rng: random.Random, n: int) -> list[Conversation]:
    """System-prompt personas with random names: teach the model to take its identity from the system
    prompt (kept in every mixture, so 'identity via system prompt' can be measured without the card)."""
    out = []
    for _ in range(n):
        ident = {"name": rng.choice(_PERSONA_NAMES), "maker": rng.choice(_PERSONA_MAKERS)}
        kind = rng.choice(["name", "maker"])
        ans = (f"My name is {ident['name']}." if kind == "name" else f"I was made by {ident['maker']}.")
        out.append(chat(rng.choice(IDENTITY_QUESTIONS[kind][0]), ans, system=system_prompt_for(ident)))
    return out


# ----------------------------------------------------------------------------- reading replies back

def parse_reply(tokenizer, ids: Sequence[int]) -> tuple[str, list[dict[str, str]]]:
    """Generated assistant tokens -> (text the assistant wrote, parts incl. tool calls/outputs).

    The inverse of rendering one assistant message: stops at ``<|assistant_end|>`` or ``<|bos|>``;
    ``<|tool_start|>name\\ninput<|tool_end|>`` and ``<|output_start|>...<|output_end|>`` become parts.
    """
    sp = {tokenizer.special(n): n for n in ("<|assistant_end|>", "<|tool_start|>", "<|tool_end|>",
                                              "<|output_start|>", "<|output_end|>", "<|bos|>",
                                              "<|user_start|>", "<|assistant_start|>")}
    parts: list[dict[str, str]] = []
    buf: list[int] = []
    state = "text"

    def flush() -> None:
        s = tokenizer.decode(buf)
        buf.clear()
        if state == "text" and s:
            parts.append(text(s))
        elif state == "tool":
            name, _, inp = s.partition("\n")
            parts.append(tool_call(name.strip(), inp))
        elif state == "output":
            parts.append(tool_output(s))

    for t in ids:
        name = sp.get(t)
        if name is None:
            buf.append(t)
        elif name in ("<|assistant_end|>", "<|bos|>", "<|user_start|>", "<|assistant_start|>"):
            break
        elif name == "<|tool_start|>":
            flush()
            state = "tool"
        elif name == "<|output_start|>":
            flush()
            state = "output"
        else:  # tool_end / output_end
            flush()
            state = "text"
    flush()
    return "".join(p["text"] for p in parts if p["type"] == "text"), parts


def sample_replies(engine, tokenizer, prompt: list[int], n: int = 1, max_new_tokens: int = 64,
                   temperature: float = 0.0, seed: int = 0, top_k: int | None = None,
                   stop_at_end: bool = True) -> list[list[int]]:
    """``n`` generated continuations of ``prompt`` (the new tokens only)."""
    return sample_replies_many(engine, tokenizer, [prompt], n, max_new_tokens, temperature, seed, top_k,
                               stop_at_end)[0]


def sample_replies_many(engine, tokenizer, prompts: list[list[int]], n: int = 1, max_new_tokens: int = 64,
                        temperature: float = 0.0, seed: int = 0, top_k: int | None = None,
                        stop_at_end: bool = True) -> list[list[list[int]]]:
    """``n`` continuations of each prompt (prompt i seeded ``seed + i``) in one batched
    ``engine.generate_many`` call: a list of n new-token lists per prompt."""
    stops = [tokenizer.special("<|assistant_end|>"), tokenizer.bos_id] if stop_at_end else None
    seqs = engine.generate_many(prompts, max_new_tokens, temperature, top_k=top_k, seed=seed, num_samples=n,
                                stop_tokens=stops)
    out = []
    for i, prompt in enumerate(prompts):
        group = []
        for s in seqs[i * n:(i + 1) * n]:
            s = list(s)
            if len(s) >= len(prompt) and s[:len(prompt)] == list(prompt):
                s = s[len(prompt):]  # tolerate an engine that returns prompt + continuation
            group.append(s)
        out.append(group)
    return out


def ask(engine, tokenizer, conv: Conversation, n: int = 1, max_new_tokens: int = 64, temperature: float = 0.0,
        seed: int = 0) -> list[str]:
    """The assistant's text replies to ``conv`` (which ends with a user message)."""
    prompt = tokenizer.render_for_completion(conv)
    return [parse_reply(tokenizer, ids)[0] for ids in
            sample_replies(engine, tokenizer, prompt, n, max_new_tokens, temperature, seed)]
