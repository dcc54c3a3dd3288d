"""Pretraining: next-token prediction on the token shards of ``runs/<run>/shards``.

One loop serves a laptop CPU and a multi-GPU node:

* world size 1: plain ``python -m chatforge pretrain``; ``torchrun --nproc_per_node N`` starts N
  ranks (NCCL on CUDA, gloo on CPU) and the model is wrapped in DDP, or sharded with FSDP2
  (``torch.distributed.fsdp.fully_shard``) behind ``--fsdp``.
* the global batch is ``total_batch_tokens``; each rank does ``grad_accum`` micro-steps of
  ``device_batch_size x seq_len`` tokens, so the global batch (and the loss curve, up to float
  rounding) does not depend on how many ranks share it.
* every step prints one line (loss, lr multiplier, step time, tok/s, MFU on known GPUs, ETA);
  every ``eval_every`` steps the validation loss and bits-per-byte are measured; checkpoints go to
  ``runs/<run>/base/step_XXXXXX`` and ``--resume`` continues bit-for-bit where the last one stopped.

Bits per byte (bpb) make runs with different tokenizers comparable: the summed loss (nats) of the
validation targets divided by ``ln 2`` times the UTF-8 bytes those targets stand for. Special
tokens (``<|bos|>``) stand for no bytes; as in nanochat their losses are left out of the sum too.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import distribute_tensor, DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from chatforge.common import (add_config_args, autocast_ctx, banner, CfError, config_from_args, get_device,
                              is_interactive, make_parser, print0, print_config, run_dir, save_figure,
                              seed_all, train_dtype, write_meta)
from chatforge.data.shards import read_shards_json, TokenLoader
from chatforge.model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from chatforge.model.engine import Engine
from chatforge.model.gpt import config_from_depth, GPT, PRESETS
from chatforge.model.optim import OptimConfig, build_optimizer, lr_at
from chatforge.tokenizer.tokenizer import SPECIAL_TOKENS, Tokenizer




# Dense bf16 peak FLOP/s per GPU (vendor datasheets, no sparsity), for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}  # first match wins

SAMPLE_PROMPTS = ["The", "Once upon a time", "It was"]


@dataclass
class PretrainConfig:
    run: str = field(default="default", metadata={"help": "run name (runs/<run>) or a path"})
    depth: int = field(default=4, metadata={"help": "model depth; width = 64 * depth"})
    flavour: str = field(default="llama", metadata={"help": "model family for --depth",
                                                     "choices": ["llama", "gpt2"]})
    head_dim: int = field(default=64, metadata={"help": "attention head width for --depth (n_head = 64 * depth / head_dim)"})
    preset: str = field(default="", metadata={"help": "a gpt.PRESETS name; overrides depth/flavour"})
    seq_len: int = field(default=256, metadata={"help": "context length T"})
    device_batch_size: int = field(default=8, metadata={"help": "sequences per micro-step per rank (B)"})
    total_batch_tokens: int = field(default=0, metadata={
        "help": "tokens per optimizer step, all ranks; 0 = B*T*world_size (no gradient accumulation)"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0 = from token_budget"})
    token_budget: int = field(default=0, metadata={"help": "training tokens; 0 = data_param_ratio * params"})
    data_param_ratio: float = field(default=20.0, metadata={"help": "tokens per parameter (Chinchilla: 20)"})
    time_budget: float = field(default=0.0, metadata={"help": "stop after this many seconds (0 = none); "
                                                      "the schedule is fitted to it after a few steps"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="muon", lr=3e-3, muon_lr=0.02, schedule="wsd", warmup=10, decay_frac=0.3))
    dtype: str = field(default="auto", metadata={"help": "auto = bf16 autocast on CUDA and on CPUs with "
                                                         "native bf16 (AMX), else fp32",
                                                 "choices": ["auto", "float32", "bfloat16"]})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})
    compile: bool | None = field(default=None, metadata={
        "help": "torch.compile the model: --compile always, --no-compile never; unset = when the run is long "
                "enough to pay for compiling (compile_pays, decided after the first timed step)"})
    eval_every: int = field(default=100, metadata={"help": "validate every N steps (0 = only at the end)"})
    eval_tokens: int = field(default=65536, metadata={"help": "validation tokens per evaluation"})
    sample_every: int = field(default=0, metadata={"help": "print samples every N steps (0 = at the end)"})
    sample_tokens: int = field(default=32, metadata={"help": "tokens per sample"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = at the end)"})
    keep_last: int = field(default=2, metadata={"help": "keep only the newest N checkpoints (0 = all)"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in base/"})
    seed: int = field(default=1337, metadata={"help": "seed for init and data order"})
    fsdp: bool = field(default=False, metadata={"help": "shard params/grads/optimizer state (FSDP2)"})
    log_every: int = field(default=1, metadata={"help": "print a log line every N steps"})


# ----------------------------------------------------------------------------- torch.compile

# (seconds to compile a training step, eager step time / compiled step time) per device type.
# cpu: measured on a 2-core AVX2 EPYC, fp32, d4 B=16 T=256 (issue 17, dev/LOG.md "Speed on the CPU");
# cuda: NOT measured in this repo (no GPU here): typical figures for a small GPT, to be re-measured.
COMPILE_COST = {"cpu": (46.0, 1.19), "cuda": (60.0, 1.3)}


def compile_pays(want: bool | None, device: str, seconds_left: float) -> bool:
    """Whether to ``torch.compile``: ``want`` True/False forces it; None (auto) compiles when the eager
    time still to run shrinks by more than compiling costs, ``seconds_left * (1 - 1/speedup) > cost``
    (CPU d4: from ~290 s of training on), and never on a CPU without a C++ compiler (inductor's)."""
    if want is not None:
        return want
    dev = device.split(":")[0]
    if dev not in COMPILE_COST or (dev == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None):
        return False
    cost, speedup = COMPILE_COST[dev]
    return seconds_left * (1 - 1 / speedup) > cost


# ----------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    initialized: bool = False   # by us (we tear it down)


def setup_distributed(device: str) -> Dist:
    """Init the process group only when launched with WORLD_SIZE > 1 (torchrun sets it)."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    initialized = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                device_id=torch.device(device) if device.startswith("cuda") else None)
        initialized = True
    return Dist(rank, local, ws, device, initialized)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


# ----------------------------------------------------------------------------- pieces

def build_model_config(cfg: PretrainConfig, vocab_size: int):
    if cfg.preset:
        if cfg.preset not in PRESETS:
            raise CfError(f"preset: expected one of {sorted(PRESETS)}, got {cfg.preset!r}")
        return PRESETS[cfg.preset](vocab_size, cfg.seq_len)
    return config_from_depth(cfg.depth, vocab_size, cfg.seq_len, cfg.flavour, cfg.head_dim)


def token_bytes(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) int64: UTF-8 bytes each token stands for; specials (and padding) 0."""
    specials = {tokenizer.special(s) for s in SPECIAL_TOKENS}
    out = torch.zeros(vocab_size, dtype=torch.int64)
    for i in range(tokenizer.n_vocab):
        if i not in specials:
            out[i] = len(tokenizer.decode_bytes([i]))
    return out


@torch.no_grad()
def evaluate_bpb(model: nn.Module, loader: TokenLoader, steps: int, tbytes: torch.Tensor, device: str,
                 dtype: str, d: Dist) -> tuple[float, float]:
    """(mean val loss in nats over all targets, bits per byte) over ``steps`` batches per rank."""
    acc = torch.float32 if device.startswith("mps") else torch.float64  # MPS has no float64
    sums = torch.zeros(4, dtype=acc, device=device)  # loss_all, n_all, loss_bytes, n_bytes
    tbytes = tbytes.to(device)
    for _ in range(steps):
        x, y = loader.next()
        x, y = x.to(device), y.to(device)
        with autocast_ctx(device, dtype):
            loss = model(x, y, reduction="none").to(acc)     # (B, T) nats per target
        nb = tbytes[y]                                          # (B, T) bytes per target
        sums += torch.stack([loss.sum(), torch.tensor(loss.numel(), device=device, dtype=acc),
                             (loss * (nb > 0)).sum(), nb.sum().to(acc)])
    all_reduce_sum(sums, d)
    val_loss = (sums[0] / sums[1]).item()
    bpb = (sums[2] / (math.log(2) * sums[3])).item() if sums[3] > 0 else float("nan")
    return val_loss, bpb


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


def fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def plot_losses(history: list, val_history: list, path: Path) -> None:
    matplotlib.use("Agg")
    fig, ax = plt.subplots(figsize=(7, 4))
    if history:
        ax.plot([h[0] for h in history], [h[1] for h in history], lw=0.8, label="train loss")
    if val_history:
        ax.plot([v[0] for v in val_history], [v[1] for v in val_history], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=110)


def draw_samples(model: nn.Module, tokenizer: Any, max_new_tokens: int) -> list[str] | None:
    """Greedy continuations of a few prompts (the engine of ``model/engine.py``)."""
    engine = Engine(model, tokenizer)
    out = []
    for prompt in SAMPLE_PROMPTS:
        ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
        n = min(max_new_tokens, model.config.seq_len - len(ids))
        if n <= 0:
            continue
        tokens, _ = engine.generate_batch(ids, num_samples=1, max_new_tokens=n,
                                          temperature=0.0, seed=0, stop_tokens=[tokenizer.bos_id])
        out.append(prompt + tokenizer.decode([t for t in tokens[0] if t != tokenizer.bos_id]))
    return out


def _reshard_optimizer_state(opt: Any) -> None:
    """FSDP2 resume: optimizer state was saved gathered; turn full tensors back into param shards."""
    for o in opt.optimizers.values():
        for p, st in o.state.items():
            if not isinstance(p, DTensor):
                continue
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == p.shape:
                    st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)


