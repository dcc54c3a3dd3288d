"""Padding a batch of token rows: the one collate that SFT, RL, the reward model and DPO share.

A *row* is ``(ids, mask)`` from ``Tokenizer.render_conversation`` (mask[i] = 1: ids[i] is trained).
Next-token training shifts it by one: the input is ids[:-1] and the target at t is ids[t + 1] when
mask[t + 1] is 1, else -1 (ignored by the loss). Rows are right-padded: inputs with ``pad_id``,
targets with -1, so padding never contributes to a loss or a log-prob.
"""
from __future__ import annotations

from typing import Sequence

import torch


def pad_right(seqs: Sequence[Sequence[int]], fill: int, length: int | None = None) -> torch.Tensor:
    """Sequences of ints -> (B, T) long tensor, right-padded with ``fill`` (T = longest, or ``length``)."""
    T = length if length is not None else max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), fill, dtype=torch.long)
    for b, s in enumerate(seqs):
        out[b, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def collate(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (ids, mask) -> inputs x (B, T), targets y (B, T), T = longest row - 1.

    x[b, t] = ids[t]; y[b, t] = ids[t + 1] if mask[t + 1] else -1; padding: x = pad_id, y = -1.
    """
    xs = [list(ids[:-1]) for ids, _ in rows]
    ys = [[t if m else -1 for t, m in zip(ids[1:], mask[1:])] for ids, mask in rows]
    return pad_right(xs, pad_id), pad_right(ys, -1)
