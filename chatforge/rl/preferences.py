"""Preference pairs: where they come from, the hidden rule that judges them, and the pairwise trainer.

Two sources of pairs:

* Anthropic HH-RLHF (Bai et al. 2022), the test splits in the shared data folder
  (``load_hh_rlhf_pairs``): each record is two dialogues that share every turn but the last reply.
* synthetic preferences (``synthetic_preferences``): answers to the world's word problems built from
  parts (correct or wrong number, polite or rude, padded or concise) and judged by a *hidden* rule
  (``true_score``: correct AND polite AND concise is best). Simulated annotators follow the
  Bradley-Terry model of the true score gap, so they disagree with the rule more often when two
  answers are close. Because we know the true score we can later measure how far RL against the
  *learned* reward drifts from it (reward-model over-optimization, Gao et al. 2022).

Preference files (``load_preferences``) are JSONL ``{"prompt": str | [turns], "chosen": str,
"rejected": str}``; a record with a missing field or identical chosen/rejected texts is an error that
names the file and line. The real HH files contain a few such records (2 + 32 + 2 identical pairs in
the four test splits); their loader skips them and says how many unless ``strict``.

The reward model (``reward.py``) and DPO (``dpo.py``) both learn from pairs with the same loop,
``train_pairwise``: shuffled batches of pairs, one loss over (chosen, rejected), clipping, history.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from chatforge.assistant.convo import parse_hh_dialogue
from chatforge.assistant.tasks import math_correct, world_problems
from chatforge.common import CfError, data_dir, get_device, print0, read_jsonl, run_dir, seed_all
from chatforge.model.checkpoint import load_model
from chatforge.model.optim import Optimizers, OptimConfig


# ============================================================================ preference pairs

@dataclass
class PrefPair:
    prompt: list[str]        # conversation so far: user, assistant, user, ... (ends with a user turn)
    chosen: str              # the preferred assistant reply
    rejected: str
    where: str = ""          # file:line or a synthetic id, for error messages
    meta: dict = field(default_factory=dict)  # synthetic: true scores, annotator flip, gold answer

    def conversation(self, reply: str) -> dict:
        return reply_conversation(self.prompt, reply)


def reply_conversation(prompt: Sequence[str], reply: str) -> dict:
    """Turns (user, assistant, ..., user) + the assistant's ``reply`` -> a conversation dict."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(prompt)]
    return {"messages": msgs + [{"role": "assistant", "content": reply}]}


def validate_pair(rec: dict, where: str) -> PrefPair:
    """A preference record -> PrefPair, or CfError naming ``where`` and the problem."""
    for k in ("prompt", "chosen", "rejected"):
        if k not in rec:
            raise CfError(f"{where}: missing field '{k}' (expected prompt, chosen, rejected)")
    prompt = rec["prompt"]
    prompt = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompt, list) or not prompt or not all(isinstance(t, str) and t for t in prompt) \
            or len(prompt) % 2 == 0:
        raise CfError(f"{where}: 'prompt' must be a non-empty string or an odd-length list of turns "
                      "(user, assistant, ..., user)")
    for k in ("chosen", "rejected"):
        if not isinstance(rec[k], str) or not rec[k].strip():
            raise CfError(f"{where}: '{k}' must be a non-empty string")
    if rec["chosen"].strip() == rec["rejected"].strip():
        raise CfError(f"{where}: chosen and rejected texts are identical (a pair must differ)")
    return PrefPair(prompt, rec["chosen"], rec["rejected"], where, rec.get("meta", {}) or {})


def load_preferences(path: str | Path, limit: int | None = None) -> list[PrefPair]:
    """Our JSONL preference format (strict: every record must be valid)."""
    return [validate_pair(rec, f"{path}:{ln}") for ln, rec in read_jsonl(path, limit)]


