"""The OpenAI-compatible server: real clients (openai, raw HTTP) against uvicorn on 127.0.0.1."""
from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from serve_helpers import LiveServer, tiny_model, tiny_tokenizer

KEY = "test-key"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from chatforge.serve.server import create_app
    tok = tiny_tokenizer()
    run = tmp_path_factory.mktemp("run")
    models = {"base": (tiny_model("llama", 0), tok), "sft": (tiny_model("gpt2", 1), tok)}
    s = LiveServer(create_app(models, run_dir=run, api_key=KEY, max_batch=8))
    s.models, s.tok, s.run = models, tok, run
    yield s
    s.stop()


def call(srv, method, path, body=None, key=KEY, raw=None, timeout=60):
    """(status, parsed JSON or text) of one HTTP request."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    try:
        return r.status, json.loads(text)
    except json.JSONDecodeError:
        return r.status, text


def client(srv):
    import openai
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


# ----------------------------------------------------------------------------- batching parity

@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_decode_step_matches_sequential_forward(flavour):
    """The batched per-row-position decode step gives the same greedy tokens as GPT.forward alone."""
    from chatforge.serve.batcher import decode_step, sequential_generate
    from chatforge.model.gpt import KVCache
    m = tiny_model(flavour, 3)
    c = m.config
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [42], [7] * 20]
    ref = [sequential_generate(m, p, 12) for p in prompts]
    k = [torch.zeros(len(prompts), c.n_kv_head, c.seq_len, c.head_dim) for _ in range(c.n_layer)]
    v = [torch.zeros_like(t) for t in k]
    outs, pos = [], []
    with torch.no_grad():
        for r, p in enumerate(prompts):
            cache = KVCache.for_model(m, 1, max_len=len(p))
            logits = m(torch.tensor([p]), kv_cache=cache)[:, -1]
            for layer in range(c.n_layer):
                k[layer][r, :, :len(p)], v[layer][r, :, :len(p)] = cache.k[layer][0], cache.v[layer][0]
            outs.append([int(logits.argmax())])
            pos.append(len(p))
        for _ in range(11):
            logits = decode_step(m, torch.tensor([o[-1] for o in outs]), torch.tensor(pos), k, v)
            for o, t in zip(outs, logits.argmax(-1).tolist()):   # logits (B, V)
                o.append(t)
            pos = [p + 1 for p in pos]
    assert outs == ref


def test_concurrent_greedy_requests_equal_sequential(srv):
    """Requests of different lengths decoded together in the server = each decoded alone."""
    from chatforge.serve.batcher import sequential_generate
    tok, model = srv.tok, srv.models["base"][0]
    prompts = ["Hello", "The quick brown fox jumps", "Once upon a time there was", "12*7="]
    expect = [tok.decode(sequential_generate(model, [tok.bos_id] + tok.encode(p), 10)) for p in prompts]

    def one(p):
        return call(srv, "POST", "/v1/completions", {"model": "base", "prompt": p, "max_tokens": 10, "temperature": 0})

    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(one, prompts))
    for (status, body), exp in zip(got, expect):
        assert status == 200, body
        text = body["choices"][0]["text"]
        assert exp.startswith(text)   # equal unless the model emitted <|bos|> (a stop) earlier
        assert text == exp or body["choices"][0]["finish_reason"] == "stop"


# ----------------------------------------------------------------------------- the official client

def test_openai_client_completions_and_chat(srv):
    c = client(srv)
    ids = [m.id for m in c.models.list().data]
    assert ids == ["base", "sft"]
    r = c.completions.create(model="base", prompt="Hello world", max_tokens=6, temperature=0.8, seed=7,
                             logprobs=3)
    ch = r.choices[0]
    assert ch.finish_reason in ("length", "stop") and r.usage.completion_tokens >= 1
    assert len(ch.logprobs.tokens) == len(ch.logprobs.token_logprobs) == len(ch.logprobs.top_logprobs)
    assert all(lp <= 0 for lp in ch.logprobs.token_logprobs)
    assert all(len(t) <= 3 for t in ch.logprobs.top_logprobs)
    again = c.completions.create(model="base", prompt="Hello world", max_tokens=6, temperature=0.8, seed=7)
    assert again.choices[0].text == ch.text          # a seed makes sampling reproducible

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 12*7?"}]
    r = c.chat.completions.create(model="sft", messages=msgs, max_tokens=8, n=3, seed=1, temperature=1.0,
                                  top_p=0.9, logprobs=True, top_logprobs=2)
    assert [x.index for x in r.choices] == [0, 1, 2]
    assert all(x.message.role == "assistant" for x in r.choices)
    assert all(len(t.top_logprobs) == 2 for x in r.choices for t in x.logprobs.content)
    # streaming gives the same text as non-streaming for the same seed
    full = c.chat.completions.create(model="sft", messages=msgs, max_tokens=12, seed=5, temperature=1.0)
    stream = c.chat.completions.create(model="sft", messages=msgs, max_tokens=12, seed=5, temperature=1.0,
                                       stream=True, stream_options={"include_usage": True})
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for x in chunk.choices:
            parts.append(x.delta.content or "")
            finish = x.finish_reason or finish
    assert "".join(parts) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason and usage.completion_tokens == full.usage.completion_tokens


def test_stop_strings_cut_the_text(srv):
    c = client(srv)
    free = c.completions.create(model="base", prompt="Once upon", max_tokens=20, temperature=0).choices[0].text
    if len(free) < 6:
        pytest.skip("greedy continuation too short to cut")
    stop = free[3:5]
    cut = free[:free.find(stop)]
    for stream in (False, True):
        if stream:
            text = "".join(x.choices[0].text for x in c.completions.create(
                model="base", prompt="Once upon", max_tokens=20, temperature=0, stop=[stop], stream=True))
        else:
            r = c.completions.create(model="base", prompt="Once upon", max_tokens=20, temperature=0, stop=stop)
            text = r.choices[0].text
            assert r.choices[0].finish_reason == "stop"
        assert text == cut


# ----------------------------------------------------------------------------- errors

def test_errors_have_openai_shape_and_status(srv):
    import openai
    c = client(srv)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as e:   # checked before the first streamed byte
        c.completions.create(model="base", prompt="hi " * 200, max_tokens=5, stream=True)
    assert "maximum context length is 96 tokens" in str(e.value)
    cases = [
        ({"model": "base", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "base", "prompt": "x", "max_tokens": 10**9}, None),     # context length exceeded
        ({"model": "base", "prompt": "x", "n": 1000}, "n"),
        ({"model": "base", "prompt": "x", "temperature": "hot"}, "temperature"),
        ({"model": "base", "prompt": "x", "frobnicate": 1}, "frobnicate"),
        ({"model": "base", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "base", "prompt": [99999]}, "prompt"),
        ({"prompt": "x"}, "model"),
    ]
    for body, param in cases:
        status, out = call(srv, "POST", "/v1/completions", body)
        assert status == 400, (body, out)
        assert set(out["error"]) == {"message", "type", "param", "code"} and out["error"]["message"]
        if param:
            assert out["error"]["param"] == param, out
    status, out = call(srv, "POST", "/v1/completions", {"model": "base", "prompt": "x", "max_tokens": 10**9})
    assert out["error"]["code"] == "context_length_exceeded"
    status, out = call(srv, "POST", "/v1/chat/completions", raw="{not json")
    assert status == 400 and "parse the JSON" in out["error"]["message"]
    status, out = call(srv, "POST", "/v1/chat/completions", {"model": "sft", "messages": [{"role": "assistant", "content": "x"}]})
    assert status == 400 and out["error"]["param"] == "messages"
    status, out = call(srv, "GET", "/v1/models", key=None)
    assert status == 401 and out["error"]["code"] == "invalid_api_key"
    status, out = call(srv, "GET", "/v1/nothing-here")
    assert status == 404 and "error" in out
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fcommon.py", "/../../etc/passwd"):
        status, out = call(srv, "GET", path)       # nothing outside the package's static folder is served
        assert status == 404 and "CfError" not in str(out), path
    status, spec = call(srv, "GET", "/openapi.json", key=None)
    assert status == 200 and {"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/tokenize"} <= set(spec["paths"])


def test_tokenize_endpoint(srv):
    status, out = call(srv, "POST", "/v1/tokenize", {"model": "base", "text": "Hello world!"})
    assert status == 200
    assert [t["id"] for t in out["tokens"]] == srv.tok.encode("Hello world!") and out["count"] == len(out["tokens"])
    assert "".join(t["text"] for t in out["tokens"]) == "Hello world!"


# ----------------------------------------------------------------------------- robustness

def test_disconnect_mid_stream_and_many_connections(srv):
    """A client leaving mid-stream frees its rows; 100 concurrent connections are all answered."""
    from chatforge.serve.server import create_app
    long_ctx = LiveServer(create_app({"m": (tiny_model("llama", 0, seq_len=2048), srv.tok)}))
    try:
        b = long_ctx.server.config.app.state.served["m"].batcher
        c = http.client.HTTPConnection("127.0.0.1", long_ctx.port, timeout=30)
        c.request("POST", "/v1/completions", body=json.dumps({"model": "m", "prompt": "Hello", "max_tokens": 2000,
                                                              "stream": True, "temperature": 1.0}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200 and r.read(20)
        c.sock.close()    # vanish mid-stream
        c.close()
        t0 = time.time()
        while b.rows and time.time() - t0 < 20:
            time.sleep(0.02)
        assert b.rows == [] and b.stats["tokens"] < 1000     # stopped early, not after 2000 tokens
    finally:
        long_ctx.stop()

    served = srv.server.config.app.state.served["base"]

    def one(i):
        body = {"model": "base", "prompt": f"Hello {i}", "max_tokens": 4, "temperature": 0.5, "seed": i}
        if i % 2:
            body["stream"] = True
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
        c.request("POST", "/v1/completions", body=json.dumps(body),
                  headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read().decode()
        c.close()
        return r.status, text

    with ThreadPoolExecutor(100) as ex:
        results = list(ex.map(one, range(100)))
    assert all(s == 200 for s, _ in results), [r for r in results if r[0] != 200][:3]
    assert all(t.rstrip().endswith("data: [DONE]") for i, (_, t) in enumerate(results) if i % 2)
    t0 = time.time()
    while served.batcher.rows and time.time() - t0 < 10:    # rows retire just after their last event
        time.sleep(0.02)
    assert served.batcher.rows == []
    assert served.batcher.stats["max_active"] > 1          # requests really were batched together
    assert call(srv, "GET", "/v1/models")[0] == 200


def test_fuzz_api_from_openapi_spec(srv):
    """Bodies built from the OpenAPI schemas, mutated with wrong types/ranges/unknown fields: every
    answer is 200 or a documented 4xx error in OpenAI's shape, and the server keeps serving."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    status, spec = call(srv, "GET", "/openapi.json", key=None)
    schemas = spec["components"]["schemas"]
    junk = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                     st.text(max_size=30), st.lists(st.integers(-5, 400), max_size=5),
                     st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
    good = {"model": st.sampled_from(["base", "sft", "missing"]), "prompt": st.text(max_size=40),
            "max_tokens": st.integers(-2, 200), "n": st.integers(0, 10), "temperature": st.floats(-1, 3),
            "top_p": st.floats(-0.5, 1.5), "top_k": st.integers(-1, 400), "seed": st.integers(-5, 5),
            "stop": st.one_of(st.none(), st.text(min_size=0, max_size=3), st.lists(st.text(max_size=3), max_size=6)),
            "stream": st.booleans(), "logprobs": st.one_of(st.none(), st.integers(-1, 25), st.booleans()),
            "top_logprobs": st.integers(-1, 25), "text": st.text(max_size=40),
            "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot"]),
                                                        "content": st.text(max_size=20)}), max_size=3)}
    endpoints = {"/v1/completions": "CompletionRequest", "/v1/chat/completions": "ChatRequest",
                 "/v1/tokenize": "TokenizeRequest"}

    @st.composite
    def bodies(draw):
        path = draw(st.sampled_from(sorted(endpoints)))
        props = schemas[endpoints[path]]["properties"]
        body = {}
        for name in props:
            if draw(st.integers(0, 3)) == 0:
                continue
            body[name] = draw(junk) if draw(st.integers(0, 5)) == 0 else draw(good.get(name, junk))
        if draw(st.integers(0, 9)) == 0:
            body[draw(st.text(min_size=1, max_size=8))] = draw(junk)
        if "max_tokens" in body and isinstance(body["max_tokens"], int) and body["max_tokens"] > 8:
            body["max_tokens"] = 8          # keep the run short; huge values are tested elsewhere
        return path, body

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    @given(bodies())
    def check(pb):
        path, body = pb
        status, out = call(srv, "POST", path, body)
        assert status in (200, 400, 404), (status, path, body, out)
        if status != 200:
            assert set(out["error"]) == {"message", "type", "param", "code"}, out
        elif body.get("stream"):
            assert out.rstrip().endswith("data: [DONE]")

    check()
    assert call(srv, "GET", "/v1/models")[0] == 200


