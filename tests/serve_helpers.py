"""Shared fixtures for the serving/export tests: a tiny tokenizer, tiny models, a live server."""
from __future__ import annotations

import socket
import threading
import time
from functools import lru_cache

import torch

from chatforge.model.engine import sample_next

TEXTS = ["Hello world! The quick brown fox jumps over the lazy dog. " * 3,
         "Once upon a time there was a small model that liked numbers: 12*7=84.",
         "What is the capital of France? Paris is the capital of France."] * 10


@lru_cache(maxsize=None)
def tiny_tokenizer():
    from chatforge.tokenizer.tokenizer import train_tokenizer
    return train_tokenizer(TEXTS, 300)


def tiny_model(flavour: str = "llama", seed: int = 0, seq_len: int = 96, vocab_size: int = 304):
    """A 2-layer model; the llama one uses GQA (1 kv head for 2 query heads), vocab padded past the
    tokenizer's 300 ids (so padded rows are exercised)."""
    from chatforge.model.gpt import GPT, config_from_depth
    cfg = config_from_depth(2, vocab_size, seq_len, flavour)
    if flavour == "llama":
        cfg.n_kv_head = 1
    torch.manual_seed(seed)
    m = GPT(cfg)
    m.init_weights()
    with torch.no_grad():   # larger logits than the init's near-uniform ones: greedy is well separated
        if cfg.tie_embeddings:
            m.wte.weight.mul_(4.0)
        else:
            m.lm_head.weight.mul_(8.0)
    return m.eval()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class LiveServer:
    """uvicorn running an app in a daemon thread on a free 127.0.0.1 port."""

    def __init__(self, app):
        import uvicorn
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    limit_concurrency=1000, timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 30:
                raise RuntimeError("server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def scripted(script: list[int], seen: list[torch.Tensor]):
    """A sampler that plays ``script`` for temperature > 0 (recording the logits it was given) and
    is greedy for temperature 0."""
    def sample(logits, temperature, top_k, top_p, gen):
        if temperature == 0:
            return sample_next(logits, 0.0)
        seen.append(logits[0].clone())
        return torch.tensor([script.pop(0)])
    return sample


def tool_script(tok, expr="12*7", after=" so"):
    sp = tok.special
    return [sp("<|tool_start|>"), *tok.encode("calculator\n" + expr), sp("<|tool_end|>"), *tok.encode(after),
            sp("<|assistant_end|>")]
