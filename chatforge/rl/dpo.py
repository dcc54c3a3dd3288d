"""Direct preference optimization: RLHF's objective without a reward model or sampling.

A short tutorial
----------------
RLHF maximizes E[r(x, y)] - beta * KL(pi || pi_ref). Its optimum has a closed form,
pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x), so the reward can be written with the policy:
r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) + beta * log Z(x). Put that into the Bradley-Terry
likelihood of a preference pair and Z(x) cancels (Rafailov et al. 2023, eq. 7):

    L_DPO = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )

so one supervised-looking loss on the same pairs a reward model would use trains the policy
directly. beta * (log pi - log ref) is the "implicit reward"; its margin on held-out pairs is the
DPO analogue of the reward model's pair accuracy. The gradient raises the chosen reply's
log-probability and lowers the rejected one's, weighted by how wrong the implicit reward is.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from chatforge.common import Timer, add_config_args, config_from_args, make_parser, print0, print_config
from chatforge.model.batching import collate
from chatforge.model.checkpoint import save_checkpoint
from chatforge.model.optim import OptimConfig, build_optimizer
from chatforge.rl.preferences import PrefPair, PreferenceConfig, reply_conversation, setup_pairwise, train_pairwise
from chatforge.rl.rollout import sequence_logprobs


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,) sequence log-probs -> (mean loss, implicit chosen rewards (B,), implicit rejected rewards (B,))."""
    chosen_r = beta * (pi_chosen - ref_chosen)
    rejected_r = beta * (pi_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_r - rejected_r).mean()
    return loss, chosen_r.detach(), rejected_r.detach()


def reply_row(tokenizer, prompt: list[str], reply: str, max_tokens: int) -> tuple[list[int], list[int]]:
    """(ids, mask) for log pi(reply | prompt): only the final reply's tokens are scored (earlier
    assistant turns are context, like the prompt). Truncated from the left so the reply is kept."""
    ids, mask = tokenizer.render_conversation(reply_conversation(prompt, reply))
    start = max(i for i, t in enumerate(ids) if t == tokenizer.special("<|assistant_start|>"))
    mask = [m if i > start else 0 for i, m in enumerate(mask)]
    return ids[-(max_tokens + 1):], mask[-(max_tokens + 1):]


def batch_logps(model, rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str) -> torch.Tensor:
    """(B,) summed reply log-probs of (ids, mask) rows."""
    ids, tgt = collate(rows, pad_id)
    return sequence_logprobs(model, ids.to(device), tgt.to(device))


@dataclass
class DPOConfig(PreferenceConfig):
    beta: float = field(default=0.1, metadata={"help": "DPO beta (strength of the implicit KL)"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=5e-5))


@torch.no_grad()
def implicit_accuracy(policy, ref, tokenizer, pairs: Sequence[PrefPair], beta: float, L: int, device: str,
                      against_truth: bool = False) -> float:
    """Held-out fraction of pairs whose implicit reward margin has the label's sign."""
    if not pairs:
        return float("nan")
    ok = 0
    for i in range(0, len(pairs), 32):
        chunk = pairs[i:i + 32]
        rows = [reply_row(tokenizer, p.prompt, p.chosen, L) for p in chunk] + \
               [reply_row(tokenizer, p.prompt, p.rejected, L) for p in chunk]
        pi, rf = batch_logps(policy, rows, tokenizer.bos_id, device), batch_logps(ref, rows, tokenizer.bos_id, device)
        n = len(chunk)
        _, cr, rr = dpo_loss(pi[:n], pi[n:], rf[:n], rf[n:], beta)
        for m, p in zip((cr - rr).tolist(), chunk):
            ok += m * (-1.0 if against_truth and p.meta.get("flipped") else 1.0) > 0
    return ok / len(pairs)


def train_dpo(cfg: DPOConfig, policy=None, tokenizer=None, pairs: list[PrefPair] | None = None,
              val_pairs: list[PrefPair] | None = None, save: bool = True) -> tuple[object, dict, Path | None]:
    """DPO from the SFT model (which is also the frozen reference). Returns (policy, metrics, path)."""
    policy, tokenizer, pairs, val_pairs, rng, device, rd = setup_pairwise(cfg, policy, tokenizer, pairs, val_pairs, "dpo")
    policy.to(device)
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    L = min(cfg.max_tokens, policy.config.seq_len)
    rows = [(reply_row(tokenizer, p.prompt, p.chosen, L), reply_row(tokenizer, p.prompt, p.rejected, L)) for p in pairs]

    def pair_loss(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = [rows[i][0] for i in idx] + [rows[i][1] for i in idx]  # chosen rows first, then rejected
        n = len(idx)
        with torch.no_grad():
            rf = batch_logps(ref, batch, tokenizer.bos_id, device)
        pi = batch_logps(policy, batch, tokenizer.bos_id, device)
        loss, cr, rr = dpo_loss(pi[:n], pi[n:], rf[:n], rf[n:], cfg.beta)
        return loss, {"margin": float((cr - rr).mean()), "acc": float((cr > rr).float().mean())}

    t0 = time.perf_counter()
    policy.train()
    history = train_pairwise(cfg, list(policy.parameters()), build_optimizer(policy, cfg.optim), len(rows), rng,
                             pair_loss, "dpo")
    policy.eval()
    metrics = {"train_pairs": len(pairs), "steps": len(history), "seconds": time.perf_counter() - t0,
               "final_loss": history[-1]["loss"] if history else float("nan"),
               "val_acc": implicit_accuracy(policy, ref, tokenizer, val_pairs or [], cfg.beta, L, device)}
    print0(f"dpo: held-out implicit-reward pair accuracy {metrics['val_acc']:.3f}")
    path = None
    if save:
        out = Path(cfg.out) if cfg.out else rd / "dpo"
        path = Path(save_checkpoint(out, len(history), policy, tokenizer, asdict(cfg),
                                    metrics={**metrics, "history": history}))
        print0(f"dpo: saved {path}")
    return policy, metrics, path


def cli(argv: list[str]) -> None:
    p = make_parser("chatforge dpo", "direct preference optimization (Rafailov et al. 2023) on preference pairs")
    add_config_args(p, DPOConfig)
    args = p.parse_args(argv)
    cfg = config_from_args(DPOConfig, args)
    print_config(cfg, "dpo config")
    with Timer("dpo"):
        train_dpo(cfg)
