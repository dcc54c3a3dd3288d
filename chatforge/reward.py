"""Reward models: learn a scalar "how good is this answer" from pairwise human preferences.

A short tutorial
----------------
People find it easier to say which of two answers is better than to score one. The Bradley-Terry
model (1952) turns such comparisons into scores: if answer y has score r(x, y), the chance that an
annotator prefers y_w over y_l is sigmoid(r(x, y_w) - r(x, y_l)). Fitting r by maximum likelihood is
the loss

    L = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))                      (Ouyang et al. 2022, eq. 1)

and r is the language model itself with the token head replaced by a scalar head that reads the last
token's hidden state (Stiennon et al. 2020; InstructGPT). Only score *differences* are identified, so
the scale is arbitrary and the offset meaningless.

Two sources of pairs:

* Anthropic HH-RLHF (Bai et al. 2022), the test splits in shared/data (``load_hh_rlhf_pairs``): each
  record is two dialogues that share every turn but the last assistant reply.
* synthetic preferences (``synthetic_preferences``): answers to the world's word problems built from
  parts (correct or wrong number, polite or rude, padded or concise) and judged by a *hidden* rule
  (``true_score``: correct AND polite AND concise is best). Simulated annotators follow the same
  Bradley-Terry model of the true score gap, so they disagree with the rule more often when two
  answers are close. Because we know the true score we can later measure how far RL against the
  *learned* reward drifts from it (reward-model over-optimization, Gao et al. 2022).

Preference files (``load_preferences``) are JSONL ``{"prompt": str | [turns], "chosen": str,
"rejected": str}``; a record with a missing field or identical chosen/rejected texts is an error that
names the file and line. The real HH files contain a few such records (2 + 32 + 2 identical pairs in
the four test splits); their loader skips them and says how many unless ``strict``.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from chatforge.common import (CfError, Timer, add_config_args, config_from_args,
                              get_device, make_parser, print0, print_config, run_dir, seed_all)
from chatforge.rl import extract_answer, normalize_number, world_problems

HH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"


# ============================================================================ preference pairs

@dataclass
class PrefPair:
    prompt: list[str]        # conversation so far: user, assistant, user, ... (ends with a user turn)
    chosen: str              # the preferred assistant reply
    rejected: str
    where: str = ""          # file:line or a synthetic id, for error messages
    meta: dict = field(default_factory=dict)  # synthetic: true scores, annotator flip, gold answer

    def conversation(self, reply: str) -> dict:
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(self.prompt)]
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
    from chatforge.common import read_jsonl
    return [validate_pair(rec, f"{path}:{ln}") for ln, rec in read_jsonl(path, limit)]


def load_hh_rlhf_pairs(path: str | Path, limit: int | None = None, strict: bool = False) -> list[PrefPair]:
    """HH-RLHF ``{chosen, rejected}`` dialogues -> pairs sharing the prompt (all turns but the last reply).

    Irregular records (identical texts, different prefixes, non-alternating turns) raise with
    ``strict``, else are skipped and counted.
    """
    from chatforge.common import read_jsonl
    from chatforge.convo import parse_hh_dialogue
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
    correct = extract_answer(response) == normalize_number(gold)
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


# ============================================================================ the reward model

class RewardModel(nn.Module):
    """GPT trunk + scalar head on the hidden state of the last real token. forward -> (B,) scores."""

    def __init__(self, gpt: nn.Module):
        super().__init__()
        self.gpt = gpt
        self.config = gpt.config
        self.head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)  # start at r = 0 for everything: no initial preference
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.gpt.forward_hidden(ids)                                   # (B, T, C)
        last = h[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, C)
        return self.head(last).squeeze(-1).float()                         # (B,)


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood: mean of -log sigmoid(r_w - r_l)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def encode_reply(tokenizer, prompt: list[str], reply: str, max_tokens: int) -> list[int]:
    """The whole conversation as the RM reads it, truncated from the left (the end is what is scored)."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(prompt)]
    ids, _ = tokenizer.render_conversation({"messages": msgs + [{"role": "assistant", "content": reply}]})
    return ids[-max_tokens:]


