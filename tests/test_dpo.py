"""DPO loss (value, gradient signs) and a tiny DPO run that learns a toy preference."""
from __future__ import annotations

import math
import random

import pytest
import torch

from chatforge.common import make_config
from chatforge.rl import dpo
from chatforge.rl.preferences import PrefPair
from rl_helpers import ByteTokenizer, tiny_gpt


def test_dpo_loss_value_and_gradient_sign():
    z = torch.zeros(4)
    loss, cr, rr = dpo.dpo_loss(z, z, z, z, beta=0.1)
    assert float(loss) == pytest.approx(math.log(2)) and torch.equal(cr, z)
    pc = torch.zeros(2, requires_grad=True)
    pr = torch.zeros(2, requires_grad=True)
    loss, _, _ = dpo.dpo_loss(pc, pr, torch.zeros(2), torch.zeros(2), beta=0.5)
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # up-weight chosen, down-weight rejected
    # only differences to the reference matter: shifting policy and reference together changes nothing
    a = dpo.dpo_loss(torch.tensor([1.0]), torch.tensor([-2.0]), torch.tensor([0.5]), torch.tensor([0.0]), 0.2)[0]
    b = dpo.dpo_loss(torch.tensor([4.0]), torch.tensor([1.0]), torch.tensor([3.5]), torch.tensor([3.0]), 0.2)[0]
    assert float(a) == pytest.approx(float(b))


def test_reply_row_targets_only_the_final_reply():
    tok = ByteTokenizer()
    ids, mask = dpo.reply_row(tok, ["hi", "ho", "q"], "ab", 64)
    scored = [t for t, m in zip(ids, mask) if m]
    assert scored == [ord("a"), ord("b"), tok.special("<|assistant_end|>")]
    assert len(ids) == len(mask)


def test_tiny_dpo_learns_toy_preference():
    rng = random.Random(0)
    pairs = [PrefPair([f"q{i}"], "yes" + rng.choice(["", "!"]), "no" + rng.choice(["", "!"]), f"toy/{i}") for i in range(120)]
    tok = ByteTokenizer()
    cfg = make_config(dpo.DPOConfig, epochs=2, batch_size=16, lr=3e-3, beta=0.5, device="cpu", max_tokens=48)
    policy = tiny_gpt()
    prompt = dpo.reply_row(tok, ["q999"], "x", 48)[0][:-2]  # up to <|assistant_start|>
    def p_yes(m):
        with torch.no_grad():
            pr = torch.softmax(m(torch.tensor([prompt]))[0, -1], -1)
        return float(pr[ord("y")] / (pr[ord("y")] + pr[ord("n")]))
    before = p_yes(policy)
    policy, m, _ = dpo.train_dpo(cfg, policy=policy, tokenizer=tok, pairs=pairs[:100], val_pairs=pairs[100:], save=False)
    assert m["val_acc"] >= 0.9 and p_yes(policy) > max(before, 0.8)