# ----------------------------------------------------------------------------- the loop

def pretrain(cfg: PretrainConfig) -> Path:
    """Train a base model; return the final checkpoint folder (``runs/<run>/base/step_XXXXXX``)."""
    rd = run_dir(cfg.run)
    shards_dir, base_dir = rd / "shards", rd / "base"
    for name in ("seq_len", "device_batch_size", "eval_tokens", "log_every"):
        if getattr(cfg, name) < 1:
            raise CfError(f"{name}: expected >= 1, got {getattr(cfg, name)}")
    d = setup_distributed(get_device(cfg.device))
    try:
        return _pretrain(cfg, d, rd, shards_dir, base_dir)
    finally:
        if d.initialized:
            dist.destroy_process_group()


@dataclass
class Run:
    """Everything one pretraining run holds while it trains (passed to each phase below)."""
    cfg: PretrainConfig
    d: Dist
    rd: Path
    shards_dir: Path
    base_dir: Path
    dtype: str
    tokenizer: Any
    model: nn.Module          # what forward() runs: the raw model, or its DDP / compiled wrapper
    raw_model: GPT            # the module whose weights are saved
    optimizer: Any
    loader: TokenLoader
    B: int                    # sequences per micro-step per rank
    T: int                    # sequence length
    total_batch: int          # tokens per optimizer step, all ranks
    grad_accum: int           # micro-steps per optimizer step
    total_steps: int
    tbytes: torch.Tensor      # bytes per token id, for bits per byte
    has_val: bool
    step: int = 0
    history: list = field(default_factory=list)      # [step, train loss]
    val_history: list = field(default_factory=list)  # [step, val loss, val bpb]
    samples: list[str] | None = None
    last_ckpt: Path | None = None
    resumed_from: Path | None = None


