"""Evaluation: Wilson intervals, answer extraction, benchmark loaders and scoring."""
import math

import pytest

from chatforge.assistant import tasks
from chatforge.eval import experiments as ev
from chatforge.common import CfError, data_dir, wilson

DATA = data_dir()  # CHATFORGE_DATA, else ../shared/data beside the checkout


def _wilson_by_inversion(k, n, z=1.96):
    """Slow twin: the Wilson interval is {p0 : |k/n - p0| <= z sqrt(p0 (1 - p0) / n)}; find its ends
    by bisection on the score test."""
    ph = k / n
    inside = lambda p0: abs(ph - p0) <= z * math.sqrt(p0 * (1 - p0) / n) + 1e-15  # noqa: E731

    def edge(lo, hi):  # lo outside, hi inside (or vice versa): bisect the boundary
        for _ in range(100):
            mid = (lo + hi) / 2
            if inside(mid) == inside(hi):
                hi = mid
            else:
                lo = mid
        return hi
    lower = 0.0 if inside(0.0) or k == 0 else edge(0.0, ph)
    upper = 1.0 if inside(1.0) or k == n else edge(1.0, ph)
    return lower, upper


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 40), (81, 263), (1, 1), (37, 50)])
def test_wilson_matches_score_test_inversion(k, n):
    lo, hi = wilson(k, n)
    rlo, rhi = _wilson_by_inversion(k, n)
    assert lo == pytest.approx(rlo, abs=1e-9) and hi == pytest.approx(rhi, abs=1e-9)
    assert 0 <= lo <= k / n <= hi <= 1


def test_wilson_known_values_and_edges():
    assert wilson(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)   # textbook value
    lo, hi = wilson(5, 10)
    assert (lo, hi) == pytest.approx((0.23659, 0.76341), abs=1e-5) and lo + hi == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)
    for n in (1, 7, 100, 300):  # exact ends: the interval always holds the rate itself
        assert wilson(n, n)[1] == 1.0 and wilson(0, n)[0] == 0.0
        assert all(lo <= k / n <= hi for k in range(n + 1) for lo, hi in [wilson(k, n)])
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_one_numeric_checker_for_rl_and_eval():
    """RL's reward and the report's experiments score a reply with the same checker (tasks.math_correct)."""
    assert tasks.extract_answer("3*12=36. 36-7=29. The answer is 29.") == "29"
    assert tasks.extract_answer("It costs $1,234.50 total") == "1234.5"
    assert tasks.extract_answer("no digits") is None
    assert tasks.math_correct("The answer is 18.0", "18") and not tasks.math_correct("no number", "1")
    assert tasks.math_correct("#### 1,234", 1234) and tasks.exact_reward("#### 1,234", "1234") == 1.0


@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge", "mmlu", "hellaswag"])
def test_mc_loaders_on_shared_data(name):
    if not DATA.exists():
        pytest.skip("shared/data absent")
    items = ev.load_mc_set(name, DATA, limit=5)
    assert len(items) == 5
    for it in items:
        assert len(it["options"]) >= 2 and 0 <= it["gold"] < len(it["options"]) and it["context"]


def test_mc_loader_errors(tmp_path):
    with pytest.raises(CfError, match="unknown multiple-choice set"):
        ev.load_mc_set("piqa", tmp_path)
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc" / "arc_easy.jsonl").write_text('{"query": "q"}\n')
    with pytest.raises(CfError, match=r"arc_easy\.jsonl:1: expected query, choices, gold"):
        ev.load_mc_set("arc_easy", tmp_path)


# ----------------------------------------------------------------------------- with a tiny model

import torch  # noqa: E402

from assistant_helpers import tm, tiny_model, tiny_run, tiny_sft_run, tiny_tokenizer, tiny_world  # noqa: E402,F401



def test_option_logprobs_match_a_direct_computation(tm):
    tok, model = tm
    ctx, opts = "Question: Where was Kalo born?\nAnswer:", [" Misaford", " in the city of Lofford", " x"]
    got = ev.option_logprobs(model, tok, ctx, opts)
    for o, lp in zip(opts, got):   # slow twin: one sequence at a time, log-softmax by hand
        c, t = [tok.bos_id] + tok.encode(ctx), tok.encode(o)
        ids = torch.tensor([c + t])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[:, :-1]), -1)[0]
        want = sum(float(logp[len(c) - 1 + j, t[j]]) for j in range(len(t))) / len(t)
        assert lp == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("name", ["arc_easy", "hellaswag", "mmlu"])
def test_multiple_choice_benchmarks_run_on_a_handful(tm, name):
    if not DATA.exists():
        pytest.skip("shared/data absent")
    tok, model = tm
    md, m = ev.eval_benchmarks(model, tok, [f"{name}:3"], DATA)
    assert m[name]["n"] == 3 and f"| {name} |" in md


class AnswerEngine:
    """A stand-in engine that always replies with a fixed text (to test GSM8K scoring)."""

    def __init__(self, tok, reply):
        self.tok, self.reply = tok, reply

    def generate_many(self, prompts, max_new_tokens, temperature=0.0, num_samples=1, **kw):
        ids = self.tok.encode(self.reply) + [self.tok.special("<|assistant_end|>")]
        return [ids] * (len(prompts) * num_samples)


def test_gsm8k_exact_match(tm):
    if not (DATA / "gsm8k" / "test.jsonl").exists():
        pytest.skip("gsm8k absent")
    tok, _ = tm
    from chatforge.assistant.convo import gsm8k_items
    items = gsm8k_items(DATA / "gsm8k" / "test.jsonl", limit=2)   # answers 18 and 3
    assert ev.eval_gsm8k(AnswerEngine(tok, "16-3-4=9. 9*2=18. The answer is 18."), tok, items)["k"] == 1
    assert ev.eval_gsm8k(AnswerEngine(tok, "The answer is 3."), tok, items)["k"] == 1
    assert ev.eval_gsm8k(AnswerEngine(tok, "no idea"), tok, items)["k"] == 0


def test_eval_cli_errors(tmp_path):
    from chatforge.common import CfError
    with pytest.raises(CfError, match="nothing to do"):
        ev.cli(["--run", str(tmp_path)])
    with pytest.raises(CfError, match="unknown set 'gsm9k'"):
        ev.cli(["--run", str(tmp_path), "--eval-set", "gsm9k:3"])