def pad_rows(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and (B,) lengths."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


@torch.no_grad()
def score_texts(rm: RewardModel, tokenizer, prompts: Sequence[list[str]], replies: Sequence[str],
                device: str = "cpu", batch_size: int = 32) -> list[float]:
    rm.eval()
    L = rm.config.seq_len
    out: list[float] = []
    for i in range(0, len(replies), batch_size):
        rows = [encode_reply(tokenizer, p, r, L) for p, r in zip(prompts[i:i + batch_size], replies[i:i + batch_size])]
        ids, lens = pad_rows(rows, tokenizer.bos_id)
        out += rm(ids.to(device), lens.to(device)).tolist()
    return out


def pair_accuracy(rm: RewardModel, tokenizer, pairs: Sequence[PrefPair], device: str = "cpu",
                  against_truth: bool = False) -> float:
    """Fraction of pairs the RM orders like the labels (or like the hidden rule, ``against_truth``)."""
    if not pairs:
        return float("nan")
    sc = score_texts(rm, tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs], device)
    sr = score_texts(rm, tokenizer, [p.prompt for p in pairs], [p.rejected for p in pairs], device)
    ok = 0
    for a, b, p in zip(sc, sr, pairs):
        label = -1.0 if against_truth and p.meta.get("flipped") else 1.0
        ok += (a - b) * label > 0
    return ok / len(pairs)


def rm_reward_fn(rm: RewardModel, tokenizer, device: str = "cpu") -> Callable[[list[str], list[dict]], list[float]]:
    """The RM as an RL reward: (response texts, problems) -> scores."""
    return lambda texts, probs: score_texts(rm, tokenizer, [[p["question"]] for p in probs], texts, device)


def load_reward_model(path: str | Path, device: str = "cpu") -> RewardModel:
    """A checkpoint saved by ``train_rm``: the trunk is a normal GPT checkpoint, the head is in state.json."""
    from chatforge.checkpoint import load_checkpoint
    if not Path(path).exists():
        raise CfError(f"{path}: reward model checkpoint not found (train one with `chatforge rm`)")
    ck = load_checkpoint(path, device="cpu")
    head = (ck.state.get("train_config") or {}).get("reward_head")
    if not isinstance(head, dict) or "weight" not in head or "bias" not in head:
        raise CfError(f"{ck.path}: not a reward model checkpoint (state.json train_config.reward_head missing)")
    rm = RewardModel(ck.model)
    w = torch.tensor(head["weight"], dtype=torch.float32)
    if w.shape != rm.head.weight.shape:
        raise CfError(f"{ck.path}: reward_head weight shape {tuple(w.shape)} != ({1}, {rm.config.n_embd})")
    with torch.no_grad():
        rm.head.weight.copy_(w)
        rm.head.bias.fill_(float(head["bias"]))
    rm.tokenizer = ck.tokenizer
    rm.path = ck.path
    return rm.to(device).eval()


# ============================================================================ training