def load_tokenizer(rd: Path, shards_dir: Path) -> tuple[Any, dict]:
    """The run's tokenizer and shard metadata, checked against each other."""
    tok_dir = rd / "tokenizer"
    if not tok_dir.exists():
        raise CfError(f"{tok_dir}: tokenizer not found (run `chatforge tok train` first)")
    tokenizer = Tokenizer.load(tok_dir)
    meta = read_shards_json(shards_dir)
    if meta["vocab_size"] != tokenizer.n_vocab:
        raise CfError(f"{shards_dir / 'shards.json'}: vocab_size {meta['vocab_size']} does not match "
                      f"the tokenizer in {tok_dir} ({tokenizer.n_vocab}); re-tokenize the corpus")
    want = meta.get("tokenizer_hash")
    if want and isinstance(getattr(tokenizer, "hash", None), str) and want != tokenizer.hash:
        raise CfError(f"{shards_dir / 'shards.json'}: made with tokenizer {want}, but {tok_dir} is "
                      f"{tokenizer.hash}; re-tokenize the corpus")
    return tokenizer, meta


def batch_geometry(cfg: PretrainConfig, d: Dist) -> tuple[int, int]:
    """(tokens per optimizer step, gradient-accumulation micro-steps): B*T per micro-step per rank."""
    micro_tokens = cfg.device_batch_size * cfg.seq_len * d.world_size
    total_batch = cfg.total_batch_tokens or micro_tokens
    if total_batch % micro_tokens:
        raise CfError(f"total_batch_tokens: {total_batch} is not a multiple of device_batch_size*seq_len*"
                      f"world_size = {cfg.device_batch_size}*{cfg.seq_len}*{d.world_size} = {micro_tokens}")
    return total_batch, total_batch // micro_tokens


