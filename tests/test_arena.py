"""The automatic arena: held-out tasks with checkers, battles, Bradley–Terry with bootstrap intervals,
and a run's arena end to end (checkpoints wrapped as answerers, report.md, results.json, votes)."""
from __future__ import annotations

import json
import random

import pytest
import torch

from chatforge.eval.arena import (ArenaConfig, VoteStore, arena_tasks, battles, bootstrap_intervals, bradley_terry,
                             checker_judge, few_shots, play, run_arena, summarize, win_matrix)
from chatforge.world.build import WorldConfig, build_world, qa_items, write_world

IDK = "I don't know."


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=5, n_people=40, n_bios_per_person=2, n_problems=120, n_spelling=60,
                                   n_filler_per_entity=1))


def eval_items(world) -> dict:
    """The shape of <run>/sft_data/eval.json: held-out questions of the world."""
    rng = random.Random(0)
    return {"known": qa_items(world, world.known[-6:], rng)[::5], "unknown": qa_items(world, world.unknown[:6], rng)[::5],
            "problems": [p for p in world.problems if p["split"] == "test"],
            "letters": [t for t in world.letters if t["split"] == "test" and t["kind"] == "count_letter"],
            "identity": world.identity}


def test_every_checker_accepts_the_truth_and_rejects_a_refusal_or_wrong_answer(world):
    tasks = arena_tasks(eval_items(world), 4)
    assert {t.kind for t in tasks} == {"fact", "unknown", "math", "letters", "identity"}
    for t in tasks:
        assert t.check(t.reference), t
        assert t.check(IDK) == (t.kind == "unknown"), t
        assert not t.check("The answer is 123456789, Zzyzx Corp, made by nobody.")


def answerers(tasks):
    truth = {t.question: t.reference for t in tasks}
    every_other = {t.question: (t.reference if i % 2 else "no idea, maybe 999999") for i, t in enumerate(tasks)}
    return {"idk": lambda q: IDK, "oracle": truth.__getitem__, "half": every_other.__getitem__}


def test_oracle_ranks_first_and_always_idk_last(world):
    tasks = arena_tasks(eval_items(world), 4)
    replies = play(answerers(tasks), tasks)
    votes = battles(tasks, replies, checker_judge)
    assert len(votes) == 3 * len(tasks)
    summary = summarize(votes, list(replies), random.Random(0), n_boot=100)
    rows = summary["leaderboard"]
    assert [r["model"] for r in rows] == ["oracle", "half", "idk"]
    for r in rows:
        assert r["lo"] <= r["rating"] <= r["hi"]
    assert rows[0]["lo"] > rows[2]["hi"]              # clearly separated, not only in the point estimate
    assert rows[0]["losses"] == 0
    oracle_vs_idk = [v for v in votes if {v["model_a"], v["model_b"]} == {"oracle", "idk"}]
    # both right exactly on the unknown-people prompts: those are ties, the rest oracle wins
    assert sum(v["winner"] == "tie" for v in oracle_vs_idk) == sum(t.kind == "unknown" for t in tasks)
    w = summary["win_matrix"]
    assert w["oracle"]["idk"] > 0.5 and w["idk"]["oracle"] == pytest.approx(1 - w["oracle"]["idk"])
    assert w["oracle"]["oracle"] is None


def test_sides_alternate_between_prompts(world):
    tasks = arena_tasks(eval_items(world), 2)
    votes = battles(tasks, play({"x": lambda q: IDK, "y": lambda q: IDK}, tasks))
    assert [v["model_a"] for v in votes[:2]] == ["x", "y"]


def test_bootstrap_interval_shrinks_with_more_battles():
    few = [{"model_a": "a", "model_b": "b", "winner": "a"}] * 6 + [{"model_a": "a", "model_b": "b", "winner": "b"}] * 3
    many = few * 20
    w_few = bootstrap_intervals(few, ["a", "b"], random.Random(1), 200)
    w_many = bootstrap_intervals(many, ["a", "b"], random.Random(1), 200)
    assert w_many["a"][1] - w_many["a"][0] < 0.5 * (w_few["a"][1] - w_few["a"][0])
    bt = bradley_terry(many, ["a", "b"])
    assert w_many["a"][0] < bt["a"] < w_many["a"][1]
    assert win_matrix(few, ["a", "b"])["a"]["b"] == pytest.approx(6 / 9)