# ----------------------------------------------------------------------------- arena and model discovery

def test_bradley_terry_orders_models_and_votes_persist(tmp_path):
    import random
    from chatforge.eval.arena import VoteStore, bradley_terry, leaderboard
    from chatforge.common import CfError
    strength = {"rl": 3.0, "sft": 1.0, "base": 0.3}
    rng = random.Random(0)
    store = VoteStore(tmp_path / "arena" / "votes.json")
    for _ in range(300):
        a, b = rng.sample(sorted(strength), 2)
        store.add(a, b, "a" if rng.random() < strength[a] / (strength[a] + strength[b]) else "b")
    ratings = bradley_terry(store.votes)
    assert ratings["rl"] > ratings["sft"] > ratings["base"]
    # 3:1 true odds is ~190 Elo points; the fit should land near it
    assert 100 < ratings["rl"] - ratings["sft"] < 300
    again = VoteStore(tmp_path / "arena" / "votes.json")      # reloaded from disk
    assert len(again.votes) == 300 and [r["model"] for r in leaderboard(again.votes)] == ["rl", "sft", "base"]
    assert not list((tmp_path / "arena").glob("*.tmp"))
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(CfError, match="bad.json"):
        VoteStore(tmp_path / "bad.json")


def test_arena_endpoints_record_votes_in_run_dir(srv):
    status, b = call(srv, "POST", "/v1/arena/battle", {"prompt": "What is 12*7?", "max_tokens": 6})
    assert status == 200 and {"battle_id", "answer_a", "answer_b"} <= set(b)
    status, v = call(srv, "POST", "/v1/arena/vote", {"battle_id": b["battle_id"], "winner": "b"})
    assert status == 200 and {v["model_a"], v["model_b"]} == {"base", "sft"}
    assert call(srv, "POST", "/v1/arena/vote", {"battle_id": b["battle_id"], "winner": "a"})[0] == 404  # once
    assert call(srv, "POST", "/v1/arena/vote", {"battle_id": "x", "winner": "maybe"})[0] == 400
    votes = json.loads((srv.run / "arena" / "votes.json").read_text())
    assert votes[-1]["winner"] == "b"
    status, lb = call(srv, "GET", "/v1/arena/leaderboard")
    assert status == 200 and lb["leaderboard"][0]["model"] == v["model_b"]
    assert lb["by_judge"] == {"human": 1} and votes[-1]["judge"] == "human"
    top = lb["leaderboard"][0]
    assert top["lo"] <= top["rating"] <= top["hi"]          # 95% bootstrap interval


