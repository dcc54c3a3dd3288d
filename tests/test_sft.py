"""SFT: the loss mask, overfitting a handful of conversations, the stage's files and errors."""
import json
import re

import pytest
import torch
import torch.nn.functional as F

from assistant_helpers import tiny_model, tiny_run, tiny_tokenizer, tiny_world  # noqa: F401 (fixtures)
from chatforge.assistant import convo
from chatforge.common import CfError, make_config
from chatforge.tokenizer.tokenizer import load_conversations
from chatforge.model.batching import collate
from chatforge.train.sft import SFTConfig, render_rows, sft, train_sft
from chatforge.train.sft_data import SFTMix, build_sft_data
from chatforge.world.pages import short_answer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(tiny_world())


CONV = convo.chat("What is 12*7? Use the calculator.",
                  [convo.text("Let me compute. "), convo.tool_call("calculator", "12*7"), convo.tool_output("84"),
                   convo.text("It is 84.")])


def test_collate_shifts_and_masks(tok):
    rows = render_rows(tok, [CONV, convo.chat("hi", "hello")], 256)
    x, y = collate(rows, tok.bos_id)
    for b, (ids, mask) in enumerate(rows):
        n = len(ids) - 1
        assert x[b, :n].tolist() == ids[:-1]
        want = [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
        assert y[b, :n].tolist() == want
        assert (y[b, n:] == -1).all() and (x[b, n:] == tok.bos_id).all()
    # targets are exactly the assistant's text, tool call and <|assistant_end|>, never user or output
    ids, mask = rows[0]
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    assert "Let me compute" in trained and "84" in trained and "What is" not in trained
    assert tok.special("<|output_start|>") not in [t for t, m in zip(ids, mask) if m]


def test_loss_ignores_user_and_tool_output_tokens(tok):
    """Changing what a user/tool-output position would predict leaves the loss (and its gradient)
    unchanged; changing an assistant target changes it."""
    model = tiny_model(tok)
    (ids, mask), = render_rows(tok, [CONV], 256)
    x, y = collate([(ids, mask)], tok.bos_id)
    logits = model(x).detach().requires_grad_(True)                    # (1, T, V)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
    loss.backward()
    g = logits.grad[0].abs().sum(-1)                                  # (T,) gradient per position
    user_pos = [t for t in range(len(ids) - 1) if mask[t + 1] == 0]   # predicting a prompt/output token
    asst_pos = [t for t in range(len(ids) - 1) if mask[t + 1] == 1]
    out_pos = [t for t in range(len(ids) - 1) if ids[t + 1] == tok.special("<|output_start|>")]
    assert out_pos and set(out_pos) <= set(user_pos)
    assert (g[user_pos] == 0).all() and (g[asst_pos] > 0).all()
    torch.set_grad_enabled(False)
    base = float(model(x, targets=y))
    for pos in (user_pos[3], out_pos[0] + 1):                         # a user token, a tool-output token
        ids2 = list(ids)
        ids2[pos + 1] = (ids2[pos + 1] + 1) % 256
        _, y2 = collate([(ids2, mask)], tok.bos_id)
        assert float(model(x, targets=y2)) == base
    ids3 = list(ids)
    ids3[asst_pos[0] + 1] = (ids3[asst_pos[0] + 1] + 1) % 256          # control: an assistant target
    _, y3 = collate([(ids3, mask)], tok.bos_id)
    assert float(model(x, targets=y3)) != base
    torch.set_grad_enabled(True)


def test_tiny_model_overfits_a_handful_of_conversations(tok):
    convs = [convo.chat("Where was Kalo Berg born?", "Kalo Berg was born in Misaford."),
             convo.chat("What is your name?", "My name is Forge."),
             convo.chat("Who is Zed Quo?", "I don't know who Zed Quo is."), CONV,
             convo.chat("Spell cat.", "cat is spelled c-a-t.", system="You are Forge.")]
    model = tiny_model(tok)
    cfg = make_config(SFTConfig, max_steps=30, batch_size=5, lr=5e-3, warmup=3, eval_every=0, device="cpu")
    m = train_sft(cfg, model, tok, convs, val_convs=convs[:2])
    assert m["train_loss"] < 0.15 * m["first_loss"], (m["first_loss"], m["train_loss"])
    assert m["val_loss"] < 0.3 * m["first_loss"] and not model.training


def test_sft_stage_writes_checkpoint_in_pretraining_format(tmp_path):
    from chatforge.model.checkpoint import load_checkpoint
    rd, world, tok, _ = tiny_run(tmp_path)
    mix = SFTMix(n_known_qa=20, n_idk=8, n_identity=6, n_persona=4, n_math_per_style=5, n_letters_per_style=4,
                 n_search=4, n_eval_known=5, n_eval_unknown=5, probe_samples=2, probe_tokens=4)
    summary = build_sft_data(rd, mix=mix)                  # probes the (untrained) base model for real
    assert summary["probe"]["probed"] == 20
    assert summary["parts"]["idk_unknown"] == 8 and summary["parts"]["identity"] == 6
    ev = json.loads((rd / "sft_data" / "eval.json").read_text())
    train = load_conversations(rd / "sft_data" / "train.jsonl")
    said = " ".join(c["messages"][-2]["content"] + convo.assistant_text(c) for c in train)
    assert ev["known"] and ev["unknown"]
    assert all(it["name"] not in said for it in ev["known"] + ev["unknown"])  # held-out people stay out
    path = sft(SFTConfig(run=str(rd), max_steps=3, batch_size=4, device="cpu"))
    assert path.parent == rd / "sft" and path.name == "step_000003"
    ck = load_checkpoint(rd / "sft")
    assert ck.state["metrics"]["steps"] == 3 and ck.state["metrics"]["val_loss"] > 0
    assert ck.state["train_config"]["run"] == str(rd)
    assert ck.tokenizer.n_vocab == tok.n_vocab


def test_sft_errors_name_file_and_line(tmp_path):
    rd, _, _, _ = tiny_run(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(convo.chat("hi", "hello")) + "\n" + '{"messages": [{"role": "user"}]\n')
    with pytest.raises(CfError, match=r"bad\.jsonl:2"):
        sft(SFTConfig(run=str(rd), data=str(bad), max_steps=1, device="cpu"))
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "x"}]}) + "\n")
    with pytest.raises(CfError, match=r"bad\.jsonl:1: messages\[0\]\.role"):
        sft(SFTConfig(run=str(rd), data=str(bad), max_steps=1, device="cpu"))
    with pytest.raises(CfError, match="not found"):
        sft(SFTConfig(run=str(rd), data=str(tmp_path / "none.jsonl"), device="cpu"))


