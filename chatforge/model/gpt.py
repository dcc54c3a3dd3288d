"""The model: one decoder-only Transformer whose config covers GPT-2 and Llama.

A short tour (forward order)::

    idx (B, T) token ids
     -> wte: token embedding                         (B, T, C)
     -> + wpe: learned positions       [pos="learned", GPT-2]   (RoPE instead rotates q, k inside attention)
     -> n_layer x Block:
           x = x + Attention(norm_1(x))   causal self-attention, n_head query heads sharing
                                          n_kv_head key/value heads (grouped-query attention)
           x = x + MLP(norm_2(x))         GELU (tanh approx., as GPT-2) or SwiGLU (as Llama)
     -> norm_f                                       (B, T, C)
     -> lm_head (tied to wte or not)                 (B, T, V) logits, float32

Every architectural difference between the two families is a config field, never a family name:

    field            GPT-2 (gpt2-124m)     Llama (llama-tiny, the depth dial)
    pos              "learned"             "rope"       RoPE, Su et al. 2021, arXiv:2104.09864
    norm             "layernorm"           "rmsnorm"    Zhang & Sennrich 2019, arXiv:1910.07467
    mlp              "gelu"                "swiglu"     Shazeer 2020, arXiv:2002.05202
    bias             True                  False
    tie_embeddings   True                  False
    n_kv_head        = n_head              <= n_head    GQA, Ainslie et al. 2023, arXiv:2305.13245

RoPE uses the "rotate_half" convention of HF transformers (dimension i pairs with i + head_dim/2),
so weights move to/from HF Llama without permutation (llama2.c / Meta / GGUF use interleaved pairs
(2i, 2i+1); hf.from_llama2c and the GGUF exporter permute the q/k rows for that).

Inference with a KV cache: ``KVCache`` holds per-layer key/value buffers; a forward with
``kv_cache=`` writes the new keys/values at ``cache.pos`` and attends to everything before. With no
cache attention uses ``is_causal=True``; with a cache and T > 1 (prefill, possibly at pos > 0) an
explicit mask lets query i (absolute position pos+i) see keys 0..pos+i.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from chatforge.common import CfError


# ----------------------------------------------------------------------------- config

@dataclass
class GPTConfig:
    vocab_size: int = field(default=32768, metadata={"help": "vocabulary size (merged tokens + specials)"})
    seq_len: int = field(default=1024, metadata={"help": "context length (max positions)"})
    n_layer: int = field(default=12, metadata={"help": "number of Transformer blocks"})
    n_head: int = field(default=12, metadata={"help": "number of query heads"})
    n_kv_head: int = field(default=12, metadata={"help": "number of key/value heads (GQA when < n_head)"})
    n_embd: int = field(default=768, metadata={"help": "residual stream width C"})
    mlp_hidden: int = field(default=2048, metadata={"help": "MLP hidden width"})
    pos: str = field(default="rope", metadata={"help": "position encoding", "choices": ["learned", "rope"]})
    norm: str = field(default="rmsnorm", metadata={"help": "normalization", "choices": ["layernorm", "rmsnorm"]})
    mlp: str = field(default="swiglu", metadata={"help": "MLP kind", "choices": ["gelu", "swiglu"]})
    bias: bool = field(default=False, metadata={"help": "biases in linear layers (and LayerNorm)"})
    tie_embeddings: bool = field(default=False, metadata={"help": "lm_head shares the token embedding matrix"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base frequency"})
    norm_eps: float = field(default=1e-5, metadata={"help": "epsilon of the normalization layers"})

    def __post_init__(self) -> None:
        for name, allowed in (("pos", ("learned", "rope")), ("norm", ("layernorm", "rmsnorm")),
                              ("mlp", ("gelu", "swiglu"))):
            if getattr(self, name) not in allowed:
                raise CfError(f"GPTConfig.{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise CfError(f"GPTConfig.{name}: expected a positive int, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise CfError(f"GPTConfig.n_embd: {self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise CfError(f"GPTConfig.n_kv_head: n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.pos == "rope" and self.head_dim % 2:
            raise CfError(f"GPTConfig.n_head: RoPE needs an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def config_from_depth(depth: int, vocab_size: int, seq_len: int, flavour: str = "llama",
                      head_dim: int = 64) -> GPTConfig:
    """The one-dial model size (nanochat style): width and heads follow from the depth.

    n_embd = 64 * depth ("aspect ratio" 64), head_dim = 64, so n_head = depth and n_kv_head = n_head.
    A smaller ``head_dim`` gives more heads at the same width and cost (the speedrun's d2 takes 32:
    4 heads a layer instead of 2 stored 4-7 points more facts on two validation worlds and learned to
    copy sooner; dev/LOG.md "Session 6").
    d2 = 128 wide (tiny, for tests) ... d12 = 768 (GPT-2 small width) ... d26 = 1664.
    flavour "llama": RoPE/RMSNorm/SwiGLU (hidden = 8/3 * C rounded up to a multiple of 64, which keeps
    the MLP parameter count of a 4C GELU MLP), no biases, untied. flavour "gpt2": learned positions,
    LayerNorm, GELU 4C, biases, tied embeddings (positions are learned, so seq_len is fixed at build).
    """
    if not isinstance(depth, int) or not 1 <= depth <= 64:
        raise CfError(f"depth: expected an int in 1..64 (d2..d26 are the usual range), got {depth!r}")
    n_embd = 64 * depth
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2 or n_embd % head_dim:
        raise CfError(f"head_dim: expected an even divisor of the width {n_embd}, got {head_dim!r}")
    n_head = n_embd // head_dim
    if flavour == "llama":
        hidden = 64 * math.ceil(8 * n_embd / 3 / 64)
        return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=depth, n_head=n_head, n_kv_head=n_head,
                         n_embd=n_embd, mlp_hidden=hidden, pos="rope", norm="rmsnorm", mlp="swiglu",
                         bias=False, tie_embeddings=False)
    if flavour == "gpt2":
        return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=depth, n_head=n_head, n_kv_head=n_head,
                         n_embd=n_embd, mlp_hidden=4 * n_embd, pos="learned", norm="layernorm", mlp="gelu",
                         bias=True, tie_embeddings=True)
    raise CfError(f"flavour: expected 'llama' or 'gpt2', got {flavour!r}")


def _gpt2_124m(vocab_size: int = 50257, seq_len: int = 1024) -> GPTConfig:
    # Radford et al. 2019 (GPT-2 small): 12 layers, 12 heads, 768 wide, 4x GELU MLP, tied, biases.
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=12, n_head=12, n_kv_head=12, n_embd=768,
                     mlp_hidden=3072, pos="learned", norm="layernorm", mlp="gelu", bias=True,
                     tie_embeddings=True, norm_eps=1e-5)


def _llama_tiny(vocab_size: int = 32000, seq_len: int = 512) -> GPTConfig:
    # A small Llama-shaped model that exercises every Llama feature, GQA included (2 q heads per kv head).
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=4, n_head=4, n_kv_head=2, n_embd=256,
                     mlp_hidden=704, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                     tie_embeddings=False, rope_theta=10000.0, norm_eps=1e-5)


PRESETS: dict[str, Callable[[int, int], GPTConfig]] = {"gpt2-124m": _gpt2_124m, "llama-tiny": _llama_tiny}


# ----------------------------------------------------------------------------- RoPE (pure functions)

def rope_cos_sin(seq_len: int, head_dim: int, theta: float = 10000.0,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Precomputed RoPE tables, each (seq_len, head_dim), float32.

    Su et al. 2021, "RoFormer", eq. (34): frequency i is theta^(-2i/d). HF "rotate_half" layout:
    the d/2 frequencies are repeated twice, so dims i and i + d/2 form one rotated pair.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)                   # (T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)            # (T, d)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, d) by the angles for its T positions; cos/sin are (T, d)."""
    d = x.shape[-1] // 2
    rotated = torch.cat((-x[..., d:], x[..., :d]), dim=-1)   # rotate_half: (x1, x2) -> (-x2, x1)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------- KV cache

