"""Optimizers (AdamW, Muon), their one config (``OptimConfig``) and learning-rate schedules.

A short tutorial
----------------
**AdamW** (Loshchilov & Hutter 2019) keeps two running averages per parameter: the gradient
(momentum, ``beta1``) and its elementwise square (``beta2``). The step is ``m / (sqrt(v) + eps)``:
each coordinate is normalised by its own recent magnitude, so rare-but-important coordinates
(embedding rows of rare tokens) move as fast as common ones. Weight decay is *decoupled*: the
weights shrink by ``lr * wd`` directly instead of through the gradient. We use PyTorch's
implementation (fused kernels on CUDA and CPU) -- there is exactly one AdamW in chatforge, this one.

**Muon** (Keller Jordan, 2024, "Muon: an optimizer for hidden layers in neural networks";
"MomentUm Orthogonalized by Newton-schulz") treats a 2-D weight as a linear map, not as a bag of
numbers. It takes SGD momentum (0.95, Nesterov) and replaces the update ``G`` by the nearest
semi-orthogonal matrix ``U V^T`` (where ``G = U S V^T``): every direction of the map is changed by
the same amount, so the few dominant directions of the gradient stop drowning out the rest.
Computing an SVD every step is too slow; instead a few iterations of the odd polynomial

    X <- a X + b (X X^T) X + c (X X^T)^2 X,     (a, b, c) = (3.4445, -4.7750, 2.0315)

push every singular value of a normalised ``X`` towards 1. These coefficients are tuned to make
small singular values grow as fast as possible; the price is that after 5 steps the singular
values land in a band around 1 (roughly 0.7 .. 1.2) rather than exactly on 1, which works just as
well in practice. The update is scaled by ``sqrt(max(1, rows/cols))`` so tall and wide matrices
move at a comparable rate. Muon is only for hidden 2-D matrices: embeddings, the output head and
scalars (norm gains, biases) stay with AdamW.

**Schedules** are pure functions ``lr_at(step, total, cfg) -> multiplier`` applied to every
group's base learning rate: linear warmup, then cosine decay to ``final_lr_frac``; or WSD
(warmup-stable-decay, Hu et al. 2024 "MiniCPM"): flat after warmup and a linear decay to
``final_lr_frac`` over the last ``decay_frac`` of training, which lets you stop or extend a run late.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn as nn
from torch.distributed.tensor import distribute_tensor

from chatforge.common import CfError, cpu_has_bf16





@dataclass
class OptimConfig:
    """The optimizer and schedule of every training stage (pretrain, SFT, RL, reward model, DPO).

    Stages embed it as ``optim: OptimConfig`` with their own defaults; its fields are flat CLI flags
    (``--lr``, ``--schedule``), spelled the same in every stage.
    """
    optimizer: str = field(default="adamw", metadata={"help": "muon (hidden matrices) + adamw, or adamw only",
                                                       "choices": ["adamw", "muon"]})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (all params with adamw; "
                                              "embeddings/head/scalars with muon)"})
    muon_lr: float = field(default=0.02, metadata={"help": "Muon learning rate for hidden matrices"})
    embed_lr: float = field(default=0.0, metadata={"help": "AdamW lr of the embeddings (0 = lr)"})
    head_lr: float = field(default=0.0, metadata={"help": "AdamW lr of lm_head (0 = lr)"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (matrices only)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    schedule: str = field(default="constant", metadata={"help": "lr schedule",
                                                        "choices": ["cosine", "wsd", "constant"]})
    warmup: int = field(default=0, metadata={"help": "linear warmup steps"})
    decay_frac: float = field(default=0.2, metadata={"help": "WSD: fraction of steps spent decaying"})
    final_lr_frac: float = field(default=0.0, metadata={"help": "lr multiplier at the last step"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global grad norm (0 = off)"})

NS_COEFFS = (3.4445, -4.7750, 2.0315)


# ----------------------------------------------------------------------------- Muon

def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalise ``G`` (..., m, n): returns ~``U V^T`` of its SVD.

    The reference: one matrix (or any batch) at a time, the iteration written as in the paper.
    Muon uses ``newton_schulz_batched``, which must agree with this (tests/test_optim.py).
    """
    a, b, c = NS_COEFFS
    X = G.to(dtype or ns_dtype(G))
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # iterate on the smaller Gram matrix X X^T
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