def test_find_models_from_run_dir_and_specs(tmp_path):
    from chatforge.model.checkpoint import save_checkpoint
    from chatforge.common import CfError
    from chatforge.serve.server import find_models
    tok = tiny_tokenizer()
    for stage in ("base", "sft"):
        save_checkpoint(tmp_path / stage, 1, tiny_model(), tok, {})
    (tmp_path / "rl").mkdir()     # a stage folder without a checkpoint is skipped
    found = find_models(tmp_path, [])
    assert sorted(found) == ["base", "sft"]
    assert sorted(find_models(tmp_path, [f"mine={tmp_path / 'sft'}"])) == ["base", "mine", "sft"]
    with pytest.raises(CfError, match="NAME=PATH"):
        find_models(None, ["oops"])
    with pytest.raises(CfError, match="no complete checkpoint"):
        find_models(None, [f"x={tmp_path / 'rl'}"])


def test_serve_cli_serves_a_run_dir(tmp_path):
    """`chatforge serve --run DIR` finds the stage checkpoints and binds 127.0.0.1 by default."""
    import subprocess
    import sys

    from chatforge.model.checkpoint import save_checkpoint
    from serve_helpers import free_port
    tok = tiny_tokenizer()
    for stage in ("base", "rl"):
        save_checkpoint(tmp_path / stage, 1, tiny_model(), tok, {})
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "chatforge", "serve", "--run", str(tmp_path), "--port", str(port),
                          "--device", "cpu", "--api-key", "k"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        t0, status, out = time.time(), None, None
        while time.time() - t0 < 60:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/v1/models", headers={"Authorization": "Bearer k"})
                r = c.getresponse()
                status, out = r.status, json.loads(r.read())
                break
            except OSError:
                if p.poll() is not None:
                    break
                time.sleep(0.2)
        assert status == 200, p.stdout.read().decode() if p.poll() is not None else "no answer"
        assert [m["id"] for m in out["data"]] == ["base", "rl"]
    finally:
        p.terminate()
        p.wait(timeout=10)
    log = p.stdout.read().decode()
    assert "http://127.0.0.1:" in log and "***" in log and "k\"" not in log   # the key is not printed