def build_model(cfg: PretrainConfig, d: Dist, tokenizer: Any, base_dir: Path):
    """A fresh, initialized GPT (removing an older run's checkpoints), or the checkpoint to resume."""
    seed_all(cfg.seed)
    model_config = build_model_config(cfg, tokenizer.n_vocab)
    if cfg.resume:
        if latest_checkpoint(base_dir) is None:
            raise CfError(f"{base_dir}: --resume given but there is no complete checkpoint to resume from")
        ckpt = load_checkpoint(base_dir, device="cpu", tokenizer=tokenizer)
        if asdict(ckpt.model.config) != asdict(model_config):
            raise CfError(f"{ckpt.path}: its model_config differs from this run's (depth/flavour/preset/"
                          f"seq_len); resume with the same settings")
        return ckpt.model.train(), ckpt
    old = sorted(base_dir.glob("step_*")) if base_dir.exists() else []
    if old:  # a fresh run must not mix with (or later resume from) an older run's checkpoints
        banner(f"{base_dir}: starting fresh, removing {len(old)} old checkpoint(s) (use --resume to continue instead)")
        if d.rank == 0:
            for p in old:
                shutil.rmtree(p, ignore_errors=True)
    model = GPT(model_config)
    model.init_weights()
    return model, None


def plan_steps(cfg: PretrainConfig, n_params: int, total_batch: int, ckpt) -> int:
    """Optimizer steps: --max-steps, else the token budget (default: data_param_ratio x params).
    Only an opt-in time budget without either leaves it open, to be fitted after a few steps."""
    if cfg.max_steps > 0:
        total_steps = cfg.max_steps
    else:
        total_steps = max(1, (cfg.token_budget or int(cfg.data_param_ratio * n_params)) // total_batch)
    if cfg.time_budget > 0 and cfg.max_steps <= 0 and cfg.token_budget <= 0:
        total_steps = 10**9
    if ckpt is not None and cfg.time_budget > 0 and "total_steps" in ckpt.state.get("metrics", {}):
        total_steps = ckpt.state["metrics"]["total_steps"]
    return total_steps


def wrap_parallel(raw_model: GPT, cfg: PretrainConfig, d: Dist) -> nn.Module:
    """FSDP2 (shard params/grads/optimizer state) or DDP across ranks, then torch.compile if forced
    (``--compile``; the auto rule decides later, in ``maybe_compile``)."""
    model: nn.Module = raw_model
    if d.world_size > 1 and cfg.fsdp:
        for block in raw_model.blocks:
            fully_shard(block)
        fully_shard(raw_model)
    elif d.world_size > 1:
        model = DDP(raw_model, device_ids=[d.local_rank] if d.device.startswith("cuda") else None)
    return torch.compile(model) if cfg.compile else model


def restore(run: Run, ckpt) -> None:
    """Continue exactly where a checkpoint stopped: optimizer, data position, history, RNG."""
    run.step = ckpt.step
    optim_state = ckpt.optimizer_state()
    if optim_state is None:
        raise CfError(f"{ckpt.path}: no optim.pt, cannot resume training exactly")
    run.optimizer.load_state_dict(optim_state)
    if run.cfg.fsdp and run.d.world_size > 1:
        _reshard_optimizer_state(run.optimizer)
    if ckpt.state.get("loader"):
        run.loader.load_state_dict(ckpt.state["loader"])
    m = ckpt.state.get("metrics", {})
    run.history, run.val_history = m.get("history", []), m.get("val_history", [])
    set_rng_state(ckpt.state["rng"])
    print0(f"resumed from {ckpt.path} at step {run.step}")
    run.resumed_from = ckpt.path


def setup(cfg: PretrainConfig, d: Dist, rd: Path, shards_dir: Path, base_dir: Path) -> Run:
    """Tokenizer, shards, model, parallel wrappers, optimizer and data loader of a run."""
    if d.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tokenizer, meta = load_tokenizer(rd, shards_dir)
    total_batch, grad_accum = batch_geometry(cfg, d)
    raw_model, ckpt = build_model(cfg, d, tokenizer, base_dir)
    raw_model.to(d.device)
    B, T = cfg.device_batch_size, cfg.seq_len
    dtype = train_dtype(d.device, cfg.dtype)
    run = Run(cfg=cfg, d=d, rd=rd, shards_dir=shards_dir, base_dir=base_dir, dtype=dtype,
              tokenizer=tokenizer, model=wrap_parallel(raw_model, cfg, d), raw_model=raw_model,
              optimizer=build_optimizer(raw_model, cfg.optim, dtype),
              loader=TokenLoader(shards_dir, "train", B, T, d.rank, d.world_size, seed=cfg.seed), B=B, T=T,
              total_batch=total_batch, grad_accum=grad_accum,
              total_steps=plan_steps(cfg, raw_model.num_params(), total_batch, ckpt),
              tbytes=token_bytes(tokenizer, raw_model.config.vocab_size),
              has_val=sum(s["tokens"] for s in meta["splits"].get("val", [])) >= B * T + 1)
    if ckpt is not None:
        restore(run, ckpt)
        del ckpt
    print0(f"model: {raw_model.num_params():,} params, {raw_model.flops_per_token() / 1e6:.1f} MFLOP/token, "
           f"{run.dtype}, config {asdict(raw_model.config)}")
    print0(f"batch: {total_batch:,} tokens/step = {B} x {T} x {d.world_size} ranks x {grad_accum} accum; "
           f"{run.total_steps if run.total_steps < 10**9 else '?'} steps; device {d.device}, world size {d.world_size}")
    return run


def forward_backward(run: Run) -> torch.Tensor:
    """One optimizer step's gradients: ``grad_accum`` micro-batches, gradients synchronized across ranks
    on the last one only. Returns this rank's summed (unscaled) loss."""
    d, cfg = run.d, run.cfg
    loss_sum = torch.zeros((), device=d.device)
    for micro in range(run.grad_accum):
        x, y = run.loader.next()                               # (B, T), (B, T)
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        last = micro == run.grad_accum - 1
        sync_ctx = contextlib.nullcontext()
        if d.world_size > 1 and not cfg.fsdp and not last:
            sync_ctx = run.model.no_sync()
        elif d.world_size > 1 and cfg.fsdp:
            run.raw_model.set_requires_gradient_sync(last)
        with sync_ctx:
            with autocast_ctx(d.device, run.dtype):
                loss = run.model(x, y)
            (loss / run.grad_accum).backward()
        loss_sum += loss.detach()
    return loss_sum


def train_step(run: Run) -> float:
    """Schedule, gradients, clipping, optimizer step; returns the mean loss over ranks and micro-steps."""
    run.optimizer.set_lr(lr_at(run.step, run.total_steps, run.cfg.optim))
    loss_sum = forward_backward(run)
    if run.cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), run.cfg.optim.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    loss_val = all_reduce_sum(loss_sum, run.d).item() / (run.grad_accum * run.d.world_size)
    run.step += 1
    if not math.isfinite(loss_val):
        raise CfError(f"step {run.step}: loss is {loss_val}; training stopped. Last good checkpoint: "
                      f"{run.last_ckpt or 'none'} (try a lower --lr or --muon-lr)")
    run.history.append([run.step, loss_val])
    return loss_val


