"""Chat serving like the terminal chat: tools inside batched generation, OpenAI message forms, trimming
to the context, penalties, warning headers, and a fuzz of malformed requests (loopback only)."""
from __future__ import annotations

import http.client
import json
import re
import threading
import time

import pytest
import torch

from serve_helpers import LiveServer, scripted, tiny_model, tiny_tokenizer, tool_script

from chatforge.assistant.tools import ToolBox
from chatforge.common import CfError
from chatforge.serve.batcher import Batcher, GenRequest, penalize
from chatforge.serve.messages import best_assistant, conversation_from_messages, fit_prompt
from chatforge.serve.server import create_app


def call(port, method, path, body=None, raw=None, timeout=60):
    """(status, headers, parsed JSON or text) of one HTTP request to 127.0.0.1."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    try:
        return r.status, dict(r.getheaders()), json.loads(text)
    except json.JSONDecodeError:
        return r.status, dict(r.getheaders()), text


def sse_events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


# ----------------------------------------------------------------------------- messages (pure)

def test_openai_messages_become_a_conversation():
    conv = conversation_from_messages([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "12*7?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "12*7"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "84"},
        {"role": "assistant", "content": "It is 84."},
        {"role": "system", "content": "No emoji."},
        {"role": "user", "content": "Thanks"}, {"role": "user", "content": "Bye"}])
    assert conv["messages"] == [
        {"role": "system", "content": "Be brief.\n\nNo emoji."},
        {"role": "user", "content": "What is 12*7?"},
        {"role": "assistant", "content": [{"type": "tool_call", "name": "calculator", "input": "12*7"},
                                          {"type": "tool_output", "text": "84"}, {"type": "text", "text": "It is 84."}]},
        {"role": "user", "content": "Thanks\nBye"}]
    # a conversation ending in a tool result continues the assistant's turn (prompt ends after <|output_end|>)
    tok = tiny_tokenizer()
    cont = conversation_from_messages(conv["messages"][:2] + [{"role": "assistant", "content": None, "tool_calls": [
        {"function": {"name": "calculator", "arguments": "1+1"}}]}, {"role": "tool", "content": "2"}])
    ids, dropped = fit_prompt(tok, cont, 1000, 10)
    assert dropped == 0 and ids[-1] == tok.special("<|output_end|>")
    for bad, what in [([{"role": "tool", "content": "84"}], "must follow an assistant"),
                      ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
                      ([{"role": "system", "content": "s"}], "at least one user"),
                      ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}], "expected 'user'"),
                      ([{"role": "user", "content": [{"type": "tool_output", "text": "x"}]}], "only 'text'")]:
        with pytest.raises(CfError, match=what):
            conversation_from_messages(bad)


def test_fit_prompt_drops_oldest_exchanges_and_keeps_the_system_prompt():
    tok = tiny_tokenizer()
    msgs = [{"role": "system", "content": "Be brief."}]
    for i in range(12):
        msgs += [{"role": "user", "content": f"question {i} about the quick brown fox"},
                 {"role": "assistant", "content": f"answer {i} is 12*7=84"}]
    msgs.append({"role": "user", "content": "last one"})
    conv = {"messages": msgs}
    full = tok.render_for_completion(conv)
    ids, dropped = fit_prompt(tok, conv, len(full) + 5, 5)          # fits exactly: nothing dropped
    assert (ids, dropped) == (full, 0)
    for seq_len, room in [(96, 24), (200, 50), (60, 30)]:
        ids, dropped = fit_prompt(tok, conv, seq_len, room)
        kept = {"messages": msgs[:1] + msgs[1 + dropped:]}
        assert ids == tok.render_for_completion(kept)             # the summed per-exchange lengths are exact
        assert dropped % 2 == 0 and len(ids) + room <= seq_len
        longer = {"messages": msgs[:1] + msgs[1 + dropped - 2:]}  # keeping one more exchange would not fit
        assert len(tok.render_for_completion(longer)) + room > seq_len
        assert ids[:3] == tok.render_for_completion({"messages": msgs[:2]})[:3]   # <|bos|><|system_start|>...


def test_best_assistant_is_rl_only_when_it_beat_sft():
    def res(lo, hi, g=0.6, s=0.5):
        return {"rl": {"conditions": {"grpo": {"rate": g}, "sft": {"rate": s}},
                       "diffs": {"grpo - sft": {"delta": g - s, "ci": [lo, hi]}}}}
    names = ["base", "sft", "rl"]
    assert best_assistant(res(0.02, 0.2), names) == "rl"
    assert best_assistant(res(-0.05, 0.2), names) == "sft"        # the interval contains 0: not shown to beat
    assert best_assistant({"rl": {"conditions": {"grpo": {"rate": 0.7}, "sft": {"rate": 0.5}}}}, names) == "rl"
    assert best_assistant({}, names) == "sft"                     # a 1-step RL run with no results
    assert best_assistant({}, ["base", "rl"]) == "rl" and best_assistant({}, ["base"]) is None


def test_penalize_matches_openai_definition():
    logits, counts = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 1.0, 3.0, 0.0])
    out = penalize(logits, counts, presence=0.5, frequency=0.25, bias={3: -100.0, 0: 2.0})
    expect = [1.0 + 2.0, 2.0 - 0.25 - 0.5, 3.0 - 0.75 - 0.5, 4.0 - 100.0]
    assert out.tolist() == pytest.approx(expect)
    assert logits.tolist() == [1.0, 2.0, 3.0, 4.0]               # the input is not modified


# ----------------------------------------------------------------------------- tools in the batcher

def test_batcher_runs_tools_in_a_parked_row_with_exact_cache():
    """A tool call runs while its row is parked and another request keeps decoding; the logits the
    row samples from equal GPT.forward on the whole sequence (prompt, call, forced output, text)."""
    tok, model = tiny_tokenizer(), tiny_model("llama", 0, seq_len=96)
    gate, seen = threading.Event(), []
    script = tool_script(tok)
    expected_script = list(script)

    def tools(name, inp):
        gate.wait(10)
        return ToolBox()(name, inp)

    b = Batcher(model, tok, max_batch=4, tools=tools)
    b.sample_next = scripted(script, seen)
    events: dict[str, list] = {"a": [], "b": []}
    prompt = tok.render_for_completion({"messages": [{"role": "user", "content": "What is 12*7?"}]})
    sp = tok.special
    stops = {sp("<|assistant_end|>"), tok.bos_id}
    try:
        b.submit(GenRequest(prompt=prompt, max_tokens=60, emit=lambda *e: events["a"].append(e), temperature=1.0,
                            structured=True, stop_tokens=stops))
        t0 = time.time()
        while not any(e[0] == "tool_call" for e in events["a"]) and time.time() - t0 < 20:
            time.sleep(0.01)
        b.submit(GenRequest(prompt=prompt, max_tokens=5, emit=lambda *e: events["b"].append(e), temperature=0.0,
                            structured=True, stop_tokens=set()))
        while not any(e[0] == "done" for e in events["b"]) and time.time() - t0 < 20:
            time.sleep(0.01)
        assert any(e[0] == "done" for e in events["b"]), "the other request waited for the tool"
        assert not any(e[0] == "done" for e in events["a"])
        gate.set()
        while not any(e[0] == "done" for e in events["a"]) and time.time() - t0 < 20:
            time.sleep(0.01)
    finally:
        gate.set()
        b.close()
    ev = events["a"]
    assert [e for e in ev if e[0] in ("tool_call", "tool_output")] == [("tool_call", 0, "calculator", "12*7"),
                                                                       ("tool_output", 0, "84")]
    assert "".join(e[2] for e in ev if e[0] == "token") == " so" and ev[-1][:3] == ("done", 0, "stop")
    forced = [sp("<|output_start|>"), *tok.encode("84"), sp("<|output_end|>")]
    n_call = expected_script.index(sp("<|tool_end|>")) + 1
    full = prompt + expected_script[:n_call] + forced + expected_script[n_call:]
    with torch.no_grad():
        ref = model(torch.tensor([full]))[0]                                  # (T, V)
    sampled_at = [len(prompt) + j for j in range(n_call)] + \
                 [len(prompt) + n_call + len(forced) + j for j in range(len(expected_script) - n_call)]
    assert len(seen) == len(sampled_at)
    for logits, j in zip(seen, sampled_at):
        torch.testing.assert_close(logits[:tok.n_vocab], ref[j - 1, :tok.n_vocab], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- the API

@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tok = tiny_tokenizer()
    s = LiveServer(create_app({"sft": (tiny_model("llama", 0, seq_len=96), tok)},
                              run_dir=tmp_path_factory.mktemp("run"), tools=ToolBox()))
    s.tok, s.batcher = tok, s.server.config.app.state.served["sft"].batcher
    yield s
    s.stop()


def test_chat_api_streams_tool_parts_and_never_control_text(srv):
    tok, b = srv.tok, srv.batcher
    msgs = [{"role": "user", "content": "What is 12*7?"}]
    real = b.sample_next
    try:
        b.sample_next = scripted(tool_script(tok), [])
        st, h, out = call(srv.port, "POST", "/v1/chat/completions", {"model": "sft", "messages": msgs,
                                                                     "temperature": 1.0})
        assert st == 200, out
        msg = out["choices"][0]["message"]
        assert msg["content"] == " so" and "<|" not in json.dumps(out)
        assert msg["parts"] == [{"type": "tool_call", "name": "calculator", "input": "12*7"},
                                {"type": "tool_output", "text": "84"}, {"type": "text", "text": " so"}]
        b.sample_next = scripted(tool_script(tok, "2**10", " ok"), [])
        st, h, text = call(srv.port, "POST", "/v1/chat/completions", {"model": "sft", "messages": msgs,
                                                                      "temperature": 1.0, "stream": True})
        deltas = [c["choices"][0]["delta"] for c in sse_events(text)]
        assert [d["parts"][0] for d in deltas if "parts" in d] == [
            {"type": "tool_call", "name": "calculator", "input": "2**10"}, {"type": "tool_output", "text": "1024"}]
        assert "".join(d.get("content", "") for d in deltas) == " ok" and "<|" not in text
        # the reply goes back as history (parts as they came) and the conversation continues
        history = msgs + [{"role": "assistant", "content": msg["parts"]}, {"role": "user", "content": "Thanks"}]
        b.sample_next = real
        st, h, out = call(srv.port, "POST", "/v1/chat/completions", {"model": "sft", "messages": history,
                                                                     "max_tokens": 8, "temperature": 0})
        assert st == 200 and "<|" not in out["choices"][0]["message"]["content"]
    finally:
        b.sample_next = real


def test_twenty_turn_chat_is_trimmed_not_refused(srv):
    """The web UI's pattern: the whole history every turn, no max_tokens; the 96-token context fills
    after a few turns and the oldest exchanges are dropped (header), never an error."""
    history, trimmed = [{"role": "system", "content": "Be brief."}], []
    for turn in range(20):
        history.append({"role": "user", "content": f"turn {turn}: tell me about the quick brown fox"})
        st, h, out = call(srv.port, "POST", "/v1/chat/completions",
                          {"model": "sft", "messages": history, "temperature": 0.7, "seed": turn,
                           "frequency_penalty": 0.5, "presence_penalty": 0.3})
        assert st == 200, (turn, out)
        u = out["usage"]
        assert u["prompt_tokens"] + u["completion_tokens"] <= 96 and u["completion_tokens"] >= 1
        trimmed.append(int(h.get("X-Chatforge-Trimmed-Messages", h.get("x-chatforge-trimmed-messages", 0))))
        history.append({"role": "assistant", "content": out["choices"][0]["message"]["content"]})
    assert trimmed[0] == 0 and max(trimmed) > 0 and trimmed[-1] >= 10


def test_standard_fields_accepted_applied_or_warned(srv):
    tok = srv.tok
    base = {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    st, h, out = call(srv.port, "POST", "/v1/chat/completions", {**base, "response_format": {"type": "text"},
                                                                 "presence_penalty": 1, "frequency_penalty": -1})
    assert st == 200 and "Warning" not in h and "warning" not in h
    st, h, out = call(srv.port, "POST", "/v1/chat/completions", {**base, "tools": [{"type": "function"}],
                                                                 "tool_choice": "auto", "store": False,
                                                                 "response_format": {"type": "json_object"}})
    warn = h.get("Warning", h.get("warning", ""))
    assert st == 200 and "tools" in warn and "tool_choice" in warn and "store" in warn and "json_object" in warn
    import openai       # the official client with developer, assistant tool_calls (content null) and tool roles
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
    r = c.chat.completions.create(model="sft", max_tokens=4, temperature=0, frequency_penalty=0.5, messages=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "What is 12*7?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "12*7"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "84"}])
    assert r.choices[0].finish_reason in ("stop", "length") and "<|" not in (r.choices[0].message.content or "")
    target = tok.encode("fox")[0]
    st, h, out = call(srv.port, "POST", "/v1/completions", {"model": "sft", "prompt": "a", "max_tokens": 5,
                                                            "temperature": 1.0, "logit_bias": {str(target): 100}})
    assert st == 200 and out["choices"][0]["text"] == tok.decode([target] * 5)
    st, h, out = call(srv.port, "POST", "/v1/chat/completions", {**base, "messages": [
        {"role": "user", "content": "the quick brown fox " * 40}], "max_tokens": 90})
    assert st == 400 and out["error"]["code"] == "context_length_exceeded"
    assert all(int(n) >= 0 for n in re.findall(r"-?\d+", out["error"]["message"]))


def test_tokenize_shows_partial_utf8_as_hex_never_replacement(srv):
    st, h, out = call(srv.port, "POST", "/v1/tokenize", {"model": "sft", "text": "hi 😀 ok"})
    assert st == 200
    shown = "".join(t["display"] for t in out["tokens"])
    assert "\ufffd" not in shown and "\\x" in shown
    assert b"".join(bytes(t["bytes"]) for t in out["tokens"]).decode() == "hi 😀 ok"


def malformed_requests() -> list[tuple[str, dict | str]]:
    """≥ 80 bad requests in the categories of issue 14 (types, ranges, roles, parts, penalties, bias,
    formats, shapes of the body itself)."""
    user = [{"role": "user", "content": "hi"}]
    chat = {"model": "sft", "messages": user}
    bad_values = {
        "temperature": [-0.1, 2.5, "hot", None, [1]], "top_p": [0, 1.5, "x"], "n": [0, 100, 1.5, "two"],
        "max_tokens": [0, -1, "ten", 10**12], "presence_penalty": [-2.5, 3, "x"], "frequency_penalty": [5, -9, []],
        "logit_bias": [{"x": 1}, {"-1": 5}, {"99999": 1}, {"5": 101}, {"5": "a"}, [1, 2], "bias",
                       {str(i): 1 for i in range(301)}],
        "response_format": [{"type": "xml"}, "json", {"kind": "text"}, 5], "stop": [["a"] * 5, [""], 5],
        "seed": ["s", 2**70], "top_logprobs": [-1, 99], "logprobs": ["perhaps"], "stream": ["maybe"],
        "stream_options": [{"bogus": 1}, 5], "user": ["u" * 300], "model": [5, None, "x" * 300],
        "frobnicate": [1], "messages": [[], "hi", None, [{}], [{"role": "user"}] * 0, [{"role": "bot", "content": "x"}],
                                        [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "image_url"}]}],
                                        [{"role": "tool", "content": "84"}], [{"role": "assistant", "content": "x"}],
                                        [{"role": "user", "content": "x", "extra": 1}],
                                        [{"role": "user", "content": [{"type": "tool_call", "name": "c", "input": "1"}]}],
                                        [{"role": "assistant", "tool_calls": [{"function": {"name": "a\nb"}}]},
                                         {"role": "user", "content": "x"}],
                                        [{"role": "assistant", "tool_calls": [{"type": "function"}]}],
                                        [{"role": "system", "content": "only a system prompt"}],
                                        [{"role": "user", "content": "x" * 2000}]]}
    out: list[tuple[str, dict | str]] = []
    for field_name, values in bad_values.items():
        for v in values:
            out.append(("/v1/chat/completions", {**chat, field_name: v}))
    for v in [[99999], [], "x" * 1000, {"a": 1}]:
        out.append(("/v1/completions", {"model": "sft", "prompt": v, **({"max_tokens": 90} if isinstance(v, str) else {})}))
    for raw in ["{not json", "[]", "null", "42", '"text"', "", '{"model": "sft", "messages": [}']:
        out.append(("/v1/chat/completions", raw))
    out += [("/v1/tokenize", {"model": "sft"}), ("/v1/tokenize", {"model": "sft", "text": 5}),
            ("/v1/tokenize", {"text": "x"}), ("/v1/chat/completions", {"model": "nope", "messages": user}),
            ("/v1/arena/vote", {"battle_id": "nope", "winner": "a"}), ("/v1/arena/vote", {"battle_id": "x", "winner": "c"})]
    return out


def test_fuzz_malformed_requests_get_openai_errors_and_server_stays_healthy(srv):
    cases = malformed_requests()
    assert len(cases) >= 80
    for path, body in cases:
        st, h, out = call(srv.port, "POST", path, raw=body if isinstance(body, str) else None,
                          body=None if isinstance(body, str) else body)
        assert 400 <= st < 500, (path, body, st, out)
        assert isinstance(out, dict) and set(out["error"]) == {"message", "type", "param", "code"}, (body, out)
        assert not re.search(r"\(-\d+ ", out["error"]["message"])        # never a negative count
    st, h, out = call(srv.port, "GET", "/health")
    assert st == 200 and out["status"] == "ok"
    assert call(srv.port, "POST", "/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}],
                                                           "max_tokens": 3})[0] == 200
