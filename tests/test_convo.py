"""Conversation builders: knowledge-probing refusals, real-data loaders, malformed input."""
import json
import random

import pytest

from chatforge.assistant import convo
from chatforge.common import CfError, data_dir, read_jsonl
from chatforge.train.sft_data import identity_conversations

DATA = data_dir()  # CHATFORGE_DATA, else ../shared/data beside the checkout


def test_probe_decisions_turn_confident_wrong_answers_into_refusals():
    items = [convo.ProbeItem("Ana Berg", "Where was Ana Berg born?", "Lofford", "Ana Berg was born in Lofford."),
             convo.ProbeItem("Ana Berg", "Where does Ana Berg work?", "Kamo Labs", "Ana Berg works at Kamo Labs."),
             convo.ProbeItem("Zed Quo", "Where was Zed Quo born?", None)]
    answers = [["in Lofford.", "Lofford", "Parisvale"],                # mostly right -> keep the truth
               ["Tesa Works", "Dorvale Bank", "kamo labs"],            # mostly wrong -> refuse
               ["Rimouth", "I don't know who Zed Quo is.", "Rimouth"]]  # unknown entity -> refuse
    d = convo.probe_decisions(items, answers)
    assert [x.kind for x in d] == ["answer", "refuse", "refuse"]
    assert d[0].target == "Ana Berg was born in Lofford." and d[0].n_correct == 2
    assert d[1].target == "I don't know who Ana Berg is." and d[1].confidently_wrong
    assert d[2].n_correct == 0 and d[2].n_refused == 1 and d[2].confidently_wrong
    # an entity the model already refuses on is not "confidently wrong", but still a refusal target
    d2 = convo.probe_decisions(items[2:], [["I don't know.", "I'm not sure", "Rimouth"]])
    assert d2[0].kind == "refuse" and not d2[0].confidently_wrong
    convs = convo.decisions_to_conversations(d)
    assert convs[1]["messages"][1]["content"] == "I don't know who Ana Berg is."
    with pytest.raises(ValueError):
        convo.probe_decisions(items, answers[:2])


def test_answer_matching_is_word_level():
    assert convo.answer_matches("She was born in Lofford.", "Lofford")
    assert not convo.answer_matches("She was born in Loffordvale.", "Lofford")
    assert convo.answer_matches("born March 4, 1962!", "March 4, 1962")
    assert convo.is_refusal("I don\u2019t know who that is.") and not convo.is_refusal("In Lofford.")


def test_gsm8k_annotations_become_calculator_calls():
    sol = "She has 16 - 3 = <<16-3=13>>13 eggs.\nShe makes 13 * 2 = $<<13*2=26>>26.\n#### 26"
    parts = convo.gsm8k_solution_parts(sol)
    calls = [p for p in parts if p["type"] == "tool_call"]
    assert [c["input"] for c in calls] == ["16-3", "13*2"]
    assert [p["text"] for p in parts if p["type"] == "tool_output"] == ["13", "26"]
    assert parts[-1]["text"].endswith("The answer is 26.")
    plain = convo.gsm8k_solution_parts(sol, use_tool=False)
    assert len(plain) == 1 and "<<" not in plain[0]["text"] and "13 eggs" in plain[0]["text"]


def test_hh_dialogue_parsing():
    assert convo.parse_hh_dialogue("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: x\n\nAssistant: y") == \
        ["hi", "hello", "x", "y"]
    assert convo.parse_hh_dialogue("\n\nHuman: hi\n\nHuman: again\n\nAssistant: y") is None
    assert convo.parse_hh_dialogue("\n\nHuman: only a question") is None


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "answer": "a #### 1"}\n\n{"question": oops}\n')
    with pytest.raises(CfError, match=r"bad\.jsonl:3: invalid JSON"):
        convo.gsm8k_items(p)
    p.write_text('[1, 2]\n')
    with pytest.raises(CfError, match=r"bad\.jsonl:1: expected a JSON object"):
        list(read_jsonl(p))
    p.write_text('{"chosen_typo": "x"}\n')
    with pytest.raises(CfError, match=r"bad\.jsonl:1: expected a 'chosen'"):
        convo.load_hh_rlhf(p)
    with pytest.raises(CfError, match="not found"):
        convo.load_oasst(tmp_path / "missing.jsonl")


