"""Shared tiny fixtures for the assistant tests (SFT, chat, evaluate): a small world, a tokenizer
trained on its corpus in ~0.1 s, and a 2-layer model. Not a test module (no test_ prefix)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatforge.model.gpt import GPT, GPTConfig
from chatforge.tokenizer.tokenizer import train_tokenizer
from chatforge.world.build import WorldConfig, build_world, write_world

TINY_WORLD = dict(n_people=60, n_problems=200, n_spelling=100, n_cities=6, n_countries=2, n_universities=4,
                  n_employers=4, n_filler_per_entity=1)


def tiny_world():
    return build_world(WorldConfig(**TINY_WORLD))


def tiny_tokenizer(world, vocab_size: int = 400):
    return train_tokenizer([d["text"] for d in world.corpus_documents()], vocab_size=vocab_size)


def tiny_model(tok, seq_len: int = 256, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tok.n_vocab, seq_len=seq_len, n_layer=2, n_head=2, n_kv_head=2, n_embd=64,
                    mlp_hidden=128)
    m = GPT(cfg)
    m.init_weights()
    return m.eval()


@pytest.fixture(scope="module")
def tm():
    """(tokenizer, untrained tiny model with a 128-token context), shared by a test module."""
    tok = tiny_tokenizer(tiny_world())
    return tok, tiny_model(tok, seq_len=128)


def tiny_run(tmp_path: Path, name: str = "run"):
    """A run directory with world/ and base/ (an untrained tiny model): what SFT starts from."""
    from chatforge.model.checkpoint import save_checkpoint
    world = tiny_world()
    rd = tmp_path / name
    write_world(world, rd)
    tok = tiny_tokenizer(world)
    model = tiny_model(tok)
    save_checkpoint(rd / "base", 0, model, tok, {"note": "tiny test base"})
    return rd, world, tok, model


def tiny_sft_run(tmp_path: Path, steps: int = 2, batch_size: int = 8, **mix):
    """``tiny_run`` plus SFT data (no probing) and a few SFT steps: a run with ``<run>/sft``."""
    from chatforge.train.sft import SFTConfig, sft
    from chatforge.train.sft_data import SFTMix, build_sft_data
    rd, world, tok, _ = tiny_run(tmp_path)
    build_sft_data(rd, mix=SFTMix(**mix), probe=False)
    sft(SFTConfig(run=str(rd), max_steps=steps, batch_size=batch_size, device="cpu"))
    return rd, world, tok
