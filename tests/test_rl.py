"""GRPO math (advantages, ratio, k3 KL, Dr. GRPO), pass@k, rule rewards, a GRPO step on a toy task,
and bad input (raising rewards, policy/reference mismatch, no checkpoint overwritten)."""
from __future__ import annotations

import dataclasses
import json
import random

from itertools import combinations
from pathlib import Path

import pytest
import torch

from chatforge.common import CfError
from chatforge.assistant import tasks
from chatforge.common import make_config
from chatforge.rl import experiments, rollout
from chatforge.rl import grpo as rl
from rl_helpers import ByteTokenizer, tiny_gpt


# ----------------------------------------------------------------------------- pure functions

def test_k3_nonnegative_and_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(100, generator=g) * 3, torch.randn(100, generator=g) * 3
    assert (rl.k3_kl(a, b) >= 0).all()
    assert torch.allclose(rl.k3_kl(a, a), torch.zeros(100))
    # unbiased for KL(p||q) when samples come from p: check on two categoricals
    p = torch.tensor([0.7, 0.2, 0.1]); q = torch.tensor([0.3, 0.3, 0.4])
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    est = rl.k3_kl(p.log()[x], q.log()[x]).mean()
    assert abs(float(est) - float((p * (p / q).log()).sum())) < 0.01


def test_group_advantages_grpo_and_dr_grpo():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    a = rl.group_advantages(r)
    assert torch.allclose(a.mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(a[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)
    assert torch.equal(a[1], torch.zeros(4))  # zero-variance group teaches nothing
    d = rl.group_advantages(r, scale_std=False)  # Dr. GRPO: no std division
    assert torch.allclose(d[2], torch.tensor([-0.75, -0.75, -0.75, 2.25]))
    _, zero_var = rl.grpo_advantages_for(r.view(-1).tolist(), 4, "grpo")
    assert zero_var == pytest.approx(1 / 3)


def test_grpo_loss_normalizations_and_clipping():
    # two responses of lengths 2 and 4, both with advantage +1: GRPO's per-token weight is 1/|o_i|,
    # Dr. GRPO's is constant 1/(B * max_len)
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    adv = torch.tensor([1.0, 1.0])
    for norm, expect in (("grpo", [[-1 / 4, -1 / 4, 0, 0], [-1 / 8] * 4]), ("dr_grpo", [[-1 / 16, -1 / 16, 0, 0], [-1 / 16] * 4])):
        logp.grad = None
        loss, st = rl.grpo_loss(logp, logp.detach(), None, adv, mask, loss_norm=norm, max_len=8)
        loss.backward()
        assert torch.allclose(logp.grad, torch.tensor(expect)), norm
        assert st["ratio"] == pytest.approx(1.0)
    # ratio above 1 + eps with a positive advantage: clipped, no gradient
    logp2 = torch.full((1, 2), 0.5, requires_grad=True)
    loss, st = rl.grpo_loss(logp2, torch.zeros(1, 2), None, torch.tensor([1.0]), torch.ones(1, 2), clip_eps=0.2)
    loss.backward()
    assert torch.equal(logp2.grad, torch.zeros(1, 2)) and st["clip_frac"] == 1.0
    # ... but a negative advantage is not clipped there (pessimistic min)
    logp2.grad = None
    rl.grpo_loss(logp2, torch.zeros(1, 2), None, torch.tensor([-1.0]), torch.ones(1, 2))[0].backward()
    assert (logp2.grad > 0).all()
    # KL term: pulls logp towards the reference
    logp3 = torch.zeros(1, 3, requires_grad=True)
    loss, st = rl.grpo_loss(logp3, logp3.detach(), torch.full((1, 3), -1.0), torch.zeros(1), torch.ones(1, 3), kl_coef=1.0)
    loss.backward()
    assert st["kl"] > 0 and (logp3.grad > 0).all()


def test_pass_at_k_matches_combinatorics():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                total = list(combinations(range(n), k))
                brute = sum(any(i < c for i in s) for s in total) / len(total)
                assert rollout.pass_at_k(n, c, k) == pytest.approx(brute)
    assert rollout.pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_answer_extraction_and_rule_reward():
    assert tasks.extract_answer("3*12=36. 36-7=29. The answer is 29.") == "29"
    assert tasks.extract_answer("blah #### 1,234") == "1234"
    assert tasks.extract_answer("it costs $18.00 in total") == "18"
    assert tasks.extract_answer("no number") is None
    assert tasks.rule_reward("The answer is 29.", "29") == pytest.approx(1.1)
    assert tasks.rule_reward("29", "29") == pytest.approx(1.0)
    assert tasks.rule_reward("The answer is 30.", "29") == pytest.approx(0.1)


def test_pack_sequences_targets_only_sampled_response_tokens():
    ids, tgt = rollout.pack_sequences([[1, 2, 3]], [[4, 5, 6]], [[1, 0, 1]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 5]]
    assert tgt.tolist() == [[-1, -1, 4, -1, 6]]


def test_reward_that_raises_is_a_clear_error():
    def bad(texts, probs):
        raise ZeroDivisionError("boom")
    with pytest.raises(CfError, match="reward 'mine' raised ZeroDivisionError"):
        rl.safe_rewards(bad, ["a"], [{"question": "q?"}], "mine")
    with pytest.raises(CfError, match="non-finite"):
        rl.safe_rewards(lambda t, p: [float("nan")], ["a"], [{"question": "q?"}], "mine")


# ----------------------------------------------------------------------------- a GRPO step on a toy task

PRINTABLE = {ByteTokenizer().encode(chr(c))[0] for c in range(32, 127)}


def _mass_on_printable(model, prompt):
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt]))[0, -1], -1)
    return float(probs[sorted(PRINTABLE)].sum())


