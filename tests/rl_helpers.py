"""Shared fixtures for the RL / reward / DPO / search tests: the real tokenizer, byte-level (no merges,
so nothing to train), and tiny GPTs (fast enough for a 1-core test budget)."""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def byte_tokenizer():
    from chatforge.tokenizer.tokenizer import SPECIAL_TOKENS, train_tokenizer
    return train_tokenizer(["abc"], 256 + len(SPECIAL_TOKENS))


def ByteTokenizer():  # noqa: N802 (reads like the class it stands for)
    return byte_tokenizer()


def tiny_gpt(vocab: int = 267, seq_len: int = 96, seed: int = 0, n_embd: int = 32, n_layer: int = 1):
    from chatforge.model.gpt import GPT, GPTConfig
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, seq_len=seq_len, n_layer=n_layer, n_head=2, n_kv_head=2, n_embd=n_embd,
                    mlp_hidden=4 * n_embd)
    m = GPT(cfg)
    m.init_weights()
    return m.eval()
