"""CORE suite: prompt rendering, spans, batched scoring against its naive twin, known-answer items
scored by a hand-built bigram model, the stories260K checkpoint on the gauntlet files, results.json."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from assistant_helpers import tiny_model, tiny_tokenizer, tiny_world
from chatforge.eval import core as ce
from chatforge.common import CfError, data_dir

STORIES = data_dir("llama2c-stories260K", "stories260K.bin")
GAUNTLET = data_dir("mosaic-eval-gauntlet")


# ----------------------------------------------------------------------------- a model with known answers

class WordTokenizer:
    """Whitespace tokenizer over a fixed vocabulary (id 0 = <|bos|>): token boundaries are obvious."""

    def __init__(self, texts):
        words = sorted({w for t in texts for w in t.split()})
        self.ids = {w: i + 1 for i, w in enumerate(words)}
        self.bos_id, self.n_vocab = 0, len(words) + 1

    def encode(self, text):
        return [self.ids[w] for w in text.split()]


class BigramLM(nn.Module):
    """A bigram language model with counts from ``texts``: forward_hidden one-hot encodes the current
    token, lm_head holds log P(next | current) (add-0.01 smoothing). Its preferences are known."""

    def __init__(self, tok, texts, seq_len=64):
        super().__init__()
        V = tok.n_vocab
        counts = torch.full((V, V), 0.01)
        for t in texts:
            ids = [tok.bos_id] + tok.encode(t)
            for a, b in zip(ids, ids[1:]):
                counts[a, b] += 1
        self.lm_head = nn.Linear(V, V, bias=False)
        # counts[a, b] -> log P(b | a); nn.Linear's weight is (out = next token, in = current token)
        self.lm_head.weight.data = (counts / counts.sum(1, keepdim=True)).log().T.contiguous()
        self.config = type("C", (), {"seq_len": seq_len, "vocab_size": V})()
        self.V = V

    def forward_hidden(self, idx, kv_cache=None):
        return torch.nn.functional.one_hot(idx, self.V).float()                  # (B, T, V)

    def forward(self, idx):
        return self.lm_head(self.forward_hidden(idx))                            # (B, T, V)


MC = [{"query": "sky is", "choices": ["blue today", "green cheese"], "gold": 0},
      {"query": "grass is", "choices": ["wet rock", "green today"], "gold": 1},
      {"query": "snow is", "choices": ["white today", "loud rock"], "gold": 0}]
SCHEMA = [{"context_options": ["cats purr", "rocks purr"], "continuation": "softly now", "gold": 0},
          {"context_options": ["rocks sing", "birds sing"], "continuation": "sweetly now", "gold": 1}]
LM = [{"context": "one two", "continuation": "three four"}, {"context": "five six", "continuation": "seven"}]
TRUTH = ["sky is blue today", "grass is green today", "snow is white today", "cats purr softly now",
         "birds sing sweetly now", "one two three four", "five six seven"]
ALL_TEXT = TRUTH + ["green cheese wet rock loud rock rocks purr rocks sing"]


def _task(kind, shots=0, baseline=0.5):
    return ce.CoreTask("t", "t.jsonl", kind, shots, " ", baseline)


@pytest.mark.parametrize("kind,items", [("multiple_choice", MC), ("schema", SCHEMA), ("language_modeling", LM)])
def test_known_answers_bigram(kind, items):
    tok = WordTokenizer(ALL_TEXT)
    right = BigramLM(tok, TRUTH)
    r = ce.evaluate_task(right, tok, _task(kind), items)
    assert r["accuracy"] == 1.0 and r["centered"] == 1.0 and r["n"] == len(items)
    # a model that learned the wrong answers: no item right, centered accuracy below chance
    wrong_texts = ["sky is green cheese", "grass is wet rock", "snow is loud rock", "rocks purr softly now",
                   "rocks sing sweetly now", "one two one two", "five six five"]
    wrong = BigramLM(tok, wrong_texts)
    r = ce.evaluate_task(wrong, tok, _task(kind), items)
    assert r["accuracy"] == 0.0 and r["centered"] == -1.0


def test_prompts_and_spans():
    shots = [{"query": "Q1", "choices": ["a", "b"], "gold": 1}]
    p = ce.render_prompts("multiple_choice", {"query": "Q2", "choices": ["x", "y"], "gold": 0}, "\nAnswer: ", shots)
    assert p == ["Q1\nAnswer: b\n\nQ2\nAnswer: x", "Q1\nAnswer: b\n\nQ2\nAnswer: y"]
    p = ce.render_prompts("schema", {"context_options": ["A", "B"], "continuation": "c", "gold": 0}, " ",
                          [{"context_options": ["X", "Y"], "continuation": "z", "gold": 1}])
    assert p == ["Y z\n\nA c", "Y z\n\nB c"]
    p = ce.render_prompts("language_modeling", {"context": "ctx  ", "continuation": "end"}, " ",
                          [{"context": " s ", "continuation": "t"}])
    assert p == ["s t\n\nctx", "s t\n\nctx end"]
    # spans: MC after the common prefix, schema the common suffix, LM what "with" adds
    assert ce.item_rows("multiple_choice", [[0, 5, 6, 7], [0, 5, 8]], 100) == [([0, 5, 6, 7], 2, 4), ([0, 5, 8], 2, 3)]
    assert ce.item_rows("schema", [[0, 1, 9, 9], [0, 2, 3, 9, 9]], 100) == [([0, 1, 9, 9], 2, 4), ([0, 2, 3, 9, 9], 3, 5)]
    assert ce.item_rows("language_modeling", [[0, 1, 2], [0, 1, 2, 3, 4]], 100) == [([0, 1, 2, 3, 4], 3, 5)]
    # too long: cropped on the left, the span kept
    assert ce.item_rows("language_modeling", [[0, 1, 2], [0, 1, 2, 3, 4]], 3) == [([2, 3, 4], 1, 3)]
    # few-shot examples never include the item itself and are reproducible
    items = [{"i": i} for i in range(12)]
    ex = ce.fewshot_examples(items, 3, 10)
    assert len(ex) == 10 and {"i": 3} not in ex and ex == ce.fewshot_examples(items, 3, 10)


@pytest.fixture(scope="module")
def tm():
    tok = tiny_tokenizer(tiny_world())
    return tok, tiny_model(tok, seq_len=64)


def test_batched_matches_naive(tm):
    tok, model = tm
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (5, 9, 17, 33, 64, 12, 40):
        toks = torch.randint(0, tok.n_vocab, (n,), generator=g).tolist()
        rows.append((toks, max(1, n // 2), n))
    fast = ce.score_rows(model, rows, tok.bos_id, batch_tokens=100)   # several batches with padding
    slow = ce.score_rows_naive(model, rows)
    for (lf, hf), (ls, hs) in zip(fast, slow):
        assert lf == pytest.approx(ls, abs=1e-4) and hf == hs
    # greedy-match flag is real: a row whose span is the model's own argmax continuation matches
    toks = [tok.bos_id, 7]
    for _ in range(4):
        toks.append(int(model(torch.tensor([toks]))[0, -1].argmax()))
    assert ce.score_rows(model, [(toks, 2, 6)], tok.bos_id)[0][1] is True


def test_run_core_on_hand_files_and_results_json(tmp_path, tm):
    tok, model = tm
    root = tmp_path / "data"
    (root / "x").mkdir(parents=True)
    words = "the a cat dog sat ran on under mat log".split()
    with open(root / "x" / "copa.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"query": f"{words[i % 10]} {words[(i + 3) % 10]}", "gold": i % 2,
                                "choices": [words[(i + 1) % 10], words[(i + 5) % 10]]}) + "\n")
    with open(root / "lambada_openai.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"context": " ".join(words[i:i + 4]), "continuation": words[(i + 4) % 10]}) + "\n")
    res = ce.run_core(model, tok, root, limit=5)
    assert set(res["tasks"]) == {"copa", "lambada_openai"} and res["n_tasks"] == 2
    assert res["tasks"]["copa"]["n"] == 5 and res["tasks"]["lambada_openai"]["n"] == 5
    assert "hellaswag" in res["missing"] and len(res["missing"]) == 20
    assert res["core"] == pytest.approx(sum(r["centered"] for r in res["tasks"].values()) / 2)
    assert res == {**ce.run_core(model, tok, root, limit=5), "seconds": res["seconds"]}  # deterministic
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "results.json").write_text(json.dumps({"other": 1}))
    out = ce.core_cli(model, tok, rd, 3, "cpu", ["copa"], root)
    saved = json.loads((rd / "results.json").read_text())
    assert saved["other"] == 1 and saved["core"]["core"] == pytest.approx(out["core"])
    assert saved["core"]["bpb"] is None and "CORE" in ce.format_core(out)
    cond = saved["core"]["conditions"]["copa"]   # report.experiment's schema: k, n, rate, Wilson interval
    assert cond["n"] == 3 and cond["k"] == out["tasks"]["copa"]["correct"] and cond["ci"][0] <= cond["rate"] <= cond["ci"][1]
    assert "outcomes" not in saved["core"]["tasks"]["copa"] and "seconds" not in saved["core"]  # no wall clock


def test_bad_inputs(tmp_path, tm):
    tok, model = tm
    with pytest.raises(CfError, match="no CORE task files"):
        ce.run_core(model, tok, tmp_path)
    p = tmp_path / "copa.jsonl"
    p.write_text(json.dumps({"query": "q", "choices": ["a", "b"], "gold": 5}) + "\n")
    with pytest.raises(CfError, match=r"copa.jsonl:1: gold must be an index"):
        ce.run_core(model, tok, tmp_path)
    p.write_text(json.dumps({"query": "q", "gold": 0}) + "\n")
    with pytest.raises(CfError, match="missing choices"):
        ce.run_core(model, tok, tmp_path)
    with pytest.raises(CfError, match="unknown CORE task"):
        ce.select_tasks(["copa", "nope"])


@pytest.mark.skipif(not (STORIES.exists() and GAUNTLET.is_dir()), reason="shared data absent")
def test_stories260k_on_gauntlet_stable():
    """A real trained checkpoint (llama2.c stories260K) through every task kind of the gauntlet files:
    it loads, scores, and the scores are reproducible and identical batched or not. Its own tokenizer
    is not available, so a 400-token BPE stands in: the numbers are near chance, not a reference."""
    from chatforge.model.hf import from_llama2c
    model = from_llama2c(STORIES)
    tok = tiny_tokenizer(tiny_world())
    assert tok.n_vocab <= model.config.vocab_size
    res = ce.run_core(model, tok, GAUNTLET.parent, limit=4, tasks=["copa", "winogrande", "lambada_openai",
                                                                  "arc_easy", "hellaswag_zeroshot"])
    assert set(res["tasks"]) == {"copa", "winogrande", "lambada_openai", "arc_easy", "hellaswag_zeroshot"}
    assert all(r["n"] == 4 for r in res["tasks"].values())
    again = ce.run_core(model, tok, GAUNTLET.parent, limit=4, tasks=["copa", "winogrande", "lambada_openai",
                                                                    "arc_easy", "hellaswag_zeroshot"])
    assert [r["correct"] for r in again["tasks"].values()] == [r["correct"] for r in res["tasks"].values()]
    for task in ce.select_tasks(["winogrande", "arc_easy"]):  # batched vs the twin, MC and schema
        items = ce.load_task_items(task, ce.find_task_file(task, GAUNTLET.parent))
        slow = ce.evaluate_task(model, tok, task, items, limit=4, batched=False)
        assert slow["correct"] == res["tasks"][task.label]["correct"]
