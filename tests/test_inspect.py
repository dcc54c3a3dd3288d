"""The internals viewer: a 1-layer model against a hand computation, the lens at the last layer equal to
the model's logits, GQA/RoPE models, the text rendering and the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from chatforge.model.gpt import GPT, GPTConfig
from chatforge.model.inspect import heatmap, internals, prompt_ids, render_text
from serve_helpers import tiny_model, tiny_tokenizer


class NumTok:
    """A stand-in tokenizer: token i prints as "t<i>"."""
    n_vocab = 50

    def decode(self, ids):
        return "".join(f"t{i}" for i in ids)


def one_layer(**kw) -> GPT:
    cfg = GPTConfig(vocab_size=50, seq_len=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=8, mlp_hidden=12,
                    pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=False, **kw)
    torch.manual_seed(3)
    m = GPT(cfg)
    m.init_weights()
    with torch.no_grad():   # non-trivial gains and biases, and large enough weights for peaked attention
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def hand_forward(m: GPT, ids: list[int]):
    """The 1-layer GPT-2-style forward written with elementary operations, position by position."""
    W = {k: v.double() for k, v in m.state_dict().items()}
    T, C, H = len(ids), m.config.n_embd, m.config.n_head
    d = C // H

    def ln(x, g, b):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + m.config.norm_eps) * g + b

    x0 = torch.stack([W["wte.weight"][i] + W["wpe.weight"][t] for t, i in enumerate(ids)])    # (T, C)
    h = ln(x0, W["blocks.0.norm_1.weight"], W["blocks.0.norm_1.bias"])
    q = h @ W["blocks.0.attn.c_q.weight"].T + W["blocks.0.attn.c_q.bias"]
    k = h @ W["blocks.0.attn.c_k.weight"].T + W["blocks.0.attn.c_k.bias"]
    v = h @ W["blocks.0.attn.c_v.weight"].T + W["blocks.0.attn.c_v.bias"]
    att = torch.zeros(H, T, T, dtype=torch.float64)
    y = torch.zeros(T, C, dtype=torch.float64)
    for hd in range(H):
        sl = slice(hd * d, (hd + 1) * d)
        for i in range(T):
            s = [float(q[i, sl] @ k[j, sl]) / math.sqrt(d) for j in range(i + 1)]
            e = [math.exp(v_ - max(s)) for v_ in s]
            for j in range(i + 1):
                att[hd, i, j] = e[j] / sum(e)
                y[i, sl] += att[hd, i, j] * v[j, sl]
    x1 = x0 + y @ W["blocks.0.attn.c_proj.weight"].T + W["blocks.0.attn.c_proj.bias"]
    h2 = ln(x1, W["blocks.0.norm_2.weight"], W["blocks.0.norm_2.bias"])
    u = h2 @ W["blocks.0.mlp.c_fc.weight"].T + W["blocks.0.mlp.c_fc.bias"]
    g = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
    x2 = x1 + g @ W["blocks.0.mlp.c_proj.weight"].T + W["blocks.0.mlp.c_proj.bias"]

    def lens(x):
        return ln(x, W["norm_f.weight"], W["norm_f.bias"]) @ W["lm_head.weight"].T
    return att, [x0, x2], [lens(x0), lens(x2)]


def test_one_layer_matches_a_hand_computation():
    m = one_layer()
    ids = [3, 17, 5, 42, 8, 8]
    obj = internals(m, NumTok(), ids, top_k=3)
    att, resid, lens = hand_forward(m, ids)
    for h in range(2):
        for t in range(len(ids)):
            assert obj["attention_permille"][0][h][t] == pytest.approx((1000 * att[h, t, :t + 1]).tolist(), abs=0.51)
    for l in range(2):
        assert obj["residual"][l]["norm"] == pytest.approx(float(resid[l].norm(dim=-1).mean()), abs=1e-3)
        p = torch.softmax(lens[l], -1)
        for t in range(len(ids)):
            top = p[t].topk(3)
            assert [c["id"] for c in obj["lens"][l]["top"][t]] == top.indices.tolist()
            assert [c["p"] for c in obj["lens"][l]["top"][t]] == pytest.approx(top.values.tolist(), abs=1e-4)
    # the answer defaults to the model's own top-1 at the last position; its probability per layer
    with torch.no_grad():
        logits = m(torch.tensor([ids]))[0]
    assert obj["answer"]["id"] == int(logits[-1].argmax())
    assert obj["answer"]["p"][-1] == pytest.approx(float(torch.softmax(logits[-1], -1).max()), abs=1e-6)
    assert obj["answer"]["p"][0] == pytest.approx(float(torch.softmax(lens[0][-1], -1)[obj["answer"]["id"]]), abs=1e-6)
    assert obj["lens_vs_logits_max_abs_diff"] < 1e-5
    assert [r["name"] for r in obj["lens"]] == ["embedding", "block 1"]
    assert obj["tokens"][1] == {"id": 17, "text": "t17"}


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_lens_at_last_layer_is_the_models_logits(flavour):
    m = tiny_model(flavour, 1)      # 2 layers; the llama one has RoPE and GQA (2 query heads, 1 kv head)
    tok = tiny_tokenizer()
    ids = prompt_ids(tok, "What is the capital of France?", chat=True)
    obj = internals(m, tok, ids, answer_id=tok.encode(" Paris")[0])
    assert obj["lens_vs_logits_max_abs_diff"] < 1e-5
    with torch.no_grad():
        p = torch.softmax(m(torch.tensor([ids]))[0, -1, :tok.n_vocab], -1)
    assert obj["answer"]["p"][-1] == pytest.approx(float(p[tok.encode(" Paris")[0]]), abs=1e-6)
    assert obj["lens"][-1]["top"][-1][0]["id"] == int(p.argmax())
    T, H = len(ids), m.config.n_head
    assert len(obj["attention_permille"]) == 2 and all(len(layer) == H for layer in obj["attention_permille"])
    for layer in obj["attention_permille"]:
        for head in layer:
            assert [len(r) for r in head] == list(range(1, T + 1))            # causal: row t sees 0..t
            assert all(sum(r) == pytest.approx(1000, abs=0.5 * T) for r in head)   # rounded to thousandths
    shapes = {r["name"]: r["shape"] for r in obj["shapes"]}
    assert shapes["idx"] == [1, T] and shapes["lm_head(norm_f(x))"] == [1, T, m.config.vocab_size]
    assert len(obj["contrib"]) == 2 and all(c["attn"] > 0 and c["mlp"] > 0 for c in obj["contrib"])
    json.dumps(obj)   # JSON-ready as it is


def test_lens_never_shows_padded_vocabulary_rows():
    m = tiny_model("llama", 0)      # vocab 304 > the tokenizer's 300
    with torch.no_grad():
        m.lm_head.weight[300:] = 50.0   # padded rows would win every position
    tok = tiny_tokenizer()
    obj = internals(m, tok, prompt_ids(tok, "Hello world", chat=False))
    assert all(c["id"] < 300 for row in obj["lens"] for pos in row["top"] for c in pos)


def test_bad_prompts_fail_with_one_line():
    from chatforge.common import CfError
    m = one_layer()
    with pytest.raises(CfError, match="expected 1..16"):
        internals(m, NumTok(), list(range(17)))
    with pytest.raises(CfError, match="token ids"):
        internals(m, NumTok(), [1, 99])


def test_render_text_shows_every_part():
    m = one_layer()
    obj = internals(m, NumTok(), [3, 17, 5, 42])
    text = render_text(obj)
    for part in ("Tensor shapes", "Logit lens", "Top-5 at the last position", "Probability of the final answer",
                 "Residual stream", "Attention layer 1 head 2", "max |diff|"):
        assert part in text
    assert heatmap([[1000], [0, 1000], [250, 0, 750]]) == ["@", " @", "+ %"]   # shade index floor(10 sqrt(w))
    long = render_text(obj, max_heatmap=2)
    assert "the last token attends most to" in long and "|" not in long.split("Attention layer")[1]


def test_cli_on_a_checkpoint(tmp_path, capsys):
    from chatforge.model.checkpoint import save_checkpoint
    from chatforge.cli import main
    tok = tiny_tokenizer()
    save_checkpoint(tmp_path / "run" / "sft", 1, tiny_model("llama", 0), tok, {})
    main(["inspect", "--run", str(tmp_path / "run"), "--chat", "--json", str(tmp_path / "i.json"), "Hello"])
    out = capsys.readouterr().out
    assert "Logit lens" in out and "Attention layer 2 head 2" in out
    obj = json.loads((tmp_path / "i.json").read_text())
    assert obj["tokens"][-1]["text"] == "<|assistant_start|>"
    with pytest.raises(SystemExit) as e:
        main(["inspect", "Hello"])
    assert e.value.code == 1 and "exactly one of --ckpt" in capsys.readouterr().err


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_explicit_attention_is_the_fused_attention(flavour):
    """The slow twin: softmax(q k^T / sqrt(d)) written out equals SDPA's output, layer by layer (GQA too)."""
    from chatforge.model.inspect import explicit_attention
    m = tiny_model(flavour, 2)
    idx = torch.randint(0, 300, (2, 11))
    with torch.no_grad():
        x, rope = m.embed(idx)
        for block in m.blocks:
            h = block.norm_1(x)
            mine, w = explicit_attention(block.attn, h, rope)
            assert torch.allclose(mine, block.attn(h, rope, None), atol=1e-5)
            assert torch.allclose(w.sum(-1), torch.ones(2, m.config.n_head, 11), atol=1e-5)
            assert (w.triu(1) == 0).all()                                   # no query sees a later key
            x = block(x, rope, None)
