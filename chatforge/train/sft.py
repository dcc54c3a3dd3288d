"""Supervised fine-tuning: teach the base model the chat format on rendered conversations.

A short tutorial
----------------
The tokenizer renders a conversation to token ids plus a loss mask (DESIGN.md, "Rendering and the
loss mask"): 1 on what the assistant says (its text, its tool calls, ``<|assistant_end|>``), 0 on
everything the model is given (system, user, tool outputs injected by the engine). Training is
ordinary next-token prediction with the inputs ``x = ids[:-1]`` and the targets ``y = ids[1:]``,
except that ``y[t] = -1`` (ignored by the loss) wherever ``mask[t + 1] = 0``: the model sees the
user's words as context but is never trained to *produce* them.

Batches are padded, not packed: each row is one conversation, padded on the right with target -1.
Packing several conversations in one row would let one conversation attend to another (our
attention has no document mask), and SFT sets are small enough that the padding waste is cheap.
Rows are grouped by length (bucketed shuffle) so little of a batch is padding.

The stage starts from ``runs/<run>/base`` (latest complete checkpoint) and writes checkpoints in the
same format to ``runs/<run>/sft/`` (``checkpoint.save_checkpoint``), with the validation loss in
their metrics. ``sft_data.build_sft_data`` writes the conversation mixture first (see ``convo.py``).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from chatforge.assistant.convo import FETCHED_SOURCES, REAL_SOURCES
from chatforge.assistant.sandbox import add_unsafe_python_arg, apply_unsafe_python_arg
from chatforge.common import (CfError, Timer, add_config_args, autocast_ctx, config_from_args, data_dir, get_device,
                              make_parser, print0, print_config, run_dir, seed_all, train_dtype)
from chatforge.data.shards import TokenLoader
from chatforge.model.batching import collate
from chatforge.model.checkpoint import load_checkpoint, save_checkpoint
from chatforge.model.optim import OptimConfig, build_optimizer, lr_at
from chatforge.tokenizer.tokenizer import load_conversations
from chatforge.train.pretrain import compile_pays
from chatforge.train.sft_data import SFTMix, build_sft_data, write_fetched


@dataclass
class SFTConfig:
    run: str = field(default="default", metadata={"help": "run name (runs/<run>) or run directory"})
    init: str = field(default="", metadata={"help": "checkpoint to start from (default: <run>/base)"})
    out: str = field(default="sft", metadata={"help": "stage folder under the run for checkpoints"})
    data: str = field(default="", metadata={"help": "training conversations JSONL (default: <run>/sft_data/train.jsonl)"})
    val_data: str = field(default="", metadata={"help": "validation JSONL (default: <run>/sft_data/val.jsonl, skipped if absent)"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the training conversations"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps (-1: from epochs)"})
    time_budget: float = field(default=0.0, metadata={"help": "stop after this many seconds (0: none); the lr "
                                                      "schedule then follows elapsed time"})
    batch_size: int = field(default=16, metadata={"help": "conversations per optimizer step"})
    max_tokens: int = field(default=0, metadata={"help": "truncate conversations to this many tokens (0: model seq_len)"})
    replay: int = field(default=0, metadata={"help": "windows of the run's pretraining tokens (shards/, train split) "
                                                    "mixed into the rows, loss on every token: rehearsal against "
                                                    "forgetting what pretraining stored"})
    replay_tokens: int = field(default=128, metadata={"help": "tokens per replay window"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="adamw", lr=1e-3, muon_lr=0.01, schedule="wsd", warmup=5, decay_frac=0.5))
    eval_every: int = field(default=50, metadata={"help": "validation loss every N steps (0: only at the end)"})
    val_max: int = field(default=200, metadata={"help": "validation conversations used at most"})
    seed: int = field(default=1337, metadata={"help": "random seed (shuffling, init)"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | mps | auto"})
    dtype: str = field(default="auto", metadata={"help": "autocast dtype: auto (bf16 on CUDA and on CPUs with "
                                                         "native bf16) | float32 | bfloat16"})
    save_optimizer: bool = field(default=False, metadata={"help": "also save optim.pt"})
    compile: bool | None = field(default=None, metadata={
        "help": "torch.compile the model: --compile always, --no-compile never; unset = when the run is long "
                "enough to pay for compiling (pretrain.compile_pays, decided after the first timed step)"})


# ----------------------------------------------------------------------------- batching (pure)

def render_rows(tokenizer, convs: Sequence[dict], max_tokens: int) -> list[tuple[list[int], list[int]]]:
    """Render each conversation to (ids, mask); rows with nothing to train on are dropped."""
    rows = []
    for c in convs:
        ids, mask = tokenizer.render_conversation(c, max_tokens=max_tokens)
        if sum(mask[1:]) > 0:
            rows.append((ids, mask))
    return rows


def batch_order(lengths: Sequence[int], batch_size: int, rng: random.Random, bucket: int = 8) -> list[list[int]]:
    """One epoch of batches (lists of row indices): shuffle, sort within chunks of ``bucket`` batches
    by length so rows in a batch have similar lengths, then shuffle the batches."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    batches = []
    chunk = batch_size * bucket
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s:s + chunk], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def eval_loss(model, rows, batch_size: int, pad_id: int, device: str) -> float:
    """Mean loss per trained token over ``rows`` (token-weighted, not batch-weighted)."""
    tot, n = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        for s in range(0, len(order), batch_size):
            x, y = collate([rows[i] for i in order[s:s + batch_size]], pad_id)
            loss = model(x.to(device), targets=y.to(device), reduction="none")
            tot += float(loss.sum())
            n += int((y >= 0).sum())
    model.train(was_training)
    return tot / max(1, n)