def test_votes_keep_the_people_when_the_checker_reruns(tmp_path):
    store = VoteStore(tmp_path / "votes.json")
    store.add("a", "b", "a")
    store.replace_judge("checker", [{"model_a": "a", "model_b": "b", "winner": "b"}] * 2)
    store.replace_judge("checker", [{"model_a": "a", "model_b": "b", "winner": "tie"}])
    judges = [v["judge"] for v in json.loads((tmp_path / "votes.json").read_text())]
    assert judges == ["human", "checker"]


def test_run_arena_end_to_end(tmp_path, world):
    from chatforge.model.checkpoint import save_checkpoint
    from chatforge.common import atomic_write_json
    from serve_helpers import tiny_model, tiny_tokenizer
    rd = tmp_path / "run"
    write_world(world, rd)
    ev = eval_items(world)
    atomic_write_json(rd / "sft_data" / "eval.json", ev)
    tok = tiny_tokenizer()
    save_checkpoint(rd / "base", 1, tiny_model("llama", 0, seq_len=256), tok, {})
    save_checkpoint(rd / "sft", 1, tiny_model("gpt2", 1, seq_len=256), tok, {})
    (rd / "report.md").write_text("# report\n\n## Stage times\n")
    VoteStore(rd / "arena" / "votes.json").add("base", "sft", "b", "hi")      # a person's vote
    tasks = arena_tasks(ev, 1)
    md, summary = run_arena(ArenaConfig(run=str(rd), n_per_kind=1, n_boot=50, device="cpu"),
                            answerers=answerers(tasks))
    names = [r["model"] for r in summary["leaderboard"]]
    assert set(names) == {"base", "sft", "oracle", "half", "idk"} and names[0] == "oracle"
    assert summary["accuracy"]["oracle"]["all"] == 1.0
    assert summary["human"]["n_battles"] == 1
    report = (rd / "report.md").read_text()
    assert report.startswith("# report") and report.count("<!-- arena -->") == 1 and "95% CI" in report
    run_arena(ArenaConfig(run=str(rd), n_per_kind=1, n_boot=20, device="cpu"), answerers=answerers(tasks))
    assert (rd / "report.md").read_text().count("## Arena") == 1                  # replaced, not appended
    res = json.loads((rd / "results.json").read_text())["arena"]
    assert res["n_battles"] == 10 * len(tasks) and res["conditions"]["oracle"]["rate"] == 1.0
    assert len(res["diffs"]) == 4 and next(iter(res["diffs"])).startswith("oracle - ")   # neighbours in the ranking
    votes = json.loads((rd / "arena" / "votes.json").read_text())
    assert sum(v["judge"] == "checker" for v in votes) == 10 * len(tasks) and votes[0]["judge"] == "human"
    assert (rd / "report" / "arena.png").stat().st_size > 1000
    assert len(few_shots(world, ev)) == 5


def test_cli_needs_held_out_items(tmp_path, capsys):
    from chatforge.cli import main
    with pytest.raises(SystemExit) as e:
        main(["arena", "--run", str(tmp_path)])
    assert e.value.code == 1 and "eval.json" in capsys.readouterr().err


def test_reward_model_judge_prefers_the_higher_score(world):
    from chatforge.eval.arena import rm_judge
    from chatforge.rl.reward import RewardModel, score_texts
    from serve_helpers import tiny_model, tiny_tokenizer
    tok = tiny_tokenizer()
    rm = RewardModel(tiny_model("llama", 0))
    torch.manual_seed(0)
    with torch.no_grad():
        rm.head.weight.normal_()      # the head starts at zero: every reply would tie
    task = arena_tasks(eval_items(world), 1)[0]
    a, b = "Paris is the capital of France.", "The quick brown fox."
    sa, sb = score_texts(rm, tok, [[task.question]] * 2, [a, b])
    judge = rm_judge(rm, tok)
    assert sa != sb
    assert judge(task, a, b) == ("a" if sa > sb else "b") and judge(task, b, a) == ("b" if sa > sb else "a")
    assert judge(task, a, a) == "tie"
