"""Checkpoints: one self-contained folder per saved step.

``<stage_dir>/step_XXXXXX/``::

    model.safetensors   weights (a tied lm_head is stored once; its alias is in the metadata)
    state.json          model_config, train config, step, loader state, RNG states, metrics, provenance
    optim.pt            optimizer state (optional), read back with torch.load(weights_only=True)
    tokenizer/          a copy of the tokenizer, so the folder alone is enough to chat or resume

A checkpoint is built in a hidden temp folder beside its final name and renamed into place, so a
``step_*`` folder is always complete; a crash (even SIGKILL) mid-save leaves only a ``.step_*.tmp``
folder that loading ignores and the next save sweeps away.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from chatforge.common import atomic_path, atomic_write_json, CfError, provenance, rank, read_json
from chatforge.model.gpt import GPT, GPTConfig
from chatforge.tokenizer.tokenizer import Tokenizer




STEP_RE = re.compile(r"^step_(\d+)$")


@dataclass
class Checkpoint:
    model: nn.Module          # GPT, eval mode
    tokenizer: Any            # chatforge.tokenizer.Tokenizer
    state: dict[str, Any]     # state.json
    path: Path                # the step folder

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def optimizer_state(self) -> dict[str, Any] | None:
        p = self.path / "optim.pt"
        if not p.exists():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CfError(f"{p}: unreadable optimizer state ({str(e).splitlines()[0]})") from None


# ----------------------------------------------------------------------------- RNG states (JSON-safe)

def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain lists (JSON-safe, no pickles)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {"python": [version, list(internal), gauss],
                           "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                           "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ----------------------------------------------------------------------------- state dicts

def _full(t: Any) -> Any:
    """A plain CPU tensor from a tensor or an FSDP2 DTensor shard (gathering is collective)."""
    if isinstance(t, torch.Tensor):
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        return t.detach().cpu()
    if isinstance(t, dict):
        return {k: _full(v) for k, v in t.items()}
    if isinstance(t, (list, tuple)):
        return type(t)(_full(v) for v in t)
    return t


def model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(unique tensors by name, aliases {name: name_of_the_stored_twin}) for a model's state_dict."""
    model = getattr(model, "_orig_mod", model)   # torch.compile wrapper
    model = getattr(model, "module", model)      # DDP wrapper
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_by_ptr: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict().items():
        local = t.to_local() if hasattr(t, "to_local") else t   # FSDP2: a DTensor's own data_ptr is meaningless
        key = (local.data_ptr(), tuple(t.shape))
        if key in first_by_ptr and t.numel() > 0:
            aliases[name] = first_by_ptr[key]   # a tied weight: store once
            continue
        first_by_ptr[key] = name
        tensors[name] = _full(t).contiguous()
    return tensors, aliases


# ----------------------------------------------------------------------------- save

def _step_dirs(stage_dir: Path) -> list[tuple[int, Path]]:
    out = []
    if stage_dir.is_dir():
        for p in stage_dir.iterdir():
            m = STEP_RE.match(p.name)
            if m and p.is_dir() and (p / "state.json").exists() and (p / "model.safetensors").exists():
                out.append((int(m.group(1)), p))
    return sorted(out)