# ----------------------------------------------------------------------------- the stage

def _resolve(cfg: SFTConfig) -> tuple[Path, Path, Path, Path | None, Path]:
    rd = run_dir(cfg.run)
    init = Path(cfg.init) if cfg.init else rd / "base"
    data = Path(cfg.data) if cfg.data else rd / "sft_data" / "train.jsonl"
    val = Path(cfg.val_data) if cfg.val_data else rd / "sft_data" / "val.jsonl"
    if not data.exists():
        raise CfError(f"{data}: SFT training conversations not found (run build_sft_data or pass --data)")
    if cfg.val_data and not val.exists():
        raise CfError(f"{val}: validation conversations not found")
    return rd, init, data, (val if val.exists() else None), rd / cfg.out


def replay_rows(shards_dir: Path, n: int, n_tokens: int, tokenizer, seed: int) -> list[tuple[list[int], list[int]]]:
    """``n`` distinct windows of ``n_tokens`` + 1 pretraining tokens (a seeded draw from the train split)
    as rows with every token a target. Mixing them into fine-tuning rehearses what pretraining stored
    (InstructGPT's PPO-ptx mixes pretraining gradients into RL for the same reason): a midtraining of
    1,500 drill steps alone cut the base's cloze recall of facts from 94% to 34% (dev/LOG.md, session 7)."""
    loader = TokenLoader(shards_dir, "train", 1, n_tokens, seed=seed)
    if loader.meta["vocab_size"] != tokenizer.n_vocab:
        raise CfError(f"{shards_dir}: shards have vocab_size {loader.meta['vocab_size']}, the model's tokenizer "
                      f"{tokenizer.n_vocab}; replay needs this run's own shards")
    windows = [loader.window_tokens(g).tolist() for g in range(min(n, loader.n_windows))]
    return [(w, [1] * len(w)) for w in windows]


