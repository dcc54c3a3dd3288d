"""The reasoning experiments: conditions, priors and checkers on held-out world items."""
import json
import re

from assistant_helpers import tiny_sft_run, tiny_tokenizer, tiny_world

from chatforge.assistant.tools import calculate
from chatforge.eval import reasoning as rs
from chatforge.report import experiment
from chatforge.world.problems import CHAIN_STEPS


class OracleEngine:
    """Answers every chain/letter question correctly in every style (decodes the question itself)."""

    def __init__(self, tok):
        self.tok = tok

    def generate_many(self, prompts, max_new_tokens, temperature=0.0, num_samples=1, **kw):
        return [self.reply(p) for p in prompts for _ in range(num_samples)]

    def reply(self, prompt):
        q = self.tok.decode(prompt)
        m = re.search(r"'(\w+)'", q)
        if "backwards" in q or "reverse" in q:
            reply = "Backwards: " + "-".join(reversed(m.group(1))) + "."
        elif m:  # letter counting: "How many r's ... 'berry'"
            letter = re.search(r"(?:many |letter )(\w)\b", q).group(1)
            reply = f"The answer is {m.group(1).count(letter)}."
        else:
            expr = re.search(r"([\d(][\d+\-*/() ]+\d\)?)", q).group(1)
            reply = f"The answer is {calculate(expr.replace(' ', ''))}."
        return self.tok.encode(reply) + [self.tok.special("<|assistant_end|>")]


def test_oracle_scores_everything_and_the_prior_is_the_train_mode():
    world = tiny_world()
    tok = tiny_tokenizer(world)
    eng = OracleEngine(tok)
    th = rs.thinking_experiment(eng, tok, world, n=5)
    for k in CHAIN_STEPS:
        for s in ("direct", "worked", "calculator"):
            c = th["conditions"][f"{s}_{k}"]
            assert c["n"] > 0 and c["rate"] == 1.0, (s, k)
        assert th["diffs"][f"worked_{k} - direct_{k}"]["delta"] == 0.0
    let = rs.letters_experiment(eng, tok, world, n=20)
    assert let["conditions"]["python"]["rate"] == let["conditions"]["direct"]["rate"] == 1.0
    assert let["conditions"]["backwards_python"]["rate"] == 1.0
    # per-token buckets partition the items; the prior is 'always the commonest training count'
    buckets = [k for k in let["conditions"] if re.fullmatch(r"direct_(\d|4\+)", k)]
    assert sum(let["conditions"][b]["n"] for b in buckets) == let["conditions"]["direct"]["n"]
    test = [t for t in world.letters if t["kind"] == "count_letter" and t["split"] == "test"][:20]
    assert let["conditions"]["prior"]["k"] == sum(str(t["answer"]) == let["prior_answer"] for t in test)


def test_plot_of_perfect_cells(tmp_path):
    """100/100 in a cell: its Wilson interval ends at 1 exactly, so the error bar is 0, not -1e-14."""
    exp = experiment({f"{s}_{k}": [1] * 100 for s in ("direct", "worked", "calculator", "prior") for k in CHAIN_STEPS}, [])
    assert rs.plot_thinking(exp, tmp_path / "thinking.png").exists()


def test_run_reasoning_experiments_writes_results_and_plot(tmp_path):
    rd, _, _ = tiny_sft_run(tmp_path, steps=1, batch_size=4, n_known_qa=4, n_idk=2, n_identity=2, n_persona=2,
                            n_math_per_style=3, n_letters_per_style=2, n_search=2, n_eval_known=2, n_eval_unknown=2)
    md = rs.run_reasoning_experiments(rd, device="cpu", n=2, n_letters=4)
    res = json.loads((rd / "results.json").read_text())
    assert {"thinking", "tools", "letters"} <= set(res)
    assert set(res["thinking"]["conditions"]) >= {f"{s}_{k}" for s in ("direct", "worked", "calculator", "prior")
                                                   for k in CHAIN_STEPS}
    assert {"direct", "spelled", "python", "prior"} <= set(res["letters"]["conditions"])
    assert (rd / "report" / "thinking.png").exists() and "MISSED" in md  # an untrained model misses the targets
