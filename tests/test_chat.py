"""Terminal chat: scripted input, /reset, KV cache reuse across turns, tool calls shown."""
import io

import pytest

from assistant_helpers import tm, tiny_model, tiny_tokenizer, tiny_world  # noqa: F401 (fixtures)
from chatforge.serve.chat import ChatSession, chat_loop
from chatforge.model.engine import Engine



def test_scripted_chat_with_reset_and_cache_reuse(tm):
    tok, model = tm
    engine = Engine(model, tok)
    s = ChatSession(engine, tok, system="You are Forge.", temperature=0.0, max_new_tokens=12)
    out = io.StringIO()
    n = chat_loop(s, io.StringIO("hello there\nwhat is 2+2?\n/reset\nhi again\n/bogus\n/quit\nnever read\n"), out)
    assert n == 3
    text = out.getvalue()
    assert "(new conversation)" in text and "commands:" in text
    # after /reset only the system prompt and the last exchange remain
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant"]
    assert s.messages[1]["content"] == "hi again"


def test_second_turn_reuses_the_cache_and_matches_a_fresh_generation(tm):
    tok, model = tm
    engine = Engine(model, tok)
    s = ChatSession(engine, tok, temperature=0.0, max_new_tokens=10)
    s.send("Where was Kalo Berg born?")
    fed_before = len(s.fed)
    assert fed_before > 0 and s.cache.pos == fed_before
    fed_tokens = []
    real_forward = engine._forward
    engine._forward = lambda idx, cache: (fed_tokens.append(idx.shape[1]), real_forward(idx, cache))[1]
    s.send("And where does he work?")
    prompt2 = s.last_prompt
    # the second prompt starts with everything the cache already held, so only the new turn was fed
    assert prompt2[:fed_before] == s.fed[:fed_before]
    assert fed_tokens[0] == len(prompt2) - fed_before < len(prompt2)
    fresh, _ = engine.generate_batch(prompt2, num_samples=1, max_new_tokens=10, temperature=0.0)
    assert fresh[0] == s.last_tokens and len(fresh[0]) > 0


class ScriptedEngine:
    """Stands in for Engine: plays a fixed token sequence (with a tool call and its forced output)."""

    def __init__(self, model, tokens):
        self.model, self.tokens, self.cache_dtype = model, tokens, None

    def generate(self, prompt, num_samples=1, max_new_tokens=256, kv_cache=None, **kw):
        if kv_cache is not None:
            kv_cache.pos = len(prompt)
        for t in self.tokens[:max_new_tokens]:
            yield [t], [1]


def test_tool_calls_are_shown_as_they_happen(tm):
    tok, model = tm
    sp = tok.special
    toks = (tok.encode("Let me compute. ") + [sp("<|tool_start|>")] + tok.encode("calculator\n12*7")
            + [sp("<|tool_end|>"), sp("<|output_start|>")] + tok.encode("84") + [sp("<|output_end|>")]
            + tok.encode("It is 84.") + [sp("<|assistant_end|>")])
    s = ChatSession(ScriptedEngine(model, toks), tok, max_new_tokens=100)
    out = io.StringIO()
    chat_loop(s, io.StringIO("What is 12*7?\n"), out)
    text = out.getvalue()
    assert "Let me compute." in text and "[tool call] calculator: 12*7" in text
    assert "[tool output] 84" in text and text.index("[tool output] 84") < text.index("It is 84.")
    parts = s.messages[-1]["content"]
    assert [p["type"] for p in parts] == ["text", "tool_call", "tool_output", "text"]
    # a tool call that never closes is cut at the token budget and shown as unfinished
    cut = toks.index(sp("<|tool_start|>")) + 3
    s2 = ChatSession(ScriptedEngine(model, toks[:cut]), tok, max_new_tokens=100)
    out2 = io.StringIO()
    chat_loop(s2, io.StringIO("again\n"), out2)
    assert "[tool call, cut at the token budget]" in out2.getvalue()


def test_too_long_message_is_an_error_line_not_a_crash(tm):
    tok, model = tm
    s = ChatSession(Engine(model, tok), tok, temperature=0.0, max_new_tokens=4)
    out = io.StringIO()
    assert chat_loop(s, io.StringIO("word " * 400 + "\nhi\n"), out) == 1
    assert "error: message too long" in out.getvalue()
