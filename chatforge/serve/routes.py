"""The API's route functions (module level, over the one ``AppState`` in ``request.app.state.cf``).

``ROUTES`` lists them with their method and path; ``server.create_app`` registers them together with
the error handlers and the API-key middleware defined here. The endpoints are listed in
``server.py``'s docstring. Completions and chat build their OpenAI response objects from the
batcher's events (``CompletionResult``, ``ChatResult``), the same objects for a streamed and a whole
answer.
"""
from __future__ import annotations

import asyncio
import hmac
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.common import CfError
from chatforge.eval.arena import judge_of, OUTCOMES, summarize
from chatforge.serve.batcher import GenRequest
from chatforge.serve.messages import conversation_from_messages, fit_prompt
from chatforge.serve.schemas import (ApiError, BattleRequest, ChatRequest, CompletionRequest, ignored_fields,
                                     TokenizeRequest, validation_message, VoteRequest, warning_headers)
from chatforge.serve.served import (budget, chat_stop_tokens, event_stream, make_request, piece, Served, state,
                                    submit, token_display, usage_of)

STATIC = Path(__file__).parent / "static"


# ----------------------------------------------------------------------------- errors and auth

async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    msg, param = validation_message(exc)
    return ApiError(400, msg, param).response()


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return ApiError(exc.status_code, str(exc.detail), None, code).response()


async def auth_and_last_resort(request: Request, call_next: Any) -> Any:
    key = state(request).api_key
    if key and request.url.path.startswith("/v1/"):
        got = request.headers.get("authorization", "")
        token = got[7:] if got[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            return ApiError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                            None, "invalid_api_key").response()
    try:
        return await call_next(request)
    except Exception as e:  # last resort: a bug answers 500 in the documented shape
        return ApiError(500, f"internal error: {type(e).__name__}", None, None, "server_error").response()


# ----------------------------------------------------------------------------- /v1/models, /v1/tokenize

async def list_models(request: Request) -> dict:
    """The served models; ``chat_default`` (extension) is the stage the chat should start with."""
    st = state(request)
    return {"object": "list", "data": [s.card() for s in st.served.values()], "chat_default": st.chat_default}


async def get_model_info(model_id: str, request: Request) -> dict:
    return state(request).model(model_id).card()


async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    """Token ids, their text (``text``: as decoded alone, may hold U+FFFD for a partial character;
    ``display``: partial bytes as \\xNN) and raw bytes."""
    tok = state(request).model(body.model).tokenizer
    ids = tok.encode(body.text, allowed_special="all" if body.allow_special else ())
    tokens = []
    for i in ids:
        b = tok.decode_bytes([i])
        tokens.append({"id": i, "text": piece(tok, i), "display": token_display(b), "bytes": list(b)})
    return {"model": body.model, "count": len(ids), "tokens": tokens}


# ----------------------------------------------------------------------------- /v1/completions

class CompletionResult:
    """The text, logprobs and finish reason of each choice of a completion, built from its events."""
    def __init__(self, tok: Any, body: CompletionRequest):
        self.tok, self.body = tok, body
        self.texts = [""] * body.n
        self.lps: list[list[dict]] = [[] for _ in range(body.n)]
        self.finish: list[str | None] = [None] * body.n
        self.n_out = [0] * body.n

    def lp_block(self, info: dict | None, offset: int) -> dict | None:
        if info is None:
            return None
        tok, top = self.tok, info.get("top", [])
        return {"tokens": [piece(tok, info["id"])], "token_logprobs": [info["logprob"]],
                "top_logprobs": [{piece(tok, t): v for t, v in top}] if self.body.logprobs else None,
                "text_offset": [offset],
                # extensions: OpenAI's dict merges candidates whose pieces print alike (partial UTF-8);
                # "display" shows partial characters as \xNN bytes instead of U+FFFD
                "displays": [token_display(tok.decode_bytes([info["id"]]))],
                "top_candidates": [[{"id": t, "token": piece(tok, t), "display": token_display(tok.decode_bytes([t])),
                                     "logprob": v} for t, v in top]]}

    def on(self, ev: tuple) -> dict | None:
        """Record one event; the streamed choice it makes (None for events a completion ignores)."""
        if ev[0] == "token":
            _, c, delta, info = ev
            off = len(self.texts[c])
            self.texts[c] += delta
            block = self.lp_block(info, off)
            if block is not None:
                self.lps[c].append(block)
            return {"index": c, "text": delta, "logprobs": block, "finish_reason": None}
        if ev[0] == "done":
            _, c, reason, n = ev
            self.finish[c], self.n_out[c] = reason, n
            return {"index": c, "text": "", "logprobs": None, "finish_reason": reason}
        return None

    def choices(self) -> list[dict]:
        out = []
        for c in range(self.body.n):
            lp, blocks = None, self.lps[c]
            if self.body.logprobs is not None:
                lp = {k: [x[k][0] for x in blocks] for k in ("tokens", "token_logprobs", "text_offset", "displays",
                                                              "top_candidates")}
                lp["top_logprobs"] = [x["top_logprobs"][0] for x in blocks] if self.body.logprobs else None
            out.append({"index": c, "text": self.texts[c], "logprobs": lp, "finish_reason": self.finish[c]})
        return out


