"""Preference loaders (ours, HH-RLHF, synthetic), the Bradley-Terry loss, and a tiny reward model that
must learn a separable preference."""
from __future__ import annotations

import json
import random

import pytest
import torch

from chatforge.common import CfError, data_dir, make_config
from chatforge.rl import preferences as P
from chatforge.rl import reward as R
from rl_helpers import ByteTokenizer, tiny_gpt

DATA = data_dir()  # CHATFORGE_DATA, else ../shared/data beside the checkout


def test_preference_file_errors_name_the_record(tmp_path):
    p = tmp_path / "prefs.jsonl"
    good = {"prompt": "q?", "chosen": "yes", "rejected": "no"}
    p.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "q?", "chosen": "yes"}) + "\n")
    with pytest.raises(CfError, match=r"prefs.jsonl:2: missing field 'rejected'"):
        P.load_preferences(p)
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": "yes "}) + "\n")
    with pytest.raises(CfError, match=r"prefs.jsonl:2: chosen and rejected texts are identical"):
        P.load_preferences(p)
    p.write_text(json.dumps({**good, "prompt": ["q?", "a"]}) + "\n")
    with pytest.raises(CfError, match=r"prefs.jsonl:1: 'prompt'"):
        P.load_preferences(p)
    p.write_text(json.dumps(good) + "\n")
    assert P.load_preferences(p)[0].prompt == ["q?"]


def test_hh_rlhf_loader():
    f = DATA / "hh-rlhf" / "helpful-online" / "test.jsonl.gz"
    if not f.exists():
        pytest.skip("shared/data/hh-rlhf absent")
    pairs = P.load_hh_rlhf_pairs(f)
    assert 1100 < len(pairs) <= 1135  # 1137 records, 2 identical pairs + a few irregular dialogues
    assert all(p.chosen != p.rejected and len(p.prompt) % 2 == 1 for p in pairs)
    with pytest.raises(CfError, match=r"test.jsonl.gz:\d+: chosen and rejected texts are identical"):
        P.load_hh_rlhf_pairs(f, strict=True)


def test_bt_loss():
    assert float(R.bt_loss(torch.zeros(3), torch.zeros(3))) == pytest.approx(0.6931, abs=1e-4)
    assert float(R.bt_loss(torch.tensor([5.0]), torch.tensor([-5.0]))) < 1e-4
    rc = torch.zeros(2, requires_grad=True)
    R.bt_loss(rc, torch.zeros(2)).backward()
    assert (rc.grad < 0).all()  # raising the chosen score lowers the loss


def test_hidden_rule_and_noisy_annotators():
    prob = {"question": "q", "answer": "29", "solution": "3*12=36. 36-7=29."}
    assert P.true_score("Happy to help! The answer is 29.", "29") > P.true_score("The answer is 29.", "29") \
        > P.true_score("Obviously, The answer is 29.", "29") > P.true_score("The answer is 30.", "29")
    assert P.true_score("The answer is 29.", "29") > P.true_score("Numbers can be tricky. The answer is 29.", "29")
    problems = [{"question": f"q{i}", "answer": str(10 + i), "solution": ""} for i in range(20)]
    noisy = P.synthetic_preferences(problems, 400, random.Random(0), beta=0.5)
    clean = P.synthetic_preferences(problems, 400, random.Random(0), beta=20.0)
    agree = lambda ps: sum(not p.meta["flipped"] for p in ps) / len(ps)
    assert 0.55 < agree(noisy) < agree(clean) and agree(clean) > 0.95
    assert all(p.chosen != p.rejected for p in noisy)
    del prob


def test_tiny_reward_model_learns_separable_preference():
    """chosen replies say 'yes', rejected say 'no' (with random padding): held-out accuracy -> ~1."""
    rng = random.Random(0)
    def pair(i):
        pad = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(0, 8)))
        return P.PrefPair([f"question {i}?"], f"{pad} yes", f"{pad} no", f"toy/{i}")
    pairs = [pair(i) for i in range(240)]
    tok = ByteTokenizer()
    cfg = make_config(R.RMConfig, epochs=2, batch_size=16, lr=3e-3, device="cpu", max_tokens=64)
    rm, m, path = R.train_rm(cfg, model=tiny_gpt(), tokenizer=tok, pairs=pairs[:200], val_pairs=pairs[200:], save=False)
    assert m["val_acc"] >= 0.9, m
    s = R.score_texts(rm, tok, [["q?"], ["q?"]], [" yes", " no"])
    assert s[0] > s[1]