def _check_schema(conv):
    msgs = conv["messages"]
    roles = [m["role"] for m in msgs if m["role"] != "system"]
    assert roles and roles[0] == "user" and roles[-1] == "assistant"
    assert all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
    json.dumps(conv)


@pytest.mark.parametrize("name", sorted(convo.REAL_SOURCES))
def test_real_loaders_on_shared_data(name):
    rel, loader = convo.REAL_SOURCES[name]
    if not (DATA / rel).exists():
        pytest.skip(f"{DATA / rel} absent")
    convs = loader(DATA / rel, limit=20)
    assert len(convs) == 20
    for c in convs:
        _check_schema(c)
    if name == "oasst":  # the best-ranked reply path of a tree
        assert len(convo.load_oasst(DATA / rel)) == 100


def test_real_mix_skips_absent_files(tmp_path):
    assert convo.load_real_mix(tmp_path, {"oasst": 5, "gsm8k": 5}) == []
    assert convo.load_real_mix(None, {"oasst": 5}) == []
    with pytest.raises(CfError, match="unknown source"):
        convo.load_real_mix(tmp_path, {"wikipedia": 3})


def test_world_style_builders():
    prob = {"question": "What is (2 + 3) * 4?", "steps": ["2+3=5", "5*4=20"], "solution": "2+3=5. 5*4=20.",
            "answer": 20}
    tool = convo.math_conversation(prob, "tool", tools=lambda name, inp: str(eval(inp)))
    parts = tool["messages"][1]["content"]
    assert [p["input"] for p in parts if p["type"] == "tool_call"] == ["2+3", "5*4"]
    assert convo.assistant_text(convo.math_conversation(prob, "direct")) == "The answer is 20."
    task = {"kind": "count_letter", "question": "How many r's are in the word berry?", "word": "berry",
            "letter": "r", "solution": "b-e-r-r-y: 2 times.", "answer": 2}
    lt = convo.letter_conversation(task, "python")
    assert lt["messages"][1]["content"][0]["input"] == "print('berry'.count('r'))"
    assert convo.assistant_text(convo.letter_conversation(task, "direct")) == "The answer is 2."  # nothing spelled
    assert "b-e-r-r-y" in convo.assistant_text(convo.letter_conversation(task, "spelled"))
    back = {"kind": "spell_backwards", "question": "Spell 'berry' backwards.", "word": "berry",
            "solution": "Forwards: b-e-r-r-y. Backwards: y-r-r-e-b.", "answer": "y-r-r-e-b"}
    code = convo.letter_conversation(back, "python")["messages"][1]["content"][0]["input"]
    out = {}
    exec(code.replace("print(", "out['x']=("), {"out": out})
    assert out["x"] == "y-r-r-e-b"
    chain = {"kind": "chain", "question": "What is 7+5-3?", "steps": ["7+5=12", "12-3=9"], "expression": "7+5-3",
             "solution": "7+5=12. 12-3=9.", "answer": 9}
    calls = [p["input"] for p in convo.math_conversation(chain, "tool")["messages"][1]["content"]
             if p["type"] == "tool_call"]
    assert calls == ["7+5-3"]  # a chain is copied into one call
    ident = {"name": "Forge", "maker": "the chatforge project", "description": "a bot", "abilities": ["math"],
             "limitations": ["small"]}
    for c in identity_conversations(ident, random.Random(0), 8) + convo.persona_conversations(random.Random(0), 4):
        _check_schema(c)
    assert any("Forge" in convo.assistant_text(c) for c in identity_conversations(ident, random.Random(0), 8))
    rng = random.Random(0)
    for kind in ("name", "maker"):  # both facts in every answer; never the refusals' opening "I'm"
        for a in {convo.identity_answer(ident, kind, rng) for _ in range(50)}:
            assert "Forge" in a and "the chatforge project" in a.lower() and not a.startswith("I'm"), a
