"""The knowledge / hallucination / identity experiments: the world cannot leak who is known, the
evaluation can fail (batched greedy decoding is tested against one-at-a-time in tests/test_engine.py)."""
import statistics

import pytest

import chatforge.eval.knowledge as K
from chatforge.assistant import convo
from chatforge.tokenizer.tokenizer import train_tokenizer
from chatforge.train.sft_data import _ID_CORES, _ID_OPENERS, IDENTITY_HELDOUT, IDENTITY_TRAIN
from chatforge.world.build import build_world, qa_items, WorldConfig

import random


@pytest.fixture(scope="module")
def world():
    # the default preset's people part (few problems: they do not change how names are split)
    return build_world(WorldConfig(seed=3, n_people=340, known_fraction=0.353, k1_fraction=0.1765, n_bios_per_person=8,
                                   name_mentions=12, n_problems=200, n_spelling=100, n_filler_per_entity=2))


def test_tokenizer_cannot_tell_known_from_unknown_names(world):
    """Issue 12's leak: known names were 2 BPE tokens, unknown ones 3-8. With the directory pages,
    every group's names have the same token-length distribution."""
    tok = train_tokenizer((d["text"] for d in world.corpus_documents()), 4096)
    lengths = {g: [len(tok.encode(" " + p.name)) for p in world.group(g)] for g in ("qa", "heldout", "k1", "unknown")}
    means = {g: statistics.mean(v) for g, v in lengths.items()}
    assert max(means.values()) - min(means.values()) <= 0.25, means
    for g in ("k1", "unknown"):  # the whole distribution, not only the mean
        share = {n: v.count(n) / len(v) for v, n in ((lengths[g], n) for n in set(lengths["heldout"]))}
        ref = {n: lengths["heldout"].count(n) / len(lengths["heldout"]) for n in set(lengths["heldout"])}
        assert all(abs(share[n] - ref[n]) <= 0.15 for n in ref), (g, share, ref)


def test_without_directory_pages_the_leak_is_there(world):
    """The check above can fail: drop the directory pages and unknown names split into more tokens."""
    tok = train_tokenizer((d["text"] for d in world.corpus_documents() if d["source"] != "directory"), 4096)
    mean = lambda g: statistics.mean(len(tok.encode(" " + p.name)) for p in world.group(g))  # noqa: E731
    assert mean("unknown") - mean("heldout") > 0.5


def _items(world, group):
    return qa_items(world, world.group(group)[:10], random.Random(0))


def test_always_refusing_model_scores_zero_on_known_people(world, monkeypatch):
    """An eval that can fail: refusing everyone gives 0 accuracy on known people (and no
    hallucinations); answering with the truth gives 100%."""
    people = {g: _items(world, g) for g in ("qa", "heldout", "k1")}
    people = {"heldout_k8": people["heldout"], "heldout_k1": people["k1"], "train_qa": people["qa"],
              "unknown": _items(world, "unknown")}
    truth = {it["question"]: it["answer"] for v in people.values() for it in v}
    monkeypatch.setattr(K, "cloze_answers", lambda ck, items, **kw: ["" for _ in items])
    monkeypatch.setattr(K, "chat_replies", lambda ck, qs, **kw: [convo.refusal("them") for _ in qs])
    kn = K.knowledge_experiment(None, None, people)
    ha = K.hallucination_experiment(None, None, people)
    assert kn["conditions"]["heldout_k8"]["k"] == 0 and kn["conditions"]["heldout_k8"]["n"] == 50
    assert ha["conditions"]["known_with_idk"]["rate"] == 0 and ha["conditions"]["unknown_with_idk"]["rate"] == 0
    monkeypatch.setattr(K, "chat_replies", lambda ck, qs, **kw: [truth[q] + "." for q in qs])
    kn = K.knowledge_experiment(None, None, people)
    ha = K.hallucination_experiment(None, None, people)
    assert kn["conditions"]["heldout_k8"]["rate"] == 1.0 and kn["conditions"]["heldout_k1"]["rate"] == 1.0
    assert ha["conditions"]["unknown_with_idk"]["rate"] == 1.0  # an answer about the unknown is a hallucination
    assert kn["conditions"]["majority_baseline"]["rate"] < 0.5


def test_identity_wordings_held_out_and_judged_by_whole_words():
    held = [q for k in IDENTITY_HELDOUT for q in IDENTITY_HELDOUT[k]]
    trained = {q for k in IDENTITY_TRAIN for q in IDENTITY_TRAIN[k]}
    trained |= {q for kind in convo.IDENTITY_QUESTIONS.values() for q in kind[0]}
    assert len(set(held)) == len(held) >= 40 and not set(held) & trained
    # no core of a question and no opener is shared: a held-out wording is new as a whole
    assert not set(_ID_OPENERS[0]) & set(_ID_OPENERS[1])
    assert all(not set(train) & set(held_cores) for train, held_cores in _ID_CORES.values())
    ident = {"name": "Forge", "maker": "the chatforge project"}
    assert K.identity_judge(ident, "name", "I am Forge, a small assistant.")
    assert not K.identity_judge(ident, "name", "I was made by the chatforge project.")  # "forge" inside a word
    assert K.identity_judge(ident, "maker", "The chatforge project created me.")
    assert not K.identity_judge(ident, "maker", "I was made by a small lab.")


def test_run_knowledge_experiments_end_to_end_on_a_tiny_run(tmp_path):
    """SFT data -> SFT -> the ablation SFT -> results.json with the issue's ids and conditions."""
    import json

    from assistant_helpers import tiny_run
    from chatforge.train.sft import SFTConfig, sft
    from chatforge.train.sft_data import SFTMix, build_sft_data
    rd, _, _, _ = tiny_run(tmp_path)
    (rd / "sft_ablation").mkdir()  # a stale folder of an earlier run is replaced, never scored
    (rd / "sft_ablation" / "step_000999").mkdir()
    mix = SFTMix(n_known_qa=10, n_idk=6, n_identity=4, n_persona=2, n_math_per_style=2, n_letters_per_style=2,
                 n_search=2, n_eval_unknown=4)
    build_sft_data(rd, mix=mix)  # greedy probing of the (untrained) base, for real
    sft(SFTConfig(run=str(rd), max_steps=2, batch_size=8, device="cpu"))
    md = K.run_knowledge_experiments(rd, device="cpu", n_eval=5)
    res = json.loads((rd / "results.json").read_text())
    want = {"knowledge": {"heldout_k8", "heldout_k1", "train_qa", "majority_baseline"},
            "hallucination": {"unknown_with_idk", "unknown_without_idk", "known_with_idk", "known_without_idk"},
            "identity": {"no_data", "system_prompt", "with_data"}}
    for exp_id, conds in want.items():
        assert conds <= set(res[exp_id]["conditions"]), exp_id
        for c in res[exp_id]["conditions"].values():
            assert set(c) == {"k", "n", "rate", "ci"} and 0 <= c["ci"][0] <= c["rate"] <= c["ci"][1] <= 1
    assert "heldout_k8 - heldout_k1" in res["knowledge"]["diffs"]
    assert "unknown_with_idk - unknown_without_idk" in res["hallucination"]["diffs"]
    assert res["identity"]["conditions"]["with_data"]["n"] >= 40
    assert [p.name for p in (rd / "sft_ablation").iterdir()] == ["step_000002"]
    assert "target" in md and "### Identity" in md