class KVCache:
    """Keys and values of every layer for the tokens seen so far, for incremental decoding.

    k[l], v[l]: (B, n_kv_head, T_max, head_dim); ``pos`` = number of positions filled (same for the
    whole batch). GPT.forward writes the new T positions at [pos, pos+T) of every layer, then advances
    ``pos`` by T. To sample N continuations of one prompt, prefill with B=1 and ``expand(N)``.
    """
    def __init__(self, batch_size: int, n_layer: int, n_kv_head: int, head_dim: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size, self.max_len, self.pos = batch_size, max_len, 0

    @classmethod
    def for_model(cls, model: "GPT", batch_size: int, max_len: int | None = None,
                  dtype: torch.dtype | None = None) -> "KVCache":
        c = model.config
        p = next(model.parameters())
        return cls(batch_size, c.n_layer, c.n_kv_head, c.head_dim, max_len or c.seq_len, p.device,
                   dtype or p.dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_head, T, head_dim) at [pos, pos+T); return all keys/values up to pos+T."""
        T = k.shape[2]
        end = self.pos + T
        if end > self.max_len:
            raise CfError(f"KVCache: {end} positions exceed the cache length {self.max_len}")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int) -> None:
        self.pos += T

    def expand(self, batch_size: int) -> "KVCache":
        """A new cache with each row of this B=1 cache repeated batch_size times (copies the filled part)."""
        if self.batch_size != 1:
            raise CfError(f"KVCache.expand: needs a batch-1 cache, this one has batch {self.batch_size}")
        new = KVCache.__new__(KVCache)
        new.k = [t.expand(batch_size, -1, -1, -1).clone() for t in self.k]
        new.v = [t.expand(batch_size, -1, -1, -1).clone() for t in self.v]
        new.batch_size, new.max_len, new.pos = batch_size, self.max_len, self.pos
        return new


# ----------------------------------------------------------------------------- modules (forward order)

def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
    return nn.RMSNorm(config.n_embd, eps=config.norm_eps)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        C, kv = config.n_embd, config.n_kv_head * config.head_dim
        self.c_q = nn.Linear(C, C, bias=config.bias)
        self.c_k = nn.Linear(C, kv, bias=config.bias)
        self.c_v = nn.Linear(C, kv, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> q (B, H, T, d), k and v (B, Hkv, T, d), RoPE applied (also read by model/inspect)."""
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)      # (B, H, T, d)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)   # (B, Hkv, T, d)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)   # (B, Hkv, T, d)
        if rope is not None:
            cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)                     # (T, d) at this chunk's positions
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                kv_cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.project(x, rope)
        mask, causal = None, True
        if kv_cache is not None:
            pos = kv_cache.pos
            k, v = kv_cache.update(self.layer_idx, k, v)                            # (B, Hkv, pos+T, d)
            if T == 1:
                causal = False            # one new query sees every cached key
            elif pos > 0:                 # chunk at pos>0: query i (at pos+i) sees keys 0..pos+i
                causal = False
                q_pos = torch.arange(pos, pos + T, device=x.device)
                mask = torch.arange(pos + T, device=x.device)[None, :] <= q_pos[:, None]   # (T, pos+T) bool
        # GQA: SDPA repeats each kv head for n_head/n_kv_head consecutive query heads (as HF repeat_kv)
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                            # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)      # "up"
        self.c_gate = (nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
                       if config.mlp == "swiglu" else None)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)    # "down"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c_gate is not None:   # SwiGLU: silu(x W_gate) * (x W_up)
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        else:                         # GPT-2's GELU, tanh approximation ("gelu_new" in HF)
            h = F.gelu(self.c_fc(x), approximate="tanh")
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.norm_1 = make_norm(config)
        self.attn = Attention(config, layer_idx)
        self.norm_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, kv_cache):
        x = x + self.attn(self.norm_1(x), rope, kv_cache)
        x = x + self.mlp(self.norm_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.seq_len, config.n_embd) if config.pos == "learned" else None
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if config.pos == "rope":
            cos, sin = rope_cos_sin(config.seq_len, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)   # (seq_len, head_dim)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.rope_cos = self.rope_sin = None

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 style init (Radford et al. 2019): N(0, 0.02) for matrices and embeddings, residual output
        projections scaled by 1/sqrt(2 n_layer) so the residual stream's variance does not grow with
        depth, biases 0, norm gains 1. RoPE tables are recomputed (they are not in state_dict)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                s = std / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj.weight") else std
                nn.init.normal_(p, mean=0.0, std=s)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)    # norm gains
        if self.rope_cos is not None:
            c = self.config
            cos, sin = rope_cos_sin(c.seq_len, c.head_dim, c.rope_theta, device=self.rope_cos.device)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def embed(self, idx: torch.Tensor, pos0: int = 0) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """idx (B, T) at absolute positions pos0.. -> the residual stream's start x (B, T, C) and the RoPE
        tables (cos, sin), each (T, d), for these positions (None with learned positions)."""
        T = idx.shape[1]
        x = self.wte(idx)                                                              # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(pos0, pos0 + T, device=idx.device))         # (T, C) broadcast
        else:
            rope = (self.rope_cos[pos0:pos0 + T], self.rope_sin[pos0:pos0 + T])      # (T, d) each
        return x, rope

    def forward_hidden(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> the final hidden states (B, T, C), after the last norm (what lm_head reads;
        the reward model's scalar head reads them too)."""
        B, T = idx.shape
        pos0 = kv_cache.pos if kv_cache is not None else 0
        if pos0 + T > self.config.seq_len:
            raise CfError(f"GPT.forward: positions {pos0}..{pos0 + T - 1} exceed seq_len={self.config.seq_len}")
        x, rope = self.embed(idx, pos0)                                                # (B, T, C)
        for block in self.blocks:
            x = block(x, rope, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                reduction: str = "mean", targets_only: bool = False) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V) float32; with targets (B, T) (-1 = ignore) -> the loss:
        a scalar mean over non-ignored targets, or (B, T) per-token losses (0 where ignored) for "none".

        ``targets_only`` (with targets): the head runs only on positions that have a target. In SFT and
        RL the prompt has none (about half of a conversation's tokens), and at d2 the head is most of
        the FLOPs: the same losses, forward + backward 1.3x faster (dev/LOG.md, session 7)."""
        B, T = idx.shape
        if targets is not None and reduction not in ("mean", "none"):
            raise CfError(f"GPT.forward: reduction must be 'mean' or 'none', got {reduction!r}")
        x = self.forward_hidden(idx, kv_cache)                                         # (B, T, C)
        if targets is not None and targets_only:
            keep = targets.reshape(-1) != -1                                           # (B*T,)
            logits = self.lm_head(x.reshape(B * T, -1)[keep]).float()                  # (N, V)
            nll = F.cross_entropy(logits, targets.reshape(-1)[keep], reduction=reduction)
            if reduction == "mean":
                return nll
            return nll.new_zeros(B * T).index_put((keep,), nll).view(B, T)             # (B, T), 0 where ignored
        logits = self.lm_head(x).float()                                               # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=reduction)
        return loss if reduction == "mean" else loss.view(B, T)

    # ------------------------------------------------------------------------- bookkeeping

    def num_params(self) -> int:
        """Unique parameters (a tied lm_head is counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), Chowdhery et al. 2022 (PaLM), appendix B:
        6 N for the matmul parameters plus 12 * n_layer * n_head * head_dim * seq_len for attention
        scores and values. N excludes embedding *lookups* (wte unless tied, wpe) since a lookup is no
        matmul; a tied wte is counted, as it does the lm_head matmul."""
        c = self.config
        lookups = (0 if c.tie_embeddings else self.wte.weight.numel())
        lookups += self.wpe.weight.numel() if self.wpe is not None else 0
        n = self.num_params() - lookups
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * c.seq_len

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters split for the optimizer, each parameter in exactly one list:
        "matrix": 2-D weights inside the blocks (for Muon); "embedding": wte (and wpe);
        "lm_head": the output matrix (empty when tied, it is then in "embedding");
        "scalar": biases and norm gains (1-D)."""
        groups: dict[str, list[nn.Parameter]] = {"matrix": [], "embedding": [], "lm_head": [], "scalar": []}
        seen: set[int] = set()
        for name, p in self.named_parameters():   # named_parameters yields a tied tensor once
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name.startswith(("wte.", "wpe.")):
                groups["embedding"].append(p)
            elif name.startswith("lm_head."):
                groups["lm_head"].append(p)
            elif p.dim() >= 2:
                groups["matrix"].append(p)
            else:
                groups["scalar"].append(p)
        return groups