def train_sft(cfg: SFTConfig, model, tokenizer, train_convs: Sequence[dict],
              val_convs: Sequence[dict] = (), optimizer_out: list | None = None,
              extra_rows: Sequence[tuple[list[int], list[int]]] = ()) -> dict[str, Any]:
    """Fine-tune ``model`` in place on rendered conversations (and ``extra_rows``: (ids, mask) rows such
    as ``replay_rows``); returns metrics incl. the history."""
    if cfg.batch_size < 1 or (cfg.epochs <= 0 and cfg.max_steps <= 0):
        raise CfError("sft: batch_size must be >= 1 and epochs or max_steps positive")
    device = str(next(model.parameters()).device)
    model.train()
    max_tokens = min(cfg.max_tokens or model.config.seq_len, model.config.seq_len)
    rows = render_rows(tokenizer, train_convs, max_tokens) + list(extra_rows)
    val_rows = render_rows(tokenizer, list(val_convs)[:cfg.val_max], max_tokens)
    if not rows:
        raise CfError("sft: no training conversation has assistant tokens to train on")
    lengths = [len(r[0]) for r in rows]
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, round(cfg.epochs * steps_per_epoch))
    n_train_tok = sum(sum(m[1:]) for _, m in rows)
    print0(f"sft: {len(rows) - len(extra_rows)} conversations + {len(extra_rows)} other rows ({n_train_tok:,} trained "
           f"tokens), {len(val_rows)} val, "
           f"{total} steps of {cfg.batch_size}")
    opt = build_optimizer(model, cfg.optim, train_dtype(device, cfg.dtype))
    if optimizer_out is not None:
        optimizer_out.append(opt)
    pad_id = tokenizer.bos_id
    t0 = time.perf_counter()
    history, val_loss = _loop(cfg, model, opt, rows, val_rows, lengths, total, pad_id, device, t0)
    model.eval()
    return {"train_loss": history[-1]["loss"], "first_loss": history[0]["loss"], "val_loss": val_loss,
            "steps": len(history), "planned_steps": total, "conversations": len(rows), "trained_tokens": n_train_tok,
            "seconds": time.perf_counter() - t0, "history": history}


def _loop(cfg: SFTConfig, model, opt, rows, val_rows, lengths, total: int, pad_id: int, device: str,
          t0: float) -> tuple[list[dict[str, float]], float]:
    """Steps over bucketed, shuffled batches until ``total`` steps or the time budget."""
    rng = random.Random(cfg.seed)
    dtype = train_dtype(device, cfg.dtype)
    batches: list[list[int]] = []
    history: list[dict[str, float]] = []
    val_loss = float("nan")
    fwd = torch.compile(model) if cfg.compile else model  # the same weights either way
    starts: list[float] = []   # step start times, for the auto --compile decision
    for step in range(total):
        if not batches:
            batches = batch_order(lengths, cfg.batch_size, rng)
        x, y = collate([rows[i] for i in batches.pop()], pad_id)
        elapsed = time.perf_counter() - t0
        if step <= 4:
            starts.append(elapsed)
        if step == 4 and cfg.compile is None:  # auto: on the fastest of steps 1-3 (step 0 allocates)
            left = (total - step) * min(b - a for a, b in zip(starts[1:4], starts[2:5]))
            left = min(left, cfg.time_budget - elapsed) if cfg.time_budget > 0 else left
            if compile_pays(None, device, left):
                print0(f"sft: compiling the model: ~{left:.0f} s of eager training left pays for it")
                fwd = torch.compile(model)
        progress = step if cfg.time_budget <= 0 else max(step, total * elapsed / cfg.time_budget)
        opt.set_lr(lr_at(progress, total, cfg.optim))
        with autocast_ctx(device, dtype):
            loss = fwd(x.to(device), targets=y.to(device), targets_only=True)  # no head on the prompt
        opt.zero_grad()
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        rec = {"step": step, "loss": float(loss.detach())}
        last = step == total - 1 or (cfg.time_budget > 0 and time.perf_counter() - t0 >= cfg.time_budget)
        if val_rows and (last or (cfg.eval_every > 0 and step % cfg.eval_every == 0)):
            val_loss = eval_loss(model, val_rows, cfg.batch_size, pad_id, device)
            rec["val_loss"] = val_loss
        history.append(rec)
        if step % 10 == 0 or last or "val_loss" in rec:
            vl = f" val {rec['val_loss']:.4f}" if "val_loss" in rec else ""
            print0(f"sft step {step:5d}/{total} loss {rec['loss']:.4f}{vl} ({time.perf_counter() - t0:.1f}s)")
        if last:
            break
    return history, val_loss