def test_build_sft_data_turns_wrong_probe_answers_into_refusals(tmp_path):
    """With a stub probe (every other known person answered right), refusals appear exactly where the
    'model' was wrong; refuse_known_wrong=False keeps the truth; the ablation has no refusals."""
    rd, _, _, _ = tiny_run(tmp_path)
    seen = []

    def stub(items):
        seen.extend(items)
        return [[it["answer"]] * 3 if i % 2 == 0 else ["Nowhere", "Nowhere", it["answer"]]
                for i, it in enumerate(items)]
    mix = SFTMix(n_known_qa=10, n_idk=4, n_identity=2, n_persona=2, n_math_per_style=2, n_letters_per_style=2,
                 n_search=2, n_eval_known=4, n_eval_unknown=4, val_fraction=0.01)
    s = build_sft_data(rd, mix=mix, probe_fn=stub)
    assert s["probe"]["kept_answer"] == 5 and s["probe"]["refused"] == 5 and s["probe"]["confidently_wrong"] == 5
    train = load_conversations(rd / "sft_data" / "train.jsonl") + load_conversations(rd / "sft_data" / "val.jsonl")
    by_q = {c["messages"][0]["content"]: convo.assistant_text(c) for c in train}
    for i, it in enumerate(seen):
        reply = by_q[it["question"]]
        assert convo.is_refusal(reply) == (i % 2 == 1)
        assert it["name"] in reply if i % 2 else reply == short_answer(it["attribute"], it["answer"])
    ablation = load_conversations(rd / "sft_data" / "train_ablation.jsonl")
    assert not any(convo.is_refusal(convo.assistant_text(c)) for c in ablation)
    seen.clear()
    build_sft_data(rd, mix=SFTMix(**{**mix.__dict__, "refuse_known_wrong": False}), probe_fn=stub)
    train = load_conversations(rd / "sft_data" / "train.jsonl") + load_conversations(rd / "sft_data" / "val.jsonl")
    by_q = {c["messages"][0]["content"]: convo.assistant_text(c) for c in train}
    assert all(not convo.is_refusal(by_q[it["question"]]) for it in seen)


def test_build_sft_data_writes_the_midtraining_drill(tmp_path):
    """mid.jsonl: the asked number of calculator traces and worked solutions, on chains that are neither
    a held-out expression nor in the SFT mixture's own drill; a rebuild without a drill removes it."""
    rd, _, _, _ = tiny_run(tmp_path)
    small = dict(n_known_qa=4, n_idk=2, n_identity=2, n_persona=2, n_math_per_style=2, n_letters_per_style=2,
                 n_search=2, n_eval_known=4, n_eval_unknown=4)
    s = build_sft_data(rd, probe=False, mix=SFTMix(**small, mid_tool_drill=30, mid_worked_drill=20, n_tool_drill=5,
                                                      n_worked_drill=5))
    mid = load_conversations(rd / "sft_data" / "mid.jsonl")
    assert s["mid"] == len(mid) == 50
    calls = [p for c in mid for p in c["messages"][1]["content"] if isinstance(p, dict) and p.get("type") == "tool_call"]
    assert len(calls) == 30 and all(p["name"] == "calculator" for p in calls)
    test = {p["expression"] for p in json.loads((rd / "world" / "world.json").read_text())["problems"]
            if p["split"] == "test"}
    sft_convs = load_conversations(rd / "sft_data" / "train.jsonl") + load_conversations(rd / "sft_data" / "val.jsonl")
    drill_exprs = {re.search(r"\d+(?:[+-]\d+)+", c["messages"][0]["content"]).group() for c in mid}
    assert len(drill_exprs) == 50 and not drill_exprs & test
    assert s["parts"]["math"] == 3 * 2 + 10 and len(sft_convs) == s["train"] + s["val"]
    build_sft_data(rd, probe=False, mix=SFTMix(**small))
    assert not (rd / "sft_data" / "mid.jsonl").exists()
