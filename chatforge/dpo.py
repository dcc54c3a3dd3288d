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
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from chatforge.common import (CfError, Timer, add_config_args, config_from_args, get_device, make_parser,
                              print0, print_config, run_dir, seed_all)
from chatforge.reward import PrefPair, load_pairs, split_pairs


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,) sequence log-probs -> (mean loss, implicit chosen rewards (B,), implicit rejected rewards (B,))."""
    chosen_r = beta * (pi_chosen - ref_chosen)
    rejected_r = beta * (pi_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_r - rejected_r).mean()
    return loss, chosen_r.detach(), rejected_r.detach()


def reply_row(tokenizer, prompt: list[str], reply: str, max_tokens: int) -> tuple[list[int], list[int]]:
    """(inputs, targets) for log pi(reply | prompt): targets are the reply tokens (mask 1), -1 elsewhere.
    Truncated from the left so the reply (at the end) is kept."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(prompt)]
    # only the final reply is scored: earlier assistant turns are context, like the prompt
    ids, mask = tokenizer.render_conversation({"messages": msgs + [{"role": "assistant", "content": reply}]})
    start = max(i for i, t in enumerate(ids) if t == tokenizer.special("<|assistant_start|>"))
    tgt = [t if (m and i > start) else -1 for i, (t, m) in enumerate(zip(ids, mask))]
    ids, tgt = ids[-(max_tokens + 1):], tgt[-(max_tokens + 1):]
    return ids[:-1], tgt[1:]


def batch_logps(model, rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str) -> torch.Tensor:
    """(B,) summed reply log-probs of (inputs, targets) rows."""
    from chatforge.rl import sequence_logprobs
    T = max(len(x) for x, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        tgt[i, :len(y)] = torch.tensor(y)
    return sequence_logprobs(model, ids.to(device), tgt.to(device))


@dataclass
class DPOConfig:
    run: str = field(default="default", metadata={"help": "run name (runs/<run>) or path"})
    init: str = field(default="", metadata={"help": "policy (and reference) checkpoint (default runs/<run>/sft)"})
    out: str = field(default="", metadata={"help": "output stage dir (default runs/<run>/dpo)"})
    data: str = field(default="synthetic", metadata={"help": "synthetic | hh | path/to/prefs.jsonl"})
    n_pairs: int = field(default=2000, metadata={"help": "pairs to use"})
    val_frac: float = field(default=0.1, metadata={"help": "held-out fraction of pairs"})
    annotator_beta: float = field(default=2.0, metadata={"help": "synthetic annotators' Bradley-Terry beta"})
    beta: float = field(default=0.1, metadata={"help": "DPO beta (strength of the implicit KL)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | muon"})
    lr: float = field(default=5e-5, metadata={"help": "learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    max_tokens: int = field(default=256, metadata={"help": "truncate conversations (from the left)"})
    budget_s: float = field(default=0.0, metadata={"help": "stop after this many seconds (0 = off)"})
    seed: int = field(default=1337, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | mps | auto"})


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
    from chatforge.optim import build_optimizer
    seed_all(cfg.seed)
    device = get_device(cfg.device)
    rd = run_dir(cfg.run)
    if policy is None:
        from chatforge.rl import load_ckpt
        ck = load_ckpt(Path(cfg.init) if cfg.init else rd / "sft", device, "dpo init")
        policy, tokenizer = ck.model, ck.tokenizer
    rng = random.Random(cfg.seed)
    if pairs is None:
        pairs, val_pairs = split_pairs(load_pairs(cfg, rng), cfg.val_frac, rng)  # type: ignore[arg-type]
    if not pairs:
        raise CfError(f"dpo data {cfg.data!r}: no preference pairs")
    policy.to(device)
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    L = min(cfg.max_tokens, policy.config.seq_len)
    rows = [(reply_row(tokenizer, p.prompt, p.chosen, L), reply_row(tokenizer, p.prompt, p.rejected, L)) for p in pairs]
    opt = build_optimizer(policy, cfg)
    steps = max(1, math.ceil(cfg.epochs * len(rows) / cfg.batch_size))
    history, order, t0 = [], [], time.perf_counter()
    policy.train()
    for step in range(steps):
        if cfg.budget_s and time.perf_counter() - t0 > cfg.budget_s:
            break
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(rows)), len(rows))
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        batch = [rows[i][0] for i in idx] + [rows[i][1] for i in idx]
        n = len(idx)
        with torch.no_grad():
            rf = batch_logps(ref, batch, tokenizer.bos_id, device)
        pi = batch_logps(policy, batch, tokenizer.bos_id, device)
        loss, cr, rr = dpo_loss(pi[:n], pi[n:], rf[:n], rf[n:], cfg.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        history.append({"step": step, "loss": float(loss.detach()), "margin": float((cr - rr).mean()),
                        "acc": float((cr > rr).float().mean())})
        if step % 20 == 0 or step == steps - 1:
            print0(f"dpo step {step:4d}/{steps} loss {history[-1]['loss']:.4f} margin {history[-1]['margin']:.3f}")
    policy.eval()
    metrics = {"train_pairs": len(pairs), "steps": len(history), "seconds": time.perf_counter() - t0,
               "final_loss": history[-1]["loss"] if history else float("nan"),
               "val_acc": implicit_accuracy(policy, ref, tokenizer, val_pairs or [], cfg.beta, L, device)}
    print0(f"dpo: held-out implicit-reward pair accuracy {metrics['val_acc']:.3f}")
    path = None
    if save:
        from chatforge.checkpoint import save_checkpoint
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