def sft(cfg: SFTConfig) -> Path:
    """The stage: load ``cfg.init`` (default ``<run>/base``) and the conversation files, fine-tune,
    save ``<run>/<out>/step_XXXXXX`` in the pretraining checkpoint format; returns that folder."""

    seed_all(cfg.seed)
    rd, init, data, val, stage_dir = _resolve(cfg)
    ck = load_checkpoint(init, device=get_device(cfg.device))
    print0(f"sft: starting from {ck.path}")
    train_convs = load_conversations(data)
    val_convs = load_conversations(val) if val is not None else []
    opts: list = []
    replay = replay_rows(rd / "shards", cfg.replay, cfg.replay_tokens, ck.tokenizer, cfg.seed) if cfg.replay else []
    metrics = train_sft(cfg, ck.model, ck.tokenizer, train_convs, val_convs, optimizer_out=opts, extra_rows=replay)
    metrics["replay_rows"] = len(replay)
    metrics["init"] = str(ck.path)
    metrics["data"] = str(data)
    path = save_checkpoint(stage_dir, metrics["steps"], ck.model, ck.tokenizer, asdict(cfg),
                           optimizer=opts[0] if cfg.save_optimizer else None, metrics=metrics)
    print0(f"sft: saved {path} (train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
           f"{metrics['seconds']:.1f}s)")
    return Path(path)


# ----------------------------------------------------------------------------- CLI

def cli(argv: list[str]) -> None:
    p = make_parser("chatforge sft", "supervised fine-tuning on conversations (loss on assistant tokens only)")
    add_config_args(p, SFTConfig)
    p.add_argument("--build-data", action="store_true",
                   help="first write <run>/sft_data/ from the world (build_sft_data), probing the base model")
    p.add_argument("--identity", default=None, help="model card JSON for identity conversations (with --build-data)")
    p.add_argument("--no-probe", action="store_true", help="with --build-data: no knowledge probing of the base model")
    p.add_argument("--real-mix", type=json.loads, default={},
                   help='with --build-data: real conversations to mix in, e.g. \'{"oasst": 100, "gsm8k": 200}\' '
                        f"(sources: {', '.join(sorted(REAL_SOURCES))}; absent files are skipped)")
    p.add_argument("--mix", type=json.loads, default={},
                   help='with --build-data: SFTMix fields, e.g. \'{"mid_tool_drill": 4000, "mid_worked_drill": 4000}\' '
                        "(the midtraining drill, written to sft_data/mid.jsonl)")
    p.add_argument("--data-dir", default="", help="folder holding the real data sets (default: $CHATFORGE_DATA, "
                   "else ../shared/data beside the checkout)")
    add_unsafe_python_arg(p)
    p.add_argument("--fetched", action="append", default=[], metavar="NAME=PATH[:N]",
                   help=f"train on a fetched SFT set ({', '.join(FETCHED_SOURCES)}; `chatforge data fetch`): "
                        "converted to <run>/sft_data/NAME.jsonl, used as --data when that is not given; repeatable")
    args = p.parse_args(argv)
    apply_unsafe_python_arg(args)
    cfg = config_from_args(SFTConfig, args)
    if args.fetched:
        cfg = replace(cfg, data=cfg.data or str(write_fetched(run_dir(cfg.run), args.fetched)))
    print_config(cfg, "sft config")
    if args.build_data:
        if not isinstance(args.real_mix, dict):
            raise CfError('--real-mix: expected a JSON object like {"oasst": 100}')
        known = {f.name for f in fields(SFTMix)} - {"real"}
        if not isinstance(args.mix, dict) or set(args.mix) - known:
            raise CfError(f"--mix: expected a JSON object of SFTMix fields ({', '.join(sorted(known))}), got {args.mix!r}")
        with Timer("sft data"):
            build_sft_data(run_dir(cfg.run), identity=args.identity, probe=not args.no_probe,
                           mix=SFTMix(**args.mix, real=args.real_mix), real_data_dir=args.data_dir or data_dir(), device=cfg.device)
    with Timer("sft"):
        sft(cfg)