def load_hh_rlhf_pairs(path: str | Path, limit: int | None = None, strict: bool = False) -> list[PrefPair]:
    """HH-RLHF ``{chosen, rejected}`` dialogues -> pairs sharing the prompt (all turns but the last reply).

    Irregular records (identical texts, different prefixes, non-alternating turns) raise with
    ``strict``, else are skipped and counted.
    """
    out, skipped = [], 0
    for ln, rec in read_jsonl(path):
        where = f"{path}:{ln}"
        if "chosen" not in rec or "rejected" not in rec:
            raise CfError(f"{where}: missing field 'chosen' or 'rejected'")
        c, r = parse_hh_dialogue(rec["chosen"]), parse_hh_dialogue(rec["rejected"])
        problem = None
        if c is None or r is None:
            problem = "dialogue does not alternate Human/Assistant ending with the assistant"
        elif c[:-1] != r[:-1]:
            problem = "chosen and rejected dialogues differ before the last reply"
        elif c[-1] == r[-1]:
            problem = "chosen and rejected texts are identical"
        if problem:
            if strict:
                raise CfError(f"{where}: {problem}")
            skipped += 1
            continue
        out.append(PrefPair(c[:-1], c[-1], r[-1], where))
        if limit and len(out) >= limit:
            break
    if skipped:
        print0(f"hh-rlhf: skipped {skipped} irregular records in {path}")
    return out


# ============================================================================ the hidden rule and simulated annotators

POLITE = ["Happy to help! ", "Great question! ", "Sure, glad to help. "]
RUDE = ["Obviously, ", "Ugh, fine. ", "This is trivial. "]
POLITE_END = [" Hope this helps!", " Thank you for asking."]
RUDE_END = [" Figure it out yourself next time.", " Don't ask again."]
FILLER = ["Let me think about this very carefully.", "This kind of problem appears often.",
          "We need to read the question again.", "Numbers can be tricky.", "Step by step is the way."]
_POLITE_RE = re.compile(r"happy to help|glad to help|great question|hope this helps|thank you", re.I)
_RUDE_RE = re.compile(r"obviously|ugh|trivial|yourself|don't ask", re.I)


def true_score(response: str, gold: str) -> float:
    """The hidden rule the annotators follow: correct (+2), polite (+1, rude -1), concise (-0.05/word)."""
    correct = math_correct(response, gold)
    tone = (1.0 if _POLITE_RE.search(response) else 0.0) - (1.0 if _RUDE_RE.search(response) else 0.0)
    return 2.0 * correct + tone - 0.05 * len(response.split())


def synthetic_response(problem: dict, rng: random.Random) -> str:
    """A candidate answer assembled from random parts (tone, padding, right or wrong number)."""
    gold = int(problem["answer"])
    ans = gold if rng.random() < 0.5 else gold + rng.choice([-10, -2, -1, 1, 2, 3, 10])
    tone = rng.random()
    head = rng.choice(POLITE) if tone < 0.35 else rng.choice(RUDE) if tone < 0.6 else ""
    tail = rng.choice(POLITE_END) if tone < 0.35 and rng.random() < 0.5 else \
        rng.choice(RUDE_END) if 0.35 <= tone < 0.6 and rng.random() < 0.5 else ""
    pad = " ".join(rng.sample(FILLER, rng.choice([0, 0, 1, 2, 3])))
    steps = problem.get("solution", "") if rng.random() < 0.7 else ""
    body = " ".join(s for s in (pad, steps, f"The answer is {ans}.") if s)
    return f"{head}{body}{tail}"


def annotate(score_a: float, score_b: float, rng: random.Random, beta: float = 2.0) -> bool:
    """A simulated annotator: True if it prefers a. P(a) = sigmoid(beta * (s_a - s_b)) (Bradley-Terry)."""
    return rng.random() < 1.0 / (1.0 + math.exp(-beta * (score_a - score_b)))


def synthetic_preferences(problems: Sequence[dict], n_pairs: int, rng: random.Random,
                          beta: float = 2.0) -> list[PrefPair]:
    """n_pairs noisy-annotated pairs over ``problems``; meta keeps the true scores and whether the
    annotator disagreed with the hidden rule."""
    out = []
    while len(out) < n_pairs:
        prob = problems[rng.randrange(len(problems))]
        a, b = synthetic_response(prob, rng), synthetic_response(prob, rng)
        sa, sb = true_score(a, prob["answer"]), true_score(b, prob["answer"])
        if a == b or sa == sb:
            continue
        pick_a = annotate(sa, sb, rng, beta)
        chosen, rejected = (a, b) if pick_a else (b, a)
        sc, sr = (sa, sb) if pick_a else (sb, sa)
        out.append(PrefPair([prob["question"]], chosen, rejected, f"synthetic/{len(out)}",
                            {"true_chosen": sc, "true_rejected": sr, "flipped": sc < sr, "answer": prob["answer"]}))
    return out