def test_grpo_increases_probability_of_rewarded_outputs():
    """Reward = the first response token is a printable byte; a few GRPO updates must raise its mass."""
    from chatforge.model.engine import Engine
    tok = ByteTokenizer()
    policy = tiny_gpt()
    ref = tiny_gpt()
    ref.load_state_dict(policy.state_dict())
    cfg = make_config(rl.RLConfig, group_size=16, max_new_tokens=2, lr=1e-2, kl_coef=0.01, optimizer="adamw", device="cpu")
    from chatforge.model.optim import build_optimizer
    opt = build_optimizer(policy, cfg.optim)
    engine = Engine(policy, tok)
    prompt = tasks.prompt_tokens(tok, "hi")
    before = _mass_on_printable(policy, prompt)
    stops = rollout.stop_ids(tok)
    for step in range(12):
        outs = rollout.sample_group(engine, prompt, cfg.group_size, cfg.max_new_tokens, 1.0, None, step, stops)
        rewards = [float(bool(r) and r[0] in PRINTABLE) for r, _ in outs]
        adv, _ = rl.grpo_advantages_for(rewards, cfg.group_size, "grpo")
        stats = rl.rl_update(policy, ref, opt, [prompt] * len(outs), [r for r, _ in outs], [m for _, m in outs],
                             adv, cfg, "cpu", tok.bos_id)
    after = _mass_on_printable(policy, prompt)
    assert after > before + 0.1, (before, after)
    assert stats["kl"] > 0


def _save(tmp_path: Path, model, tok, name: str) -> Path:
    from chatforge.model.checkpoint import save_checkpoint
    return Path(save_checkpoint(tmp_path / name, 1, model, tok, {}))


def test_train_rl_end_to_end_and_failed_run_writes_nothing(tmp_path, monkeypatch):
    """train_rl with an in-process policy: logs the metrics; a raising reward leaves the output alone."""
    tok = ByteTokenizer()
    probs = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(6)]
    cfg = make_config(rl.RLConfig, run=str(tmp_path / "run"), out=str(tmp_path / "run" / "rl"), steps=2, prompts_per_step=2,
                      group_size=4, max_new_tokens=4, eval_k=2, eval_every=0, device="cpu", reward="random")
    path, m = rl.train_rl(cfg, policy=tiny_gpt(), tokenizer=tok, train_problems=probs, eval_problems=probs[:2])
    h = m["history"][-1]
    for key in ("reward", "zero_var_frac", "resp_len", "kl", "gen_s", "train_s"):
        assert key in h
    assert "pass@1" in m["after"] and "pass@2" in m["after"] and 0 < m["gen_share"] < 1
    assert path.exists()
    before = sorted(p.name for p in (tmp_path / "run" / "rl").iterdir())

    def boom(texts, ps):
        raise RuntimeError("reward server down")
    cfg2 = dataclasses.replace(cfg, reward="rm", steps=5)
    with pytest.raises(CfError, match="reward server down"):
        rl.train_rl(cfg2, policy=tiny_gpt(), tokenizer=tok, train_problems=probs, eval_problems=[], rm_scorer=boom)
    assert sorted(p.name for p in (tmp_path / "run" / "rl").iterdir()) == before


