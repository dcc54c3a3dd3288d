"""Tools: the safe calculator, BM25 search (fast path vs naive twin), and the dispatcher."""
import math
import random

import pytest

from chatforge.assistant.tools import SearchIndex, ToolBox, calculate, calculator, run_tool
from chatforge.world.build import WorldConfig, build_world


@pytest.mark.parametrize("expr,want", [("12*7", "84"), ("3*12-7", "29"), ("(2+3)*4", "20"), ("168/2", "84"),
                                       ("10/4", "2.5"), ("2**10", "1024"), ("2^10", "1024"), ("-5+3", "-2"),
                                       ("7//2", "3"), ("7%3", "1"), ("-(3-10)", "7"), ("1.5*4", "6"),
                                       ("12 × 7 =", "84"), ("10/3", "3.33333333333")])
def test_calculator_correct(expr, want):
    assert calculator(expr) == want


@pytest.mark.parametrize("expr", ["__import__('os')", "__import__('os').system('id')", "x+1", "abs(-3)",
                                  "().__class__", "9**9**9", "2**100000", "10**101", "1e308*10", "1/0",
                                  "5%0", "(-8)**0.5", "True+1", "'a'*3", "[1]*3", "1<2", "lambda: 1", "",
                                  "1+" * 150 + "1", "(" * 300 + "1" + ")" * 300])
def test_calculator_rejects(expr):
    out = calculator(expr)
    assert out.startswith("error: "), (expr, out)
    with pytest.raises(ValueError):
        calculate(expr)


def test_calculator_matches_python_on_random_expressions():
    rng = random.Random(0)
    for _ in range(300):
        a, b, c = (rng.randint(-50, 50) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        e = f"({a}{op1}{b}){op2}{c}"
        want = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
        assert calculate(e) == want[op2](want[op1](a, b), c)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=11, n_people=80, n_problems=20, n_spelling=20))


def test_bm25_finds_the_right_bio(world):
    index = SearchIndex.from_documents(world.search_documents())
    hits_ok = 0
    people = world.people[:40]
    for p in people:
        hits = index.search(f"Where does {p.name} work?", k=3)
        hits_ok += hits[0]["id"] == f"bio/{p.id}"
    assert hits_ok >= 0.95 * len(people)


def test_bm25_fast_matches_naive_twin(world):
    docs = world.search_documents()[:60]
    index = SearchIndex.from_documents(docs)
    for q in ["university chemistry", docs[3]["text"][:40], "zzz unknownword", "the the of"]:
        fast, slow = index.scores(q), index.scores_naive(q)
        assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(fast, slow))


def test_bm25_textbook_numbers():
    # 3 docs, query "apple": n=2, N=3 -> idf = ln(1 + 1.5/2.5); avgdl = 2
    index = SearchIndex(["a", "b", "c"], ["apple apple", "apple pie", "cherry tart"])
    idf = math.log(1 + 1.5 / 2.5)
    s = index.scores("apple")
    assert math.isclose(s[0], idf * 2 * 2.5 / (2 + 1.5))
    assert math.isclose(s[1], idf * 1 * 2.5 / (1 + 1.5))
    assert s[2] == 0.0
    assert [h["id"] for h in index.search("apple", k=5)] == ["a", "b"]


def test_toolbox_dispatch(world):
    tools = ToolBox.from_world(world)
    assert tools("calculator", "3*12-7") == "29"
    p = world.unknown[0]
    out = tools("search", p.name)
    assert out.startswith("[1] bio/" + p.id) and p.employer in out
    assert tools("search", "qqqqxyz").startswith("no results")
    assert tools("nope", "1").startswith("error: unknown tool")
    assert tools("calculator", "os.system('x')").startswith("error: ")
    assert ToolBox()("search", "x").startswith("error: ")  # no index loaded
    assert run_tool("calculator", "1+1") == "2"
    assert tools("python", "print('strawberry'.count('r'))").strip() == "3"