@dataclass
class RMConfig:
    run: str = field(default="default", metadata={"help": "run name (runs/<run>) or path"})
    init: str = field(default="", metadata={"help": "checkpoint to start from (default runs/<run>/sft)"})
    out: str = field(default="", metadata={"help": "output stage dir (default runs/<run>/rm)"})
    data: str = field(default="synthetic", metadata={"help": "synthetic | hh | path/to/prefs.jsonl"})
    n_pairs: int = field(default=2000, metadata={"help": "synthetic pairs (or HH pairs) to use"})
    val_frac: float = field(default=0.1, metadata={"help": "held-out fraction of pairs"})
    annotator_beta: float = field(default=2.0, metadata={"help": "synthetic annotators: P(a) = sigmoid(beta * gap)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | muon"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    max_tokens: int = field(default=256, metadata={"help": "truncate conversations (from the left)"})
    budget_s: float = field(default=0.0, metadata={"help": "stop after this many seconds (0 = off)"})
    seed: int = field(default=1337, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | mps | auto"})


def load_pairs(cfg: RMConfig, rng: random.Random) -> list[PrefPair]:
    if cfg.data == "synthetic":
        return synthetic_preferences(world_problems(cfg.run, "train"), cfg.n_pairs, rng, cfg.annotator_beta)
    if cfg.data == "hh":
        return load_hh_rlhf_pairs(HH_DIR / "helpful-base" / "test.jsonl.gz", cfg.n_pairs)
    return load_preferences(cfg.data, cfg.n_pairs or None)


def split_pairs(pairs: list[PrefPair], val_frac: float, rng: random.Random) -> tuple[list[PrefPair], list[PrefPair]]:
    idx = list(range(len(pairs)))
    rng.shuffle(idx)
    n_val = int(round(val_frac * len(pairs)))
    return [pairs[i] for i in idx[n_val:]], [pairs[i] for i in idx[:n_val]]


def train_rm(cfg: RMConfig, model=None, tokenizer=None, pairs: list[PrefPair] | None = None,
             val_pairs: list[PrefPair] | None = None, save: bool = True) -> tuple[RewardModel, dict, Path | None]:
    """Fit a reward model with the Bradley-Terry loss; returns (rm, metrics, checkpoint path or None)."""
    from chatforge.optim import build_optimizer
    seed_all(cfg.seed)
    device = get_device(cfg.device)
    rd = run_dir(cfg.run)
    if model is None:
        from chatforge.rl import load_ckpt
        ck = load_ckpt(Path(cfg.init) if cfg.init else rd / "sft", device, "rm init")
        model, tokenizer = ck.model, ck.tokenizer
    rng = random.Random(cfg.seed)
    if pairs is None:
        pairs, val_pairs = split_pairs(load_pairs(cfg, rng), cfg.val_frac, rng)
    if not pairs:
        raise CfError(f"rm data {cfg.data!r}: no preference pairs")
    rm = RewardModel(model).to(device)
    opt = build_optimizer(rm, cfg)
    L = min(cfg.max_tokens, model.config.seq_len)
    enc = [(encode_reply(tokenizer, p.prompt, p.chosen, L), encode_reply(tokenizer, p.prompt, p.rejected, L))
           for p in pairs]
    steps = max(1, math.ceil(cfg.epochs * len(pairs) / cfg.batch_size))
    history, t0 = [], time.perf_counter()
    order: list[int] = []
    rm.train()
    for step in range(steps):
        if cfg.budget_s and time.perf_counter() - t0 > cfg.budget_s:
            break
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(enc)), len(enc))
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        ids, lens = pad_rows([enc[i][0] for i in idx] + [enc[i][1] for i in idx], tokenizer.bos_id)
        r = rm(ids.to(device), lens.to(device))
        rc, rr = r[:len(idx)], r[len(idx):]
        loss = bt_loss(rc, rr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        history.append({"step": step, "loss": float(loss.detach()), "acc": float((rc > rr).float().mean())})
        if step % 20 == 0 or step == steps - 1:
            print0(f"rm step {step:4d}/{steps} loss {history[-1]['loss']:.4f} batch acc {history[-1]['acc']:.2f}")
    rm.eval()
    metrics = {"train_pairs": len(pairs), "val_pairs": len(val_pairs or []), "steps": len(history),
               "seconds": time.perf_counter() - t0, "final_loss": history[-1]["loss"] if history else float("nan"),
               "val_acc": pair_accuracy(rm, tokenizer, val_pairs or [], device)}
    if val_pairs and any("flipped" in p.meta for p in val_pairs):
        metrics["val_acc_vs_rule"] = pair_accuracy(rm, tokenizer, val_pairs, device, against_truth=True)
        metrics["annotator_agreement"] = sum(not p.meta["flipped"] for p in val_pairs) / len(val_pairs)
    print0(f"rm: held-out pair accuracy {metrics['val_acc']:.3f} on {metrics['val_pairs']} pairs")
    rm.tokenizer = tokenizer
    path = None
    if save:
        from chatforge.checkpoint import save_checkpoint
        head = {"weight": rm.head.weight.detach().cpu().tolist(), "bias": float(rm.head.bias.detach())}
        out = Path(cfg.out) if cfg.out else rd / "rm"
        path = Path(save_checkpoint(out, len(history), rm.gpt, tokenizer, {**asdict(cfg), "reward_head": head},
                                    metrics={**metrics, "history": history}))
        print0(f"rm: saved {path}")
    return rm, metrics, path


def cli(argv: list[str]) -> None:
    p = make_parser("chatforge rm", "train a reward model (Bradley-Terry) on preference pairs")
    add_config_args(p, RMConfig)
    args = p.parse_args(argv)
    cfg = config_from_args(RMConfig, args)
    print_config(cfg, "rm config")
    with Timer("rm"):
        train_rm(cfg)
