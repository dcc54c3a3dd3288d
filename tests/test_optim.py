"""Optimizers and schedules: schedule shapes, Newton-Schulz orthogonality, Muon learns, grouping."""
import pytest
import torch

from chatforge.common import CfError
from chatforge.model import optim
from chatforge.model.optim import (Muon, OptimConfig, build_optimizer, lr_at, newton_schulz, newton_schulz_batched,
                                   split_params)


def test_cosine_schedule_shape():
    cfg = OptimConfig(schedule="cosine", warmup=10, final_lr_frac=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))           # warmup rises linearly
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))          # then never rises
    assert lr_at(55, 100, cfg) == pytest.approx(0.55)               # half-way: (1 + 0.1) / 2
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)


def test_wsd_schedule_shape():
    cfg = OptimConfig(schedule="wsd", warmup=5, final_lr_frac=0.0, decay_frac=0.2)
    lrs = [lr_at(s, 100, cfg) for s in range(101)]
    assert lrs[4] == 1.0 and all(v == 1.0 for v in lrs[5:81])       # stable until 80%
    assert lrs[90] == pytest.approx(0.5) and lrs[100] == 0.0        # linear decay to final
    with pytest.raises(CfError, match="schedule"):
        lr_at(0, 10, OptimConfig(schedule="nope"))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 0.05)])  # bf16: 8-bit mantissa
@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (48, 48)])
def test_newton_schulz_is_nearly_orthogonal(shape, dtype, tol):
    g = torch.Generator().manual_seed(0)
    G = torch.randn(shape, generator=g) @ torch.diag(torch.logspace(-1, 0, shape[1]))  # condition ~10+
    X = newton_schulz(G, dtype=dtype)
    s = torch.linalg.svdvals(X)
    # the quintic's fixed band after 5 steps is about [0.7, 1.2]; the smallest singular values of an
    # ill-conditioned input converge slowest, so allow a little more below
    assert s.max() < 1.25 and s.min() > 0.5, s
    # same singular vectors as G's SVD: U^T X V is diagonal, with positive entries in the band
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    M = U.T @ X @ Vh.T
    assert (M - torch.diag(M.diagonal())).abs().max() < tol
    assert M.diagonal().min() > 0.5


def test_batched_newton_schulz_matches_the_per_matrix_reference():
    g = torch.Generator().manual_seed(1)
    mats = [torch.randn(s, generator=g) for s in [(48, 48), (96, 32), (32, 96), (48, 48), (96, 32), (16, 40)]]
    fast = newton_schulz_batched(mats, dtype=torch.float32)
    for G, X in zip(mats, fast):
        assert X.shape == G.shape
        torch.testing.assert_close(X, newton_schulz(G, dtype=torch.float32), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-3)])
def test_batched_muon_steps_like_the_per_matrix_muon(monkeypatch, dtype, atol):
    # Newton-Schulz runs in bf16 on CPUs with native bf16 (ns_dtype), so pin the dtype: in fp32 the
    # two paths agree to rounding; in bf16 (8 mantissa bits) the fused baddbmm and the separate
    # matmuls round differently, by up to ~2e-3 after three steps of lr 0.05.
    monkeypatch.setattr(optim, "ns_dtype", lambda G: dtype)
    torch.manual_seed(0)
    shapes = [(24, 24), (64, 24), (24, 64), (24, 24)]
    ps = {k: [torch.nn.Parameter(torch.randn(s)) for s in shapes] for k in ("ref", "fast")}
    for a, b in zip(ps["ref"], ps["fast"]):
        b.data.copy_(a.data)
    start = [p.detach().clone() for p in ps["ref"]]
    opts = {"ref": Muon(ps["ref"], lr=0.05, weight_decay=0.1, batched=False),
            "fast": Muon(ps["fast"], lr=0.05, weight_decay=0.1)}
    for _ in range(3):   # momentum state carries across steps
        grads = [torch.randn(s) for s in shapes]
        for k in opts:
            for p, gr in zip(ps[k], grads):
                p.grad = gr.clone()
            opts[k].step()
    for a, b in zip(ps["ref"], ps["fast"]):
        torch.testing.assert_close(b, a, atol=atol, rtol=1e-4 if dtype == torch.float32 else 2e-2)
    assert all((a - s).abs().max() > 0.05 for a, s in zip(ps["ref"], start))   # the steps moved them


def test_muon_reduces_loss_on_a_tiny_problem():
    g = torch.Generator().manual_seed(0)
    X, W_true = torch.randn(256, 16, generator=g), 0.2 * torch.randn(16, 8, generator=g)
    Y = X @ W_true
    W = torch.nn.Parameter(torch.zeros(16, 8))
    opt = Muon([W], lr=0.1)
    losses = []
    for t in range(60):   # Muon's step has a fixed size, so decay the lr to converge
        opt.param_groups[0]["lr"] = 0.1 * (1 - t / 60)
        loss = ((X @ W - Y) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.01 * losses[0]
    with pytest.raises(CfError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


def tiny_gpt(tie: bool):
    from chatforge.model.gpt import GPT, config_from_depth
    cfg = config_from_depth(1, 300, 16, "gpt2" if tie else "llama")
    m = GPT(cfg)
    m.init_weights()
    return m


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_build_optimizer_covers_every_param_once_and_roundtrips(kind):
    model = tiny_gpt(tie=kind == "adamw")
    cfg = OptimConfig(optimizer=kind, lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    opt = build_optimizer(model, cfg)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert ("muon" in opt.optimizers) == (kind == "muon")
    x = torch.randint(0, 300, (2, 16))
    model(x, x).backward()
    opt.set_lr(0.5)
    assert all(g["lr"] == 0.5 * g["base_lr"] for g in opt.param_groups)
    opt.step()
    state = opt.state_dict()
    opt2 = build_optimizer(model, cfg)
    opt2.load_state_dict(state)
    assert opt2.state_dict()["adamw"]["state"].keys() == state["adamw"]["state"].keys()
    # split_params heuristics (for models without param_groups) agree with gpt.py's own grouping
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model
    heur, own = split_params(Plain()), model.param_groups()
    assert {k: [id(p) for p in v] for k, v in heur.items()} == {k: [id(p) for p in v] for k, v in own.items()}


def test_fp32_training_keeps_newton_schulz_in_fp32(monkeypatch):
    # `--dtype float32` on a bf16 CPU stands in for a CPU without bf16: Muon must compute the same
    # update there, so its Newton-Schulz follows the training dtype instead of the hardware.
    monkeypatch.setattr(optim, "ns_dtype", lambda G: torch.bfloat16)   # as on a bf16 CPU
    model = tiny_gpt(tie=False)
    cfg = OptimConfig(optimizer="muon", muon_lr=0.02)
    assert build_optimizer(model, cfg, "float32").optimizers["muon"].dtype == torch.float32
    assert build_optimizer(model, cfg, "bfloat16").optimizers["muon"].dtype is None   # the hardware's choice
    G = torch.randn(24, 40)
    assert torch.equal(optim._orthogonalize_one(G, 5, torch.float32), newton_schulz(G, dtype=torch.float32))