def ns_dtype(G: torch.Tensor) -> torch.dtype:
    """bfloat16 on CUDA and on CPUs with native bf16 (the iteration is robust to it: Keller Jordan's
    Muon does the same), float32 elsewhere: emulated bf16 matmuls on an AVX2-only CPU are several
    times slower than fp32 (dev/LOG.md, "Muon at its cost")."""
    return torch.bfloat16 if G.is_cuda or (G.device.type == "cpu" and cpu_has_bf16()) else torch.float32


def newton_schulz_batched(mats: list[torch.Tensor], steps: int = 5, eps: float = 1e-7,
                          dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """``newton_schulz`` of every matrix in ``mats``, with one batched matmul per shape group.

    Tall matrices are transposed to wide before grouping, so (704, 256) and (256, 704) share one
    stack (k, 256, 704). Each iteration is three ``baddbmm`` calls, which fold the polynomial's
    scalings and sums into the matmuls instead of separate passes over memory:
    ``B = b A + c A A`` and ``X = a X + B X``. The matrices of a d4-d8 model are small (256-512
    wide), so a batch keeps the matmul kernels busy where a Python loop pays per-call overhead.
    """
    a, b, c = NS_COEFFS
    groups: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(mats):
        groups.setdefault((min(g.shape), max(g.shape)), []).append(i)
    out: list[torch.Tensor] = [mats[0]] * len(mats)
    for idx in groups.values():
        wide = [mats[i].mT if mats[i].size(0) > mats[i].size(1) else mats[i] for i in idx]
        X = torch.stack(wide).to(dtype or ns_dtype(mats[idx[0]]))          # (k, m, n), m <= n
        X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
        for _ in range(steps):
            A = torch.bmm(X, X.mT)                                          # (k, m, m)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)                     # b A + c A A
            X = torch.baddbmm(X, B, X, beta=a)                              # a X + B X
        for j, i in enumerate(idx):
            x = X[j].to(mats[i].dtype)
            out[i] = x.mT if mats[i].size(0) > mats[i].size(1) else x
    return out


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters: Nesterov momentum, then Newton-Schulz orthogonalisation.

    Works on full gradients (under DDP they are already all-reduced). Under FSDP2 the parameters
    are DTensors: the gradient is gathered, orthogonalised, and each rank applies its shard.
    """
    def __init__(self, params: Iterable[Any], lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, weight_decay: float = 0.0, ns_steps: int = 5, batched: bool = True,
                 dtype: torch.dtype | None = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, ns_steps=ns_steps))
        self.batched = batched   # False: the per-matrix reference path (and the FSDP2 path)
        self.dtype = dtype       # of the Newton-Schulz iteration; None = ns_dtype (the hardware's)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise CfError(f"Muon: expected 2-D parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            mom, grads = group["momentum"], [p.grad for p in params]
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad)) for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - mom)                  # buf = mom*buf + (1-mom)*g
            updates = torch._foreach_lerp(grads, bufs, mom) if group["nesterov"] else bufs
            if self.batched and not any(hasattr(g, "full_tensor") for g in updates):
                orth = newton_schulz_batched(updates, steps=group["ns_steps"], dtype=self.dtype)
            else:
                orth = [_orthogonalize_one(g, group["ns_steps"], self.dtype) for g in updates]
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            for p, u in zip(params, orth):
                # tall and wide matrices move at a comparable rate
                p.add_(u, alpha=-group["lr"] * max(1.0, p.size(-2) / p.size(-1)) ** 0.5)
        return loss


def _orthogonalize_one(g: torch.Tensor, steps: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reference path, one matrix at a time. Under FSDP2 ``g`` is a DTensor shard: gather the full
    matrix, orthogonalise it, and hand back this rank's shard."""
    full = g.full_tensor() if hasattr(g, "full_tensor") else g
    update = newton_schulz(full, steps=steps, dtype=dtype)
    if full is not g:
        update = distribute_tensor(update, g.device_mesh, g.placements)
    return update


# ----------------------------------------------------------------------------- grouping

def split_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Group parameters by role: ``matrix`` (hidden 2-D), ``embedding``, ``lm_head``, ``scalar``.

    Uses ``model.param_groups()`` when the model provides it (gpt.py knows its own roles), else a
    name heuristic (for other modules, e.g. the bench's reference model). Tied embedding/head
    weights appear once (as ``embedding``).
    """
    if hasattr(model, "param_groups"):
        groups = model.param_groups()
        if isinstance(groups, dict):
            return {k: list(v) for k, v in groups.items()}
    out: dict[str, list[nn.Parameter]] = {"matrix": [], "embedding": [], "lm_head": [], "scalar": []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if "wte" in name or "wpe" in name or "embed" in name:
            out["embedding"].append(p)
        elif "lm_head" in name:
            out["lm_head"].append(p)
        elif p.ndim == 2:
            out["matrix"].append(p)
        else:
            out["scalar"].append(p)
    return out


class Optimizers:
    """A few optimizers stepped together (e.g. Muon for matrices + AdamW for the rest).

    Each param group remembers its ``base_lr``; ``set_lr(multiplier)`` applies the schedule.
    """
    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers
        for opt in optimizers.values():
            for g in opt.param_groups:
                g.setdefault("base_lr", g["lr"])

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def set_lr(self, multiplier: float) -> None:
        for g in self.param_groups:
            g["lr"] = g["base_lr"] * multiplier

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise CfError(f"optimizer state has {sorted(state)}, this run uses {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def build_optimizer(model: nn.Module, cfg: OptimConfig, train_dtype: str = "auto") -> Optimizers:
    """AdamW for everything (``cfg.optimizer == "adamw"``) or Muon for hidden matrices + AdamW.

    ``train_dtype`` is the stage's resolved training dtype: "float32" keeps Muon's Newton-Schulz in
    fp32 too, so ``--dtype float32`` on a bf16 CPU computes what a CPU without bf16 computes.

    Weight decay applies to matrices only (never to embeddings' rare rows, norms or biases).
    A learning rate of 0 in embed_lr/head_lr means "use lr".
    """
    groups = split_params(model)
    lr = cfg.lr
    embed_lr = cfg.embed_lr or lr
    head_lr = cfg.head_lr or lr
    wd = cfg.weight_decay
    betas = (cfg.beta1, cfg.beta2)
    # the fused kernel exists for CUDA and CPU; on a 2-core CPU it is ~1.5x the for-loop AdamW
    fused = next(model.parameters()).device.type in ("cuda", "cpu")
    adam_groups = [dict(params=groups.get("embedding", []), lr=embed_lr, weight_decay=0.0),
                   dict(params=groups.get("lm_head", []), lr=head_lr, weight_decay=0.0),
                   dict(params=groups.get("scalar", []), lr=lr, weight_decay=0.0)]
    if cfg.optimizer == "adamw":
        adam_groups.append(dict(params=groups.get("matrix", []), lr=lr, weight_decay=wd))
        opts: dict[str, torch.optim.Optimizer] = {}
    elif cfg.optimizer == "muon":
        opts = {"muon": Muon(groups["matrix"], lr=cfg.muon_lr, weight_decay=wd,
                             dtype=torch.float32 if train_dtype == "float32" else None)}
    else:
        raise CfError(f"optimizer: expected adamw or muon, got {cfg.optimizer!r}")
    adam_groups = [g for g in adam_groups if g["params"]]
    opts = {"adamw": torch.optim.AdamW(adam_groups, betas=betas, eps=1e-8, fused=fused), **opts}
    return Optimizers(opts)


# ----------------------------------------------------------------------------- schedules

def lr_at(step: float, total: float, cfg: OptimConfig) -> float:
    """Learning-rate multiplier at ``step`` of ``total`` (pure; floats allowed for time budgets).

    Reads ``cfg.schedule`` ("cosine" | "wsd" | "constant"), ``cfg.warmup`` (steps),
    ``cfg.final_lr_frac`` (multiplier reached at the end) and, for WSD, ``cfg.decay_frac``.
    """
    warmup, final = cfg.warmup, cfg.final_lr_frac
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    schedule = cfg.schedule
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1e-9, total - warmup)
        progress = min(1.0, max(0.0, (step - warmup) / span))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_start = total * (1 - cfg.decay_frac)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1e-9, total - decay_start))
        return 1.0 + (final - 1.0) * progress
    raise CfError(f"schedule: expected cosine, wsd or constant, got {schedule!r}")