async def completions(body: CompletionRequest, request: Request, response: Response) -> Any:
    s = state(request).model(body.model)
    tok = s.tokenizer
    if isinstance(body.prompt, str):
        prompt = [tok.bos_id] + tok.encode(body.prompt)   # a document starts with <|bos|>
    else:
        if not body.prompt or any(not 0 <= t < tok.n_vocab for t in body.prompt):
            raise ApiError(400, f"Invalid value for 'prompt': token ids must be in 0..{tok.n_vocab - 1}.", "prompt")
        prompt = list(body.prompt)
    max_tokens = budget(s, len(prompt), body.max_tokens, 16, "prompt")
    req = make_request(s, body, prompt, max_tokens, {tok.bos_id}, body.logprobs)
    head = {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": s.name}
    res, headers = CompletionResult(tok, body), warning_headers(ignored_fields(body))
    gen = submit(s, req, request)
    if body.stream:
        def chunk(ev):
            ch = res.on(ev)
            if ch is None or (ev[0] == "token" and not ch["text"] and ch["logprobs"] is None):
                return []
            return [{**head, "choices": [ch]}]
        return event_stream(gen, chunk, head, body, lambda: usage_of(prompt, res.n_out), headers)
    async for ev in gen:
        res.on(ev)
    response.headers.update(headers)
    return {**head, "choices": res.choices(), "usage": usage_of(prompt, res.n_out)}


# ----------------------------------------------------------------------------- /v1/chat/completions

def chat_prompt(s: Served, body: ChatRequest) -> tuple[list[int], int, int]:
    """(prompt ids, messages trimmed from the front, tokens to generate) of a chat request."""
    tok = s.tokenizer
    try:
        conv = conversation_from_messages([m.model_dump(exclude_none=True) for m in body.messages])
    except CfError as e:
        raise ApiError(400, f"Invalid value for 'messages': {e}", "messages") from None
    asked = body.max_completion_tokens or body.max_tokens
    room = asked if asked is not None else max(1, s.seq_len // 4)   # auto: at least a quarter of the context
    prompt, trimmed = fit_prompt(tok, conv, s.seq_len, min(room, s.seq_len))
    return prompt, trimmed, budget(s, len(prompt), asked, None, "messages")


class ChatResult:
    """Each choice's text, parts (text, tool calls and outputs) and logprobs, built from its events."""
    def __init__(self, tok: Any, body: ChatRequest, head: dict):
        self.tok, self.body, self.head = tok, body, head
        self.parts: list[list[dict]] = [[] for _ in range(body.n)]
        self.lps: list[list[dict]] = [[] for _ in range(body.n)]
        self.finish: list[str | None] = [None] * body.n
        self.n_out = [0] * body.n
        self.started = [False] * body.n

    def lp_items(self, info: dict | None) -> list[dict]:
        if info is None or not self.body.logprobs:
            return []
        tok = self.tok

        def one(t: int, v: float) -> dict:
            return {"token": piece(tok, t), "logprob": v, "bytes": list(tok.decode_bytes([t]))}
        return [{**one(info["id"], info["logprob"]), "top_logprobs": [one(t, v) for t, v in info.get("top", [])]}]

    def on(self, ev: tuple) -> tuple[int, dict | None, list[dict]]:
        """Record one event: (choice, delta to stream or None, its logprob items)."""
        c = ev[1]
        if ev[0] == "token":
            items = self.lp_items(ev[3])
            self.lps[c] += items
            if ev[2]:
                ps = self.parts[c]
                if ps and ps[-1]["type"] == "text":
                    ps[-1]["text"] += ev[2]
                else:
                    ps.append({"type": "text", "text": ev[2]})
            return c, ({"content": ev[2]} if ev[2] or items else None), items
        if ev[0] in ("tool_call", "tool_output"):
            part = {"type": "tool_call", "name": ev[2], "input": ev[3]} if ev[0] == "tool_call" else \
                {"type": "tool_output", "text": ev[2]}
            self.parts[c].append(part)
            return c, {"parts": [part]}, []    # extension: tool use as structured parts, never in content
        self.finish[c], self.n_out[c] = ev[2], ev[3]
        return c, None, []

    def chunks(self, ev: tuple) -> list[dict]:
        out = []
        c, delta, items = self.on(ev)
        if not self.started[c]:
            self.started[c] = True
            out.append({**self.head, "choices": [{"index": c, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]})
        if delta is not None:
            out.append({**self.head, "choices": [{"index": c, "delta": delta, "finish_reason": None,
                                                  "logprobs": {"content": items} if self.body.logprobs else None}]})
        elif ev[0] == "done":
            out.append({**self.head, "choices": [{"index": c, "delta": {}, "logprobs": None, "finish_reason": ev[2]}]})
        return out

    def message(self, c: int) -> dict:
        parts = self.parts[c]
        msg = {"role": "assistant", "content": "".join(p["text"] for p in parts if p["type"] == "text")}
        if any(p["type"] != "text" for p in parts):
            msg["parts"] = parts
        return msg


async def chat_completions(body: ChatRequest, request: Request, response: Response) -> Any:
    """Chat with the tools run inside generation; long conversations lose their oldest exchanges
    (header X-Chatforge-Trimmed-Messages says how many)."""
    s = state(request).model(body.model)
    prompt, trimmed, max_tokens = chat_prompt(s, body)
    k = (body.top_logprobs or 0) if body.logprobs else None
    req = make_request(s, body, prompt, max_tokens, chat_stop_tokens(s.tokenizer), k, structured=True)
    head = {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": s.name, "system_fingerprint": None}
    res, headers = ChatResult(s.tokenizer, body, head), warning_headers(ignored_fields(body), trimmed)
    gen = submit(s, req, request)
    if body.stream:
        return event_stream(gen, res.chunks, head, body, lambda: usage_of(prompt, res.n_out), headers)
    async for ev in gen:
        res.on(ev)
    response.headers.update(headers)
    return {**head, "object": "chat.completion",
            "choices": [{"index": c, "message": res.message(c),
                         "logprobs": {"content": res.lps[c]} if body.logprobs else None,
                         "finish_reason": res.finish[c]} for c in range(body.n)],
            "usage": usage_of(prompt, res.n_out)}


# ----------------------------------------------------------------------------- arena

async def answer(s: Served, prompt: str, max_tokens: int, temperature: float) -> str:
    tok = s.tokenizer
    ids = tok.render_for_completion({"messages": [{"role": "user", "content": prompt}]})
    m = budget(s, len(ids), min(max_tokens, max(1, s.seq_len - len(ids))), None, "prompt")
    req = GenRequest(prompt=ids, max_tokens=m, emit=lambda *a: None, temperature=temperature,
                     stop_tokens=chat_stop_tokens(tok), structured=True)
    text = ""
    async for ev in submit(s, req, None):
        if ev[0] == "token":
            text += ev[2]
    return text


async def arena_battle(body: BattleRequest, request: Request) -> dict:
    st = state(request)
    st.need_votes()
    names = list(st.served)
    a, b = random.sample(names, 2) if len(names) >= 2 else (names[0], names[0])
    mt, temp = body.max_tokens or 256, body.temperature or 0.0
    ta, tb = await asyncio.gather(answer(st.served[a], body.prompt, mt, temp),
                                  answer(st.served[b], body.prompt, mt, temp))
    bid = uuid.uuid4().hex
    with st.battles_lock:
        st.battles[bid] = {"model_a": a, "model_b": b, "prompt": body.prompt}
        while len(st.battles) > 1000:
            st.battles.popitem(last=False)
    return {"battle_id": bid, "answer_a": ta, "answer_b": tb}


async def arena_vote(body: VoteRequest, request: Request) -> dict:
    st = state(request)
    store = st.need_votes()
    with st.battles_lock:
        battle = st.battles.pop(body.battle_id, None)
    if battle is None:
        raise ApiError(404, "Unknown or already voted battle_id.", "battle_id", "battle_not_found")
    assert body.winner in OUTCOMES
    await asyncio.to_thread(store.add, battle["model_a"], battle["model_b"], body.winner, battle["prompt"])
    return {"model_a": battle["model_a"], "model_b": battle["model_b"], "winner": body.winner}


async def arena_leaderboard(request: Request) -> dict:
    """Ratings with 95% bootstrap intervals from every vote: people's and the automatic arena's."""
    st = state(request)
    all_votes = st.votes.snapshot() if st.votes is not None else []
    board = await asyncio.to_thread(summarize, all_votes, list(st.served), random.Random(0), 100)
    return {"leaderboard": board["leaderboard"], "votes": len(all_votes),
            "by_judge": dict(Counter(judge_of(v) for v in all_votes))}


# ----------------------------------------------------------------------------- UI and health

async def health(request: Request) -> dict:
    return {"status": "ok", "models": {n: s.batcher.stats for n, s in state(request).served.items()}}


async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


# (method, path, endpoint, in the OpenAPI spec)
ROUTES = [("GET", "/v1/models", list_models, True), ("GET", "/v1/models/{model_id}", get_model_info, True),
          ("POST", "/v1/completions", completions, True), ("POST", "/v1/chat/completions", chat_completions, True),
          ("POST", "/v1/tokenize", tokenize, True), ("POST", "/v1/arena/battle", arena_battle, True),
          ("POST", "/v1/arena/vote", arena_vote, True), ("GET", "/v1/arena/leaderboard", arena_leaderboard, True),
          ("GET", "/health", health, False), ("GET", "/", index, False)]
