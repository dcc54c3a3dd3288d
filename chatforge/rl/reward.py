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

The pairs and their sources are in ``preferences.py``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from chatforge.common import CfError, Timer, add_config_args, config_from_args, make_parser, print0, print_config
from chatforge.model.batching import pad_right
from chatforge.model.checkpoint import load_model, save_checkpoint
from chatforge.model.optim import build_optimizer
from chatforge.rl.preferences import (PrefPair, PreferenceConfig, reply_conversation, setup_pairwise,
                                      train_pairwise)


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
    ids, _ = tokenizer.render_conversation(reply_conversation(prompt, reply))
    return ids[-max_tokens:]


def pad_rows(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and (B,) lengths (the RM reads the hidden state at length - 1)."""
    return pad_right(rows, pad_id), torch.tensor([len(r) for r in rows], dtype=torch.long)


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
    ck = load_model(path, "cpu", what="reward model (train one with `chatforge rm`)")
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
class RMConfig(PreferenceConfig):
    """Reward-model training: the shared preference config (its defaults are the RM's)."""


def train_rm(cfg: RMConfig, model=None, tokenizer=None, pairs: list[PrefPair] | None = None,
             val_pairs: list[PrefPair] | None = None, save: bool = True) -> tuple[RewardModel, dict, Path | None]:
    """Fit a reward model with the Bradley-Terry loss; returns (rm, metrics, checkpoint path or None)."""
    model, tokenizer, pairs, val_pairs, rng, device, rd = setup_pairwise(cfg, model, tokenizer, pairs, val_pairs, "rm")
    rm = RewardModel(model).to(device)
    L = min(cfg.max_tokens, model.config.seq_len)
    enc = [(encode_reply(tokenizer, p.prompt, p.chosen, L), encode_reply(tokenizer, p.prompt, p.rejected, L))
           for p in pairs]

    def pair_loss(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        ids, lens = pad_rows([enc[i][0] for i in idx] + [enc[i][1] for i in idx], tokenizer.bos_id)
        r = rm(ids.to(device), lens.to(device))  # (2B,): chosen rows first, then rejected
        rc, rr = r[:len(idx)], r[len(idx):]
        return bt_loss(rc, rr), {"acc": float((rc > rr).float().mean())}

    t0 = time.perf_counter()
    rm.train()
    history = train_pairwise(cfg, list(rm.parameters()), build_optimizer(rm, cfg.optim), len(enc), rng,
                             pair_loss, "rm")
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