# ============================================================================ the shared config and loop

@dataclass
class PreferenceConfig:
    """What the reward model and DPO share: which pairs, how many passes, which optimizer."""
    run: str = field(default="default", metadata={"help": "run name (runs/<run>) or path"})
    init: str = field(default="", metadata={"help": "checkpoint to start from (default runs/<run>/sft)"})
    out: str = field(default="", metadata={"help": "output stage dir (default runs/<run>/<stage>)"})
    data: str = field(default="synthetic", metadata={"help": "synthetic | hh | path/to/prefs.jsonl"})
    n_pairs: int = field(default=2000, metadata={"help": "synthetic pairs (or HH pairs) to use"})
    val_frac: float = field(default=0.1, metadata={"help": "held-out fraction of pairs"})
    annotator_beta: float = field(default=2.0, metadata={"help": "synthetic annotators: P(a) = sigmoid(beta * gap)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=3e-4))
    max_tokens: int = field(default=256, metadata={"help": "truncate conversations (from the left)"})
    time_budget: float = field(default=0.0, metadata={"help": "opt-in: stop after this many seconds (0 = off)",
                                                      "deprecated": ["--budget-s"]})
    seed: int = field(default=1337, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | mps | auto"})


def load_pairs(cfg: PreferenceConfig, rng: random.Random) -> list[PrefPair]:
    if cfg.data == "synthetic":
        return synthetic_preferences(world_problems(cfg.run, "train"), cfg.n_pairs, rng, cfg.annotator_beta)
    if cfg.data == "hh":
        return load_hh_rlhf_pairs(data_dir("hh-rlhf", "helpful-base", "test.jsonl.gz"), cfg.n_pairs)
    return load_preferences(cfg.data, cfg.n_pairs or None)


def split_pairs(pairs: list[PrefPair], val_frac: float, rng: random.Random) -> tuple[list[PrefPair], list[PrefPair]]:
    idx = list(range(len(pairs)))
    rng.shuffle(idx)
    n_val = int(round(val_frac * len(pairs)))
    return [pairs[i] for i in idx[n_val:]], [pairs[i] for i in idx[:n_val]]


def setup_pairwise(cfg: PreferenceConfig, model, tokenizer, pairs: list[PrefPair] | None,
                   val_pairs: list[PrefPair] | None, what: str):
    """What the RM and DPO do first: seed, load the starting model unless given, load and split pairs.
    Returns (model, tokenizer, train pairs, held-out pairs, rng, device, run dir)."""
    seed_all(cfg.seed)
    device = get_device(cfg.device)
    rd = run_dir(cfg.run)
    if model is None:
        ck = load_model(cfg.init or rd / "sft", device, what=f"{what} init")
        model, tokenizer = ck.model, ck.tokenizer
    rng = random.Random(cfg.seed)
    if pairs is None:
        pairs, val_pairs = split_pairs(load_pairs(cfg, rng), cfg.val_frac, rng)
    if not pairs:
        raise CfError(f"{what} data {cfg.data!r}: no preference pairs")
    return model, tokenizer, pairs, val_pairs, rng, device, rd


def train_pairwise(cfg: PreferenceConfig, params, optimizer: Optimizers, n_pairs: int, rng: random.Random,
                   pair_loss: Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]], name: str) -> list[dict]:
    """The pairwise training loop of the reward model and DPO.

    ``pair_loss(indices)`` computes the loss of a batch of pair indices (and stats to log); batches are
    drawn from a reshuffled order each epoch, ``ceil(epochs * n_pairs / batch_size)`` steps (or fewer
    when the opt-in ``time_budget`` runs out). Returns the per-step history.
    """
    steps = max(1, math.ceil(cfg.epochs * n_pairs / cfg.batch_size))
    history: list[dict] = []
    order: list[int] = []
    t0 = time.perf_counter()
    for step in range(steps):
        if cfg.time_budget and time.perf_counter() - t0 > cfg.time_budget:
            break
        if len(order) < cfg.batch_size:
            order += rng.sample(range(n_pairs), n_pairs)
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        loss, stats = pair_loss(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
        history.append({"step": step, "loss": float(loss.detach()), **stats})
        if step % 20 == 0 or step == steps - 1:
            print0(f"{name} step {step:4d}/{steps} loss {history[-1]['loss']:.4f} "
                   + " ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    return history