def validate(run: Run, bar: bool) -> None:
    """Validation loss and bits per byte on the held-out shards."""
    if not run.has_val:
        return
    d = run.d
    vl = TokenLoader(run.shards_dir, "val", run.B, run.T, d.rank, d.world_size)
    micro_tokens = run.B * run.T * d.world_size
    steps = max(1, min(run.cfg.eval_tokens // micro_tokens, vl.n_windows // d.world_size or 1))
    run.model.eval()
    val_loss, bpb = evaluate_bpb(run.model, vl, steps, run.tbytes, d.device, run.dtype, d)
    run.model.train()
    run.val_history.append([run.step, val_loss, bpb])
    if bar:
        print(file=sys.stderr)
    print0(f"step {run.step:6d} | val loss {val_loss:.4f} | val bpb {bpb:.4f}")


def save(run: Run) -> Path:
    metrics = {"history": run.history, "val_history": run.val_history, "total_steps": run.total_steps,
               "samples": run.samples}
    return save_checkpoint(run.base_dir, run.step, run.raw_model, run.tokenizer, asdict(run.cfg),
                           optimizer=run.optimizer, loader_state=run.loader.state_dict(), metrics=metrics,
                           keep_last=run.cfg.keep_last or None)


def log_step(run: Run, loss_val: float, dt: float, dt_ema: float | None, bar: bool) -> None:
    """Rank 0's one dense line per step (or a progress bar on an interactive CPU run)."""
    cfg, step, total_steps = run.cfg, run.step, run.total_steps
    if not (step % cfg.log_every == 0 or step == total_steps):
        return
    tps = run.total_batch / dt
    peak = peak_flops(run.d.device)
    mfu = f"{100 * run.raw_model.flops_per_token() * tps / (peak * run.d.world_size):.1f}%" if peak else "n/a"
    line = (f"step {step:6d}/{total_steps} | loss {loss_val:.4f} | lr x{lr_at(step - 1, total_steps, cfg.optim):.3f}"
            f" | dt {dt * 1000:.0f}ms | tok/s {tps:,.0f} | mfu {mfu} | eta {fmt_time((total_steps - step) * (dt_ema or dt))}")
    if bar:
        n = int(30 * step / total_steps)
        sys.stderr.write(f"\r[{'#' * n}{'.' * (30 - n)}] {line}")
        sys.stderr.flush()
    else:
        print0(line)


def fit_time_budget(run: Run, t_start: float, dt_ema: float, step_cap: int) -> None:
    """Opt-in time budget: fit the schedule to the time left. Ranks agree on the smallest estimate so
    that every rank runs the same number of steps."""
    left = run.cfg.time_budget - (time.perf_counter() - t_start)
    fitted = min(step_cap, max(run.step + 1, run.step + int(left / dt_ema)))
    run.total_steps = int(all_reduce_min(torch.tensor(float(fitted), device=run.d.device), run.d).item())


def maybe_compile(run: Run, t_start: float, dt: float) -> bool:
    """Auto ``--compile``: after three timed eager steps (``dt``: the fastest of them), compile when the
    eager time still to run pays for it (``compile_pays``); ranks agree on the smallest estimate.
    True when it compiled."""
    left = (run.total_steps - run.step) * dt
    if run.cfg.time_budget > 0:
        left = min(left, run.cfg.time_budget - (time.perf_counter() - t_start))
    left = all_reduce_min(torch.tensor(float(left), device=run.d.device), run.d).item()
    if not compile_pays(None, run.d.device, left):
        return False
    print0(f"compiling the model: ~{left:.0f} s of eager training left pays for it (compile_pays)")
    run.model = torch.compile(run.model)
    return True


def train(run: Run) -> float:
    """The loop: steps until the plan (or the opt-in time budget) ends, with validation, samples and
    checkpoints on their schedules. Returns the seconds it took."""
    cfg, d = run.cfg, run.d
    bar = is_interactive() and d.device == "cpu" and d.rank == 0
    run.model.train()
    t_start = time.perf_counter()
    dt_ema, timed_steps = None, 0
    untimed_through = run.step if cfg.resume else run.step + 1  # steps not timed: allocation, compilation
    decide_compile, eager_dts = cfg.compile is None, []   # auto --compile: decided on 3 timed eager steps
    step_cap = run.total_steps  # --max-steps / token budget still bound a time-budgeted run
    while run.step < run.total_steps:
        t0 = time.perf_counter()
        loss_val = train_step(run)
        dt = time.perf_counter() - t0
        if run.step > untimed_through:  # the first step pays for allocation / compilation
            dt_ema = dt if dt_ema is None else 0.9 * dt_ema + 0.1 * dt
            timed_steps += 1
        if decide_compile and run.step > untimed_through:
            eager_dts.append(dt)
        if decide_compile and len(eager_dts) == 3:   # the fastest of 3: one slow step must not decide it
            decide_compile = False
            if maybe_compile(run, t_start, min(eager_dts)):   # the next step compiles: time from the one after
                dt_ema, timed_steps, untimed_through = None, 0, run.step + 1
        # refit once after 5 timed steps, then every 10 steps while the lr is at its peak (WSD's
        # stable phase), since early step times are noisy
        refit = timed_steps == 5 or (timed_steps > 5 and run.step % 10 == 0
                                     and lr_at(run.step, run.total_steps, cfg.optim) >= 1.0)
        if cfg.time_budget > 0 and refit:
            fit_time_budget(run, t_start, dt_ema, step_cap)
        log_step(run, loss_val, dt, dt_ema, bar)
        over = cfg.time_budget > 0 and time.perf_counter() - t_start > cfg.time_budget
        if d.world_size > 1 and cfg.time_budget > 0:  # one rank's clock must not stop it alone
            over = all_reduce_sum(torch.tensor(float(over), device=d.device), d).item() > 0
        done = run.step >= run.total_steps or over
        if done:
            run.total_steps = run.step
        if (cfg.eval_every and run.step % cfg.eval_every == 0) or done:
            validate(run, bar)
        if (cfg.sample_every and run.step % cfg.sample_every == 0) or done:
            if d.rank == 0 and not (cfg.fsdp and d.world_size > 1):  # FSDP forward is collective
                run.samples = draw_samples(run.raw_model, run.tokenizer, cfg.sample_tokens)
            for s in run.samples or []:
                print0(f"sample: {s!r}")
            run.model.train()
        if (cfg.save_every and run.step % cfg.save_every == 0) or done:
            run.last_ckpt = save(run)
    if bar:
        print(file=sys.stderr)
    return time.perf_counter() - t_start


def write_metrics(run: Run, start_step: int, elapsed: float) -> None:
    """Rank 0: the loss plot and base/metrics.json (what the report card shows)."""
    if run.last_ckpt is None:  # resumed at or past total_steps: nothing new to save
        run.last_ckpt = run.resumed_from
    plot_losses(run.history, run.val_history, run.rd / "report" / "pretrain_loss.png")
    final = {"steps": run.step, "params": run.raw_model.num_params(), "tokens": run.step * run.total_batch,
             "train_loss": run.history[-1][1] if run.history else None,
             "val_loss": run.val_history[-1][1] if run.val_history else None,
             "val_bpb": run.val_history[-1][2] if run.val_history else None,
             "time_s": elapsed, "tokens_per_s": (run.step - start_step) * run.total_batch / max(elapsed, 1e-9),
             "dtype": run.dtype, "checkpoint": str(run.last_ckpt), "model_config": asdict(run.raw_model.config),
             "samples": run.samples}
    write_meta(run.base_dir / "metrics.json", "pretrain_metrics", run.cfg, metrics=final)
    print0(f"done: {run.step} steps, train loss {final['train_loss']}, val loss {final['val_loss']}, "
           f"val bpb {final['val_bpb']}, {elapsed:.1f}s -> {run.last_ckpt}")


def _pretrain(cfg: PretrainConfig, d: Dist, rd: Path, shards_dir: Path, base_dir: Path) -> Path:
    run = setup(cfg, d, rd, shards_dir, base_dir)
    start_step = run.step
    elapsed = train(run)
    if d.rank == 0:
        write_metrics(run, start_step, elapsed)
    return run.last_ckpt if run.last_ckpt is not None else base_dir / f"step_{run.step:06d}"


def cli(argv: list[str]) -> None:
    parser = make_parser(prog="chatforge pretrain", description="pretrain a base model on token shards")
    add_config_args(parser, PretrainConfig)
    args = parser.parse_args(argv)
    cfg = config_from_args(PretrainConfig, args)
    print_config(cfg, "pretrain config")
    pretrain(cfg)


if __name__ == "__main__":
    cli(sys.argv[1:])
