"""GPU paths (pytest -m gpu, run by bench/gpu_check.sh; skipped without CUDA), and the check script's
no-GPU exit."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatforge.eval import core as ce
from chatforge.common import autocast_ctx
from chatforge.model.engine import Engine, naive_generate
from chatforge.model.gpt import GPT, config_from_depth

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _model(device, depth=2, vocab=512, seq_len=128):
    torch.manual_seed(0)
    m = GPT(config_from_depth(depth, vocab, seq_len))
    m.init_weights()
    return m.to(device).eval()


@pytest.mark.gpu
@cuda
def test_bf16_autocast_forward_matches_cpu_fp32():
    x = torch.randint(0, 512, (4, 100))
    ref = _model("cpu")(x)
    with autocast_ctx("cuda", "bfloat16"):
        got = _model("cuda")(x.cuda()).float().cpu()
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


@pytest.mark.gpu
@cuda
def test_kv_engine_matches_naive_on_cuda():
    m = _model("cuda")
    prompt = [1, 5, 9, 13]
    seqs, _ = Engine(m).generate_batch(prompt, max_new_tokens=24, temperature=0.0, stop_tokens=[])
    assert seqs[0] == naive_generate(m, prompt, 24)


@pytest.mark.gpu
@cuda
def test_core_scoring_cuda_matches_cpu_twin():
    g = torch.Generator().manual_seed(0)
    rows = [(torch.randint(0, 512, (n,), generator=g).tolist(), n // 2, n) for n in (7, 30, 64, 128)]
    fast = ce.score_rows(_model("cuda"), rows, 0, "cuda", batch_tokens=200)
    slow = ce.score_rows_naive(_model("cpu"), rows)
    for (lf, _), (ls, _) in zip(fast, slow):
        assert lf == pytest.approx(ls, abs=1e-3)


def test_gpu_check_script_without_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and "no CUDA GPU available" in r.stdout
