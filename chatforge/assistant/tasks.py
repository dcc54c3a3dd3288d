"""Tasks with a checkable answer: their problems, the prompt the assistant sees, and one checker each.

A task owns its data, its prompt and its checker (as nanochat's ``tasks/``), and every stage that
scores an answer imports the checker from here: RL rewards, the report's experiments, best-of-N
search and the arena all agree on what "correct" means.

- Numeric answers (the world's word problems, arithmetic chains, GSM8K): ``extract_answer`` reads the
  final number of a reply -- after ``####``, else after "answer is", else the last number -- and
  ``math_correct`` compares it with the gold answer after ``normalize_number`` ("1,234.0" == "1234").
- Letter counting is a numeric task too (the count); spelling (forwards or backwards) is checked by
  ``spelled_correct`` (the reply's last hyphen-spelled word).
- Facts about people are checked by ``convo.answer_matches`` / ``convo.is_refusal`` (they live with the
  conversation builders that write the same sentences).
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path

from chatforge.assistant.convo import MATH_STYLES, gsm8k_items
from chatforge.common import CfError, data_dir, print0, run_dir
from chatforge.world.build import World, WorldConfig, build_world, load_world

# ----------------------------------------------------------------------------- the numeric checker

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"


def normalize_number(s: str | None) -> str | None:
    """'1,234.0' / '$18' / '18.' -> '1234' / '18' / '18'; None if not a number."""
    if s is None:
        return None
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        x = float(s)
    except ValueError:
        return None
    if math.isfinite(x) and x == int(x):
        return str(int(x))
    return repr(x)


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a response: after '####', else after 'answer is', else the last number."""
    for pat in (rf"####\s*({_NUM})", rf"answer\s*(?:is|:)\s*({_NUM})"):
        m = re.findall(pat, text, flags=re.IGNORECASE)
        if m:
            return normalize_number(m[-1])
    m = re.findall(_NUM, text)
    return normalize_number(m[-1]) if m else None


def format_ok(text: str) -> bool:
    """The format rule: the response states its answer explicitly ('#### N' or 'answer is N')."""
    return re.search(rf"(####\s*{_NUM}|answer\s*(?:is|:)\s*{_NUM})", text, flags=re.IGNORECASE) is not None


def math_correct(text: str, gold: str | int) -> bool:
    """Is the reply's final number the gold answer? (The one numeric checker: RL, eval, search, arena.)"""
    return extract_answer(text) == normalize_number(str(gold))


_SPELLED = r"\b[a-z](?:-[a-z])+\b"


def spelled_correct(text: str, gold: str) -> bool:
    """Spelling tasks ('y-r-r-e-b'): is the reply's last hyphen-spelled word the gold one?"""
    m = re.findall(_SPELLED, text.lower())
    return bool(m) and m[-1] == gold.lower()


def exact_reward(text: str, gold: str | int) -> float:
    return 1.0 if math_correct(text, gold) else 0.0


def rule_reward(text: str, gold: str | int, format_weight: float = 0.1) -> float:
    """RL's verifiable reward: 1 for a correct final answer, + format_weight for the expected format."""
    return exact_reward(text, gold) + format_weight * float(format_ok(text))


# ----------------------------------------------------------------------------- problems

def load_gsm8k_problems(path: str | Path, limit: int | None = None) -> list[dict]:
    """GSM8K JSONL -> [{"question", "answer", "solution"}] (parsing shared with SFT: convo.gsm8k_items)."""
    return [{"question": q, "answer": normalize_number(a) or a, "solution": sol}
            for q, sol, a in gsm8k_items(path, limit)]


@functools.lru_cache(maxsize=2)
def _small_world(seed: int) -> World:
    return build_world(WorldConfig(seed=seed, n_people=20, n_cities=8, n_countries=3, n_universities=4,
                                   n_employers=4, n_filler_per_entity=1, n_problems=3000, n_spelling=10))


def world_problems(run: str | Path | None = None, split: str = "train", seed: int = 1337,
                   n: int | None = None, kinds: tuple[str, ...] = ("word",)) -> list[dict]:
    """The synthetic world's problems of ``kinds`` in ``split`` as [{"question", "answer", ...}].

    Read from ``runs/<run>/world/world.json`` when it exists (the same split SFT saw), else a small
    world is generated from ``seed`` (problems only matter here, so few people).
    """
    wj = run_dir(run) / "world" / "world.json" if run else None
    w = load_world(wj) if wj is not None and wj.exists() else _small_world(seed)
    out = [{"question": p["question"], "answer": str(p["answer"]), "solution": p.get("solution", ""),
            "id": p.get("id", "")} for p in w.problems if p.get("split") == split and p.get("kind") in kinds]
    return out[:n] if n else out


def load_task(task: str, split: str, seed: int = 1337, limit: int | None = None,
              run: str | Path | None = None) -> list[dict]:
    """Problems {"question", "answer"} of a task: world | gsm8k | a GSM8K-format JSONL file."""
    if task == "world":
        return world_problems(run, split, seed, limit)
    if task == "gsm8k":
        return load_gsm8k_problems(data_dir("gsm8k", "train.jsonl" if split == "train" else "test.jsonl"), limit)
    p = Path(task)
    if p.suffix == ".jsonl":
        return load_gsm8k_problems(p, limit)
    raise CfError(f"task: expected world|gsm8k|<file.jsonl>, got {task!r}")


# ----------------------------------------------------------------------------- prompts

def with_style(problems: list[dict], style: str) -> list[dict]:
    """Append SFT's answer-style instruction (" Use the calculator.") to each question ("none": as is)."""
    if style in ("", "none"):
        return problems
    if style not in MATH_STYLES:
        raise CfError(f"style: expected one of {sorted(MATH_STYLES)} or none, got {style!r}")
    return [{**p, "question": p["question"] + MATH_STYLES[style]} for p in problems]


def prompt_tokens(tokenizer, question: str) -> list[int]:
    """A user question rendered for the assistant to answer (ends with <|assistant_start|>)."""
    return tokenizer.render_for_completion({"messages": [{"role": "user", "content": question}]})


def drop_overlong(tokenizer, problems: list[dict], seq_len: int, max_new_tokens: int,
                  what: str = "problems") -> list[dict]:
    """Drop problems whose prompt + response budget would not fit the model's context (says how many)."""
    keep = [p for p in problems if len(prompt_tokens(tokenizer, p["question"])) + max_new_tokens <= seq_len]
    if len(keep) < len(problems):
        print0(f"skipped {len(problems) - len(keep)} of {len(problems)} {what} longer than the context "
               f"({seq_len} tokens incl. {max_new_tokens} new)")
    return keep
