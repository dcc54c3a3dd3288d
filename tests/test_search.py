"""Majority vote, best-of-N selection, the best-of-N KL bound and the equal-budget search table."""
from __future__ import annotations

import math

import pytest

from chatforge.common import CfError
from chatforge.rl import search as S


def test_majority_vote():
    assert S.majority_vote(["3", "4", "4", None, "3", "4"]) == "4"
    assert S.majority_vote(["5", "6", "6", "5"]) == "5"  # tie -> first seen
    assert S.majority_vote([None, None]) is None and S.majority_vote([]) is None


def test_best_of_n_and_kl_bound():
    assert S.best_of_n([0.1, 0.9, 0.9, -1]) == 1
    with pytest.raises(CfError):
        S.best_of_n([])
    assert S.bon_kl_bound(1) == 0.0
    assert S.bon_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    ks = [S.bon_kl_bound(n) for n in (1, 2, 4, 8, 16)]
    assert ks == sorted(ks) and ks[-1] < math.log(16)


def test_search_table_equal_budget():
    probs = [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}]
    samples = [["The answer is 7.", "The answer is 1.", "The answer is 1.", "The answer is 9."],
               ["The answer is 5.", "The answer is 5.", "The answer is 2.", "The answer is 2."]]
    # the "RM" likes long answers about 9 / 2
    scorer = lambda texts, ps: [1.0 if ("9" in t or "2" in t) else 0.0 for t in texts]
    rows = {r["N"]: r for r in S.search_table(samples, probs, [1, 2, 4], scorer)}
    assert rows[1]["sample"] == 0.0 and rows[1]["bon_oracle"] == 0.0
    assert rows[2]["bon_oracle"] == 0.5 and rows[2]["majority"] == 0.0  # [7, 1] tie -> 7; [5, 5] -> 5
    assert rows[4]["majority"] == 0.5  # 1 wins for a; 5/2 tie -> 5 for b
    assert rows[4]["bon_oracle"] == 1.0 and rows[4]["bon_rm"] == 0.5  # RM picks 9 (wrong) and 2 (right)
    for r in rows.values():
        assert r["sample"] <= r["bon_oracle"] and r["majority"] <= r["bon_oracle"]
    with pytest.raises(CfError, match="N=8"):
        S.search_table(samples, probs, [8])


def test_best_of_n_with_a_perfect_checker_is_monotone_in_n():
    """The checker picks a correct candidate whenever one of the first N is: accuracy never falls as N
    grows (same candidates for every N); the RM and majority selectors carry no such guarantee."""
    import random as _random
    from chatforge.rl.search import bon_outcomes
    rng = _random.Random(0)
    P, ns = 50, [1, 2, 4, 8, 16]
    correct = [[rng.random() < 0.2 for _ in range(16)] for _ in range(P)]
    gold = [[2.0 * c - 0.05 * rng.randint(5, 30) for c in cs] for cs in correct]
    scores = [[rng.random() for _ in range(16)] for _ in range(P)]
    answers = [[str(rng.randint(0, 3)) for _ in range(16)] for _ in range(P)]
    outs = bon_outcomes(ns, correct, gold, scores, answers)
    acc = [sum(outs["checker"][N]["correct"]) for N in ns]
    assert acc == sorted(acc) and acc[-1] > acc[0]
    assert acc[-1] == sum(any(cs) for cs in correct)  # at N=16 the checker finds every solvable prompt
    assert outs["rm"][1]["correct"] == outs["checker"][1]["correct"]  # N=1: every selector takes the one sample
    # the RM picks its highest score: with scores equal to the gold score it is a perfect judge of gold
    perfect = bon_outcomes(ns, correct, gold, gold, answers)["rm"]
    g = [sum(perfect[N]["gold"]) for N in ns]
    assert g == sorted(g)
