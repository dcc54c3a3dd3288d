"""Model invariants: cache == no cache, causality, loss masking, RoPE, sizes, parameter groups."""
import dataclasses

import pytest
import torch

from chatforge.common import CfError
from chatforge.model.gpt import (GPT, PRESETS, GPTConfig, KVCache, apply_rope, config_from_depth, rope_cos_sin)


def tiny(flavour: str, **kw) -> GPTConfig:
    base = dict(vocab_size=300, seq_len=64, n_layer=2, n_head=4, n_kv_head=4, n_embd=64, mlp_hidden=128)
    if flavour == "llama":
        base.update(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2)
    else:
        base.update(pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)
    base.update(kw)
    return GPTConfig(**base)


def build(cfg: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(cfg)
    m.init_weights()
    return m.eval()


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_kv_cache_matches_full_forward(flavour):
    m = build(tiny(flavour))
    x = torch.randint(0, 300, (3, 24))
    with torch.no_grad():
        full = m(x)
        cache = KVCache.for_model(m, 3)
        # prefill at 0, a second multi-token chunk at pos > 0 (needs the explicit mask), then 1-token steps
        parts = [m(x[:, :9], kv_cache=cache), m(x[:, 9:17], kv_cache=cache)]
        parts += [m(x[:, t:t + 1], kv_cache=cache) for t in range(17, 24)]
    assert cache.pos == 24
    assert full.dtype == torch.float32 and full.shape == (3, 24, 300)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_expand_cache_equals_batched_prefill():
    m = build(tiny("llama"))
    prompt = torch.randint(0, 300, (1, 10))
    nxt = torch.randint(0, 300, (3, 1))
    with torch.no_grad():
        c1 = KVCache.for_model(m, 1)
        m(prompt, kv_cache=c1)
        a = m(nxt, kv_cache=c1.expand(3))
        c3 = KVCache.for_model(m, 3)
        m(prompt.expand(3, -1), kv_cache=c3)
        b = m(nxt, kv_cache=c3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_causal(flavour):
    m = build(tiny(flavour))
    x = torch.randint(0, 300, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 300
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_loss_ignores_minus_one_and_reductions():
    m = build(tiny("gpt2"))
    x = torch.randint(0, 300, (2, 12))
    t = torch.randint(0, 300, (2, 12))
    t[0, :5] = -1
    with torch.no_grad():
        logits = m(x)
        per = m(x, t, reduction="none")
        mean = m(x, t)
    keep = t != -1
    manual = torch.nn.functional.cross_entropy(logits[keep], t[keep])
    torch.testing.assert_close(mean, manual)
    assert per.shape == (2, 12) and torch.all(per[~keep] == 0)
    torch.testing.assert_close(per[keep].mean(), mean)
    with pytest.raises(CfError):
        m(x, t, reduction="sum")


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_head_on_targets_only_is_the_same_loss_and_gradients(flavour):
    """The SFT fast path (lm_head only where a target exists) against the full head: its slow twin."""
    x = torch.randint(0, 300, (3, 16))
    t = torch.randint(0, 300, (3, 16))
    t[:, :7] = -1          # a prompt without targets
    t[2, 10:] = -1         # padding
    grads = []
    for only in (False, True):
        m = build(tiny(flavour)).train()
        loss = m(x, t, targets_only=only)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # per-token losses (RL's log-probs): the same, 0 where there is no target
        torch.testing.assert_close(m(x, t, reduction="none", targets_only=True), m(x, t, reduction="none"))


def test_rope_relative_and_norm_preserving():
    # RoFormer's defining property: <R_m q, R_n k> depends only on m - n, and rotations keep norms
    cos, sin = rope_cos_sin(32, 16)
    q, k = torch.randn(16), torch.randn(16)

    def rot(v, p):
        return apply_rope(v.view(1, 1, 1, 16), cos[p:p + 1], sin[p:p + 1]).view(16)
    torch.testing.assert_close(rot(q, 5) @ rot(k, 2), rot(q, 13) @ rot(k, 10), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rot(q, 7).norm(), q.norm())


def test_overfits_one_batch():
    torch.manual_seed(0)
    m = GPT(tiny("llama"))
    m.init_weights()
    x = torch.randint(0, 300, (2, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = m(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_param_groups_partition():
    for flavour in ("llama", "gpt2"):
        m = build(tiny(flavour))
        g = m.param_groups()
        ids = [id(p) for ps in g.values() for p in ps]
        assert len(ids) == len(set(ids)) == len(list(m.parameters()))
        assert all(p.dim() == 2 for p in g["matrix"]) and all(p.dim() == 1 for p in g["scalar"])
        assert (len(g["lm_head"]) == 0) == m.config.tie_embeddings


def test_sizes_presets_and_flops():
    with torch.device("meta"):
        gpt2 = GPT(PRESETS["gpt2-124m"](50257, 1024))
    assert gpt2.num_params() == 124_439_808          # the published GPT-2 small count
    for d in (2, 12, 26):
        c = config_from_depth(d, 1000, 128)
        assert c.n_embd == 64 * d and c.n_head == d == c.n_kv_head and c.head_dim == 64
        assert config_from_depth(d, 1000, 128, "gpt2").mlp_hidden == 4 * c.n_embd
    narrow = config_from_depth(2, 1000, 128, head_dim=32)      # the speedrun's d2: more heads, same width
    assert (narrow.n_embd, narrow.n_head, narrow.n_kv_head, narrow.head_dim) == (128, 4, 4, 32)
    cfg = tiny("llama")
    m = build(cfg)
    n = m.num_params() - cfg.vocab_size * cfg.n_embd            # untied: wte is a lookup only
    assert m.flops_per_token() == 6 * n + 12 * 2 * 4 * 16 * 64
    m2 = build(PRESETS["llama-tiny"](300, 64))
    assert m2.config.n_kv_head < m2.config.n_head


def test_bad_configs():
    with pytest.raises(CfError, match="n_kv_head"):
        tiny("llama", n_kv_head=3)
    with pytest.raises(CfError, match="pos"):
        tiny("llama", pos="alibi")
    with pytest.raises(CfError, match="depth"):
        config_from_depth(0, 100, 10)
    with pytest.raises(CfError, match="head_dim"):
        config_from_depth(2, 100, 10, head_dim=48)              # 128 is not a multiple of 48
    m = build(tiny("gpt2"))
    with pytest.raises(CfError, match="seq_len"):
        m(torch.zeros(1, 65, dtype=torch.long))
    assert dataclasses.asdict(m.config)["pos"] == "learned"
