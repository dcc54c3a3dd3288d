"""Weights interop: HF GPT-2 / Llama both ways and llama2.c, compared on logits (fp32, offline)."""
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from chatforge.common import CfError, data_dir
from chatforge.model.gpt import GPT, GPTConfig
from chatforge.model.hf import cli, from_hf, from_llama2c, permute_interleaved_to_half, to_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
DATA = data_dir()  # CHATFORGE_DATA, else ../shared/data beside the checkout
STORIES = DATA / "llama2c-stories260K" / "stories260K.bin"
TOL = 1e-4


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (biases and norm gains too) so no mapping hides behind zeros/ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def hf_logits(m, x):
    with torch.no_grad():
        return m(x).logits.float()


def ours(cfg_kw) -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(**cfg_kw))
    m.init_weights()
    perturb(m)
    return m.eval()


GPT2_KW = dict(vocab_size=300, seq_len=64, n_layer=2, n_head=4, n_kv_head=4, n_embd=64, mlp_hidden=256,
               pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)
LLAMA_KW = dict(vocab_size=300, seq_len=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=96,
                pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, rope_theta=500.0)


def test_hf_gpt2_to_ours(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                  resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    perturb(hf)
    hf.save_pretrained(tmp_path)
    m = from_hf(tmp_path)
    x = torch.randint(0, 300, (2, 40))
    assert (m(x) - hf_logits(hf, x)).abs().max() < TOL


@pytest.mark.parametrize("bias,tie", [(False, False), (True, True)])
def test_hf_llama_to_ours(tmp_path, bias, tie):
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   attention_bias=bias, mlp_bias=bias, tie_word_embeddings=tie,
                                   rope_theta=1000.0, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    perturb(hf)
    hf.save_pretrained(tmp_path)
    m = from_hf(tmp_path)
    assert m.config.n_kv_head == 2 and m.config.bias == bias and m.config.rope_theta == 1000.0
    x = torch.randint(0, 300, (2, 40))
    assert (m(x) - hf_logits(hf, x)).abs().max() < TOL


@pytest.mark.parametrize("kw", [GPT2_KW, LLAMA_KW, dict(GPT2_KW, bias=False, tie_embeddings=False),
                                dict(LLAMA_KW, bias=True, tie_embeddings=True, n_kv_head=4)])
def test_ours_to_hf_and_back(tmp_path, kw):
    m = ours(kw)
    to_hf(m, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    x = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        ref = m(x)
    assert (ref - hf_logits(hf, x)).abs().max() < TOL
    back = from_hf(tmp_path / "hf")
    with torch.no_grad():
        assert (back(x) - ref).abs().max() < 1e-6


def test_bad_sources(tmp_path):
    with pytest.raises(CfError, match="config.json"):
        from_hf(tmp_path)
    to_hf(ours(GPT2_KW), tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(CfError, match="pickles are never loaded"):
        from_hf(tmp_path / "hf")
    with pytest.raises(CfError, match="no HF architecture"):
        to_hf(ours(dict(LLAMA_KW, norm="layernorm")), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    (tmp_path / "short.bin").write_bytes(struct.pack("<7i", 8, 16, 1, 2, 2, 10, 4) + b"\0" * 12)
    with pytest.raises(CfError, match="float32 values"):
        from_llama2c(tmp_path / "short.bin")


def test_import_cli_writes_checkpoint(tmp_path):
    from chatforge.model.checkpoint import load_checkpoint
    m = ours(LLAMA_KW)
    to_hf(m, tmp_path / "hf")
    cli([str(tmp_path / "hf"), "--out", str(tmp_path / "base")])
    ck = load_checkpoint(tmp_path / "base", tokenizer=SimpleNamespace(n_vocab=300))
    x = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        assert (ck.model(x) - m(x)).abs().max() < 1e-6


# ----------------------------------------------------------------------------- llama2.c

def test_permutation_keeps_attention_scores():
    # interleaved RoPE on (Wq x, Wk x) == rotate_half RoPE on the permuted rows: same q.k scores
    from chatforge.model.gpt import apply_rope, rope_cos_sin
    d, T = 8, 6
    wq, wk, x = torch.randn(d, 16), torch.randn(d, 16), torch.randn(T, 16)
    cos, sin = rope_cos_sin(T, d)
    fr, fi = cos[:, :d // 2], sin[:, :d // 2]

    def interleaved(v):   # llama2.c run.c: rotate (v[2j], v[2j+1]) by angle t * theta_j
        a, b = v[:, 0::2], v[:, 1::2]
        return torch.stack((a * fr - b * fi, a * fi + b * fr), -1).reshape(T, d)
    ref = interleaved(x @ wq.t()) @ interleaved(x @ wk.t()).t()
    q = apply_rope((x @ permute_interleaved_to_half(wq, 1).t()).view(1, 1, T, d), cos, sin)[0, 0]
    k = apply_rope((x @ permute_interleaved_to_half(wk, 1).t()).view(1, 1, T, d), cos, sin)[0, 0]
    torch.testing.assert_close(q @ k.t(), ref, atol=1e-4, rtol=1e-4)


def llama2c_reference_logits(path: Path, tokens: list[int]) -> torch.Tensor:
    """run.c's forward, written out independently from the raw file (interleaved RoPE, no permutation)."""
    raw = path.read_bytes()
    dim, hidden, L, H, Hkv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    w = torch.from_numpy(np.frombuffer(raw, "<f4", offset=28).copy())
    hd, kv, V = dim // H, dim // H * Hkv, abs(vocab)
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        off += n
        return w[off - n:off].view(shape)
    emb, rms_att, wq, wk, wv, wo = take(V, dim), take(L, dim), take(L, dim, dim), take(L, kv, dim), take(L, kv, dim), take(L, dim, dim)
    rms_ffn, w1, w2, w3, rms_f = take(L, dim), take(L, hidden, dim), take(L, dim, hidden), take(L, hidden, dim), take(dim)
    fr, fi = take(seq_len, hd // 2), take(seq_len, hd // 2)
    wcls = emb if vocab > 0 else take(V, dim)

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g
    T = len(tokens)

    def rope(v, nh):      # (T, nh*hd): rotate pairs (2j, 2j+1) of every head
        v = v.view(T, nh, hd // 2, 2)
        a, b = v[..., 0], v[..., 1]
        c, s = fr[:T, None, :], fi[:T, None, :]
        return torch.stack((a * c - b * s, a * s + b * c), -1).view(T, nh, hd)
    x = emb[tokens]
    mask = torch.ones(T, T).tril().bool()
    for l in range(L):
        h = rms(x, rms_att[l])
        q, k, v = rope(h @ wq[l].t(), H), rope(h @ wk[l].t(), Hkv), (h @ wv[l].t()).view(T, Hkv, hd)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        att = torch.einsum("thd,shd->hts", q, k) / hd ** 0.5
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + torch.einsum("hts,shd->thd", att, v).reshape(T, dim) @ wo[l].t()
        h = rms(x, rms_ffn[l])
        x = x + (torch.nn.functional.silu(h @ w1[l].t()) * (h @ w3[l].t())) @ w2[l].t()
    return rms(x, rms_f) @ wcls.t()


def test_llama2c_stories260k(tmp_path):
    if not STORIES.exists():
        pytest.skip(f"{STORIES} absent")
    m = from_llama2c(STORIES)
    c = m.config
    assert (c.n_embd, c.n_layer, c.n_head, c.n_kv_head, c.vocab_size) == (64, 5, 8, 4, 512)
    tokens = [1] + list(range(300, 340))
    x = torch.tensor([tokens])
    with torch.no_grad():
        logits = m(x)[0]
    # an independent einsum implementation: logits reach ~15, so allow fp32 reordering noise of 2e-4
    assert (logits - llama2c_reference_logits(STORIES, tokens)).abs().max() < 2e-4
    to_hf(m, tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert (logits - hf_logits(hf, x)[0]).abs().max() < TOL
    cli([str(STORIES), "--format", "llama2c", "--out", str(tmp_path / "base")])
    from chatforge.model.checkpoint import load_checkpoint
    ck = load_checkpoint(tmp_path / "base", tokenizer=SimpleNamespace(n_vocab=512))
    with torch.no_grad():
        assert torch.equal(ck.model(x)[0], logits)