def test_policy_reference_mismatch_names_the_checkpoint(tmp_path):
    tok = ByteTokenizer()
    a = _save(tmp_path, tiny_gpt(), tok, "a")
    b = _save(tmp_path, tiny_gpt(n_embd=64), tok, "b")
    cfg = make_config(rl.RLConfig, init=str(a), ref=str(b), out=str(tmp_path / "out"), device="cpu")
    with pytest.raises(CfError, match=r"step_000001: model shape differs"):
        rl.train_rl(cfg, train_problems=[{"question": "q", "answer": "1"}], eval_problems=[])
    assert not (tmp_path / "out").exists()
    from chatforge.tokenizer.tokenizer import train_tokenizer
    other = train_tokenizer(["the answer is 42. " * 20], 300)
    c = _save(tmp_path, tiny_gpt(vocab=300), tok, "c")
    d = _save(tmp_path, tiny_gpt(vocab=300), other, "d")
    with pytest.raises(CfError, match=r"d/step_000001: tokenizer differs"):
        rl.train_rl(make_config(rl.RLConfig, init=str(c), ref=str(d), out=str(tmp_path / "out"), device="cpu"),
                    train_problems=[{"question": "q", "answer": "1"}], eval_problems=[])
    with pytest.raises(CfError, match="checkpoint not found"):
        rl.train_rl(make_config(rl.RLConfig, init=str(tmp_path / "nope"), out=str(tmp_path / "out"), device="cpu"))


def test_speedrun_stages_smoke(tmp_path):
    """run_rl_stage and run_rlhf_stage on a tiny untrained model: they run, write their artifacts and
    return markdown + metrics (quality is measured in dev/LOG.md, not here)."""
    tok = ByteTokenizer()
    _save(tmp_path / "run", tiny_gpt(seq_len=256), tok, "sft")
    md, m = experiments.run_rl_stage(tmp_path / "run", steps=2, eval_problems=3, eval_k=2, prompts_per_step=2,
                                     group_size=2, max_new_tokens=6)
    assert "shuffled-reward control" in md and (tmp_path / "run" / "report" / "rl_reward.png").exists()
    assert m["rl_steps"] == 2 and Path(m["rl_checkpoint"]).exists()
    res = json.loads((tmp_path / "run" / "results.json").read_text())["rl"]
    assert set(res["conditions"]) == {"sft", "grpo", "control"} and res["conditions"]["sft"]["n"] == 3
    assert set(res["diffs"]) == {"grpo - sft", "control - sft"} and len(res["curves"]["control"]) == 2
    md, m = experiments.run_preference_stage(tmp_path / "run", n_prompts=8, n_own=4, n_bon=3, ns=(1, 2, 4),
                                             max_new_tokens=12, eval_problems=3, eval_k=2, rm_epochs=1)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(res["best_of_n"]["conditions"]) == {f"{s}_{n}" for s in ("checker", "rm", "majority") for n in (1, 2, 4)}
    assert set(res["best_of_n"]["gold"]) == {"checker", "rm", "majority"} and "sft" in res["dpo"]["conditions"]
    assert (tmp_path / "run" / "report" / "best_of_n.png").exists() and "Best-of-N" in md
    md, m = experiments.run_rlhf_stage(tmp_path / "run", budget_s=4, n_pairs=40, n_test=3, ns=(1, 2), max_new_tokens=6,
                              ei_problems=3, ei_steps=2)
    assert "best-of-N (RM)" in md and len(m["search"]) == 2
    assert (tmp_path / "run" / "report" / "rlhf_overoptimization.png").exists()
    assert (tmp_path / "run" / "rm").exists() and (tmp_path / "run" / "rlhf").exists()


def _bandit(reward_kind: str, steps: int = 100, G: int = 8, seed: int = 0) -> float:
    """GRPO on a two-armed Bernoulli bandit (arm 0 pays with p=0.8, arm 1 with p=0.2): a softmax policy
    over two logits, G pulls per step, group advantages and the GRPO loss of grpo.py. Returns
    P(better arm) at the end. ``shuffled``: the control, each group's rewards permuted."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    logits = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.2)
    for _ in range(steps):
        probs = torch.softmax(logits, 0)
        arms = torch.multinomial(probs.detach(), G, replacement=True, generator=g)  # (G,)
        rewards = [float(rng.random() < (0.8 if a == 0 else 0.2)) for a in arms.tolist()]
        if reward_kind == "shuffled":
            rewards = rl.shuffle_within_groups(rewards, G, rng)
        adv = rl.group_advantages(torch.tensor(rewards).view(1, G)).view(G)
        logp = torch.log_softmax(logits, 0)[arms].view(G, 1)  # (B=G, T=1)
        loss, _ = rl.grpo_loss(logp, logp.detach(), None, adv, torch.ones(G, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(torch.softmax(logits.detach(), 0)[0])


def test_grpo_bandit_converges_to_the_better_arm_and_the_shuffled_control_does_not():
    grpo = [_bandit("rule", seed=s) for s in range(6)]
    control = [_bandit("shuffled", seed=s) for s in range(6)]  # a random walk with no drift
    assert min(grpo) > 0.9, grpo
    assert max(control) < 0.9 and 0.3 < sum(control) / len(control) < 0.7, control
