"""torch.compile: the auto rule, and compiled training steps that match eager ones."""
import shutil

import pytest
import torch

from chatforge.model.gpt import GPT, config_from_depth
from chatforge.train.pretrain import COMPILE_COST, compile_pays


def test_compile_pays_only_for_long_runs():
    cost, speedup = COMPILE_COST["cpu"]
    breakeven = cost / (1 - 1 / speedup)
    assert compile_pays(True, "cpu", 0.0) and not compile_pays(False, "cuda:0", 1e9)   # forced either way
    assert not compile_pays(None, "mps", 1e9)                                           # no figures: never
    if shutil.which("g++"):
        assert compile_pays(None, "cpu", 1.1 * breakeven) and not compile_pays(None, "cpu", 0.9 * breakeven)
    assert compile_pays(None, "cuda:1", 10 * COMPILE_COST["cuda"][0])


@pytest.mark.slow   # ~20 s of C++ compilation on a cold inductor cache
@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on CPU")
def test_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    eager = GPT(config_from_depth(1, 64, 16, "llama"))
    eager.init_weights()
    twin = GPT(config_from_depth(1, 64, 16, "llama"))
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin)
    x = torch.randint(0, 64, (2, 16))
    y = torch.randint(0, 64, (2, 16))
    for m in (eager, compiled):
        m(x, y).backward()
    torch.testing.assert_close(compiled(x, y), eager(x, y), atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
