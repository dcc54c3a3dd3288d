"""Reduced-precision inference weights: fp32 untouched, each kind within its stated logit tolerance,
the fast kernels equal to their slow twins (the rounded weights back in fp32 through nn.Linear)."""
import io

import pytest
import torch
from assistant_helpers import tiny_model, tiny_tokenizer, tiny_world
from test_engine import PROMPT, tiny

from chatforge.common import CfError
from chatforge.model.checkpoint import save_checkpoint
from chatforge.model.engine import Engine
from chatforge.model.quant import LowPrecisionLinear, dequantized, int8_rows, quantize_for_inference
from chatforge.serve.chat import cli as chat_cli

# max |logit - fp32 logit| / max |fp32 logit| on the tiny models below (sharp 0.2-std weights)
TOLERANCE = {"bf16": 0.03, "fp16": 0.005, "int8": 0.04}


def test_int8_rows_round_trip():
    w = torch.randn(8, 32)
    w[3] = 0.0                                              # an all-zero row must not divide by zero
    q, s = int8_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127 and s.shape == (8,)
    err = (q.float() * s[:, None] - w).abs()
    assert (err <= s[:, None] / 2 + 1e-7).all()             # rounding to the nearest step
    assert (q[3] == 0).all()


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_quantized_logits_within_tolerance(flavour):
    m = tiny(flavour)
    x = torch.tensor([PROMPT * 4])
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        ref = m(x)
        assert quantize_for_inference(m, "fp32") is m
        for kind, tol in TOLERANCE.items():
            q = quantize_for_inference(m, kind)
            n_linear = 2 * (7 if flavour == "llama" else 6) + 1            # 2 blocks + lm_head
            assert sum(isinstance(mod, LowPrecisionLinear) for mod in q.modules()) == n_linear
            err = (q(x) - ref).abs().max() / ref.abs().max()
            assert 0 < err < tol, (kind, float(err))
            twin = dequantized(m, kind)(x)                     # same weights, fp32 activations and kernels
            twin_tol = 1e-5 if kind == "int8" else tol        # half kinds also round the activations
            assert (q(x) - twin).abs().max() / ref.abs().max() < twin_tol
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())   # the original is untouched
    assert m.lm_head.weight.dtype == torch.float32


def test_quantized_model_decodes_through_both_engine_paths():
    q = quantize_for_inference(tiny("llama"), "int8")
    eng = Engine(q)
    one = eng.generate_batch(PROMPT, max_new_tokens=12, temperature=0.0, stop_tokens=[])[0]
    assert eng.generate_many([PROMPT, PROMPT[:3]], 12, stop_tokens=[])[0] == one[0]
    with pytest.raises(CfError, match="expected one of"):
        quantize_for_inference(q, "int4")


def test_chat_cli_decodes_with_int8_weights(tmp_path, monkeypatch, capsys):
    tok = tiny_tokenizer(tiny_world())
    ck = save_checkpoint(tmp_path / "sft", 0, tiny_model(tok, seq_len=64), tok, {})
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    chat_cli(["--checkpoint", str(ck), "--weights", "int8", "--temperature", "0", "--max-new-tokens", "4",
              "--no-tools"])
    assert capsys.readouterr().out.strip()              # a reply was written
    with pytest.raises(SystemExit):
        chat_cli(["--checkpoint", str(ck), "--weights", "int4"])