def save_checkpoint(stage_dir: str | os.PathLike, step: int, model: nn.Module, tokenizer: Any,
                    train_config: Any, optimizer: Any = None, loader_state: dict | None = None,
                    metrics: dict | None = None, keep_last: int | None = None) -> Path:
    """Save ``<stage_dir>/step_{step:06d}`` atomically; prune to the newest ``keep_last`` steps.

    Call it on every rank: under FSDP gathering the weights is collective; only rank 0 writes.
    """
    stage_dir = Path(stage_dir)
    path = stage_dir / f"step_{step:06d}"
    tensors, aliases = model_tensors(model)
    optim_state = _full(optimizer.state_dict()) if optimizer is not None else None
    if rank() != 0:
        return path
    inner = getattr(getattr(model, "_orig_mod", model), "module", getattr(model, "_orig_mod", model))
    model_config = asdict(inner.config) if is_dataclass(getattr(inner, "config", None)) else {}
    if is_dataclass(train_config):
        train_config = asdict(train_config)
    stage_dir.mkdir(parents=True, exist_ok=True)
    for stale in stage_dir.glob(".step_*.tmp"):  # leftovers of a killed save
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_path(path, replace_dir=True) as tmp:  # our own step folder: replaced whole
        tmp.mkdir()
        save_file(tensors, str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "aliases": json.dumps(aliases)})
        if optim_state is not None:
            torch.save(optim_state, tmp / "optim.pt")
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        atomic_write_json(tmp / "state.json", {
            "kind": "checkpoint", "step": step, "model_config": model_config,
            "train_config": train_config, "loader": loader_state, "rng": rng_state(),
            "metrics": metrics or {}, "provenance": provenance()})
    if keep_last:
        for _, old in _step_dirs(stage_dir)[:-keep_last]:
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
    return path


# ----------------------------------------------------------------------------- load

def latest_checkpoint(path: str | os.PathLike) -> Path | None:
    """The step folder itself, or the newest complete ``step_*`` inside a stage folder (None if none)."""
    path = Path(path)
    if (path / "state.json").exists():
        return path
    steps = _step_dirs(path)
    return steps[-1][1] if steps else None


def model_specs(specs: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` flags (``--model``) -> {name: path}; each path must hold a complete checkpoint."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CfError(f"--model {spec!r}: expected NAME=PATH (a checkpoint step or stage folder)")
        if latest_checkpoint(path) is None:
            raise CfError(f"--model {name}={path}: no complete checkpoint there")
        out[name] = Path(path)
    return out


def load_checkpoint(path: str | os.PathLike, device: str = "cpu", tokenizer: Any = None) -> Checkpoint:
    """Load a step folder (or the latest complete one of a stage folder): model in eval mode."""
    found = latest_checkpoint(path)
    if found is None:
        raise CfError(f"{path}: no complete checkpoint (expected step_*/state.json + model.safetensors)")
    path = found
    state = read_json(path / "state.json", "checkpoint state")
    if "model_config" not in state or "step" not in state:
        raise CfError(f"{path / 'state.json'}: expected fields model_config and step")
    try:
        config = GPTConfig(**state["model_config"])
    except TypeError as e:
        raise CfError(f"{path / 'state.json'}: model_config does not fit GPTConfig ({e})") from None
    if tokenizer is None:
        tokenizer = Tokenizer.load(path / "tokenizer")
    if tokenizer.n_vocab > config.vocab_size:
        raise CfError(f"{path}: model vocab_size {config.vocab_size} is smaller than its tokenizer's "
                      f"{tokenizer.n_vocab} tokens")
    try:
        with safe_open(str(path / "model.safetensors"), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CfError(f"{path / 'model.safetensors'}: unreadable ({str(e).splitlines()[0]})") from None
    for name, twin in json.loads(meta.get("aliases", "{}")).items():
        sd[name] = sd[twin]
    model = GPT(config)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:300]
        raise CfError(f"{path}: weights do not match model_config ({msg})") from None
    model.to(device).eval()
    return Checkpoint(model=model, tokenizer=tokenizer, state=state, path=path)


def load_model(source: str | os.PathLike, device: str = "cpu", stage: str = "", what: str = "model") -> Checkpoint:
    """The one checkpoint resolver every stage uses: ``source`` is a step folder, a stage folder (its
    newest complete step), or a run directory together with ``stage`` ("base", "sft", "rl", ...).
    A missing path is a one-line error naming ``what`` it was meant to be."""
    p = Path(source) / stage if stage else Path(source)
    if not p.exists():
        raise CfError(f"{p}: {what} checkpoint not found")
    return load_checkpoint(p, device=device)
