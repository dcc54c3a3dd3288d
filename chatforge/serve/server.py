"""``chatforge serve``: an OpenAI-compatible API (FastAPI + uvicorn) and the web UI.

Endpoints (all under /v1 need ``Authorization: Bearer KEY`` when the server has an API key):

    GET  /v1/models                 the served checkpoints, by name (base, sft, rl, or --model NAME=PATH)
    POST /v1/completions            raw text completion (base-model playground), SSE with "stream": true
    POST /v1/chat/completions       chat like ``chatforge chat``: the model's tool calls run inside generation
                                    (streamed as ``delta.parts``, never as control-token text in content), the
                                    oldest exchanges are trimmed to fit the context (keeping the system prompt)
    POST /v1/tokenize               token ids, pieces and bytes of a text (the tokenizer page)
    POST /v1/arena/battle           two anonymous models answer one prompt
    POST /v1/arena/vote             record a vote (run/arena/votes.json), reveal the models
    GET  /v1/arena/leaderboard      Bradley–Terry ratings with 95% bootstrap intervals from all votes
                                    (people's and the automatic arena's, counted by judge)
    POST /v1/internals              logit lens, attention maps, residual norms of a prompt (pages.py)
    GET  /v1/report                 the run's report.md as HTML (figures inlined);  GET /report  its page
    GET  /openapi.json, /docs       the API spec;   GET /  the web UI (chatforge/static)

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad parameters
(never FastAPI's 422), 401 for a wrong key, 404 for an unknown model, 503 when the queue is full.
Everything is validated before the first streamed byte. Standard OpenAI fields chatforge has no use
for (``tools``, ``store``, ...) are accepted and named in a ``Warning`` response header; penalties,
``logit_bias`` and ``response_format: text`` are applied; roles ``developer`` and ``tool`` are read
(``serve/messages.py``). Generation runs in one ``batcher.Batcher``
thread per model, so concurrent requests share batched decode steps.

No endpoint touches the file system except the arena's votes file inside the run directory (written)
and the run's report.md and report/ figures (read).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import random
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.assistant.sandbox import add_unsafe_python_arg, apply_unsafe_python_arg
from chatforge.assistant.tools import default_tools
from chatforge.common import (add_config_args, CfError, config_from_args, get_device, make_parser, print0,
                              print_config, run_dir)
from chatforge.eval.arena import judge_of, OUTCOMES, summarize, VoteStore
from chatforge.model.checkpoint import latest_checkpoint, load_checkpoint, model_specs
from chatforge.model.quant import KINDS, quantize_for_inference
from chatforge.report import load_results
from chatforge.serve.batcher import Batcher, GenRequest
from chatforge.serve.messages import best_assistant, conversation_from_messages, fit_prompt
from chatforge.serve.pages import add_page_routes
from chatforge.world.build import load_world


STATIC = Path(__file__).parent / "static"
MAX_N = 8                 # choices per request
MAX_STOP = 4              # stop strings per request (as OpenAI)
MAX_TOP_LOGPROBS = 20
MAX_BIAS = 300           # logit_bias entries (as OpenAI)
MAX_TEXT = 1_000_000      # characters of one prompt / message / tokenize text
STAGES = ("base", "sft", "rl")


# ----------------------------------------------------------------------------- errors

class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 503)}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    if param is None:
        return f"The request body must be a JSON object with the documented fields ({e.get('msg', 'invalid')}).", None
    if e.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: expected a JSON object.", None
    if e.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if e.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    return f"Invalid value for '{param}': {e.get('msg', 'invalid')}.", param


# ----------------------------------------------------------------------------- request schemas

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Any = None


IGNORED = "accepted for compatibility and ignored (named in the response's Warning header)"


class SamplingParams(_Strict):
    model: str = Field(max_length=200)
    max_tokens: int | None = Field(None, ge=1, le=2**31, description="tokens to generate (prompt + this <= context)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1_000_000, description="chatforge extension; 0 or null = off")
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} stop strings")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="minus this once for every token already generated")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="minus this times a token's count so far")
    logit_bias: dict[str, float] | None = Field(None, description=f"token id -> bias in [-100, 100], at most {MAX_BIAS}")
    store: Any = Field(None, description=IGNORED)
    metadata: Any = Field(None, description=IGNORED)
    service_tier: Any = Field(None, description=IGNORED)


class CompletionRequest(SamplingParams):
    prompt: str | list[int] = Field(max_length=MAX_TEXT, description="text, or token ids")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="top candidates per token")
    echo: Literal[False] = False
    best_of: Any = Field(None, description=IGNORED)
    suffix: Any = Field(None, description=IGNORED)


class TextPart(_Strict):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT)


class ToolCallPart(_Strict):
    """chatforge extension: a tool call the assistant made (as streamed in ``delta.parts``)."""
    type: Literal["tool_call"]
    name: str = Field(max_length=64)
    input: str = Field(max_length=MAX_TEXT)


class ToolOutputPart(_Strict):
    """chatforge extension: what the tool returned."""
    type: Literal["tool_output"]
    text: str = Field(max_length=MAX_TEXT)


class FunctionCall(_Strict):
    name: str = Field(max_length=64)
    arguments: str = Field("", max_length=MAX_TEXT)


class ToolCall(_Strict):
    id: str | None = Field(None, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ToolCallPart | ToolOutputPart] | None = Field(None, max_length=MAX_TEXT)
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=200)


class ChatRequest(SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: Any = Field(None, description=IGNORED + "; the server runs its own tools")
    tool_choice: Any = Field(None, description=IGNORED)
    parallel_tool_calls: Any = Field(None, description=IGNORED)
    functions: Any = Field(None, description=IGNORED)
    function_call: Any = Field(None, description=IGNORED)
    modalities: Any = Field(None, description=IGNORED)
    audio: Any = Field(None, description=IGNORED)
    prediction: Any = Field(None, description=IGNORED)
    reasoning_effort: Any = Field(None, description=IGNORED)
    web_search_options: Any = Field(None, description=IGNORED)


class TokenizeRequest(_Strict):
    model: str = Field(max_length=200)
    text: str = Field(max_length=MAX_TEXT)
    allow_special: bool = Field(False, description="parse <|...|> special tokens in the text")


class BattleRequest(_Strict):
    prompt: str = Field(min_length=1, max_length=20_000)
    max_tokens: int | None = Field(256, ge=1, le=4096)
    temperature: float | None = Field(0.7, ge=0.0, le=2.0)


class VoteRequest(_Strict):
    battle_id: str = Field(max_length=64)
    winner: Literal["a", "b", "tie", "both_bad"]


def ignored_fields(body: BaseModel) -> list[str]:
    """The accepted-but-ignored fields a request set (for the Warning header)."""
    out = [f for f, info in type(body).model_fields.items()
           if info.description and info.description.startswith(IGNORED) and f in body.model_fields_set]
    fmt = getattr(body, "response_format", None)
    if fmt is not None and fmt.type != "text":
        out.append(f"response_format.type={fmt.type} (not enforced)")
    return out


def warning_headers(ignored: list[str], trimmed: int = 0) -> dict[str, str]:
    h = {"Warning": f'299 chatforge "ignored: {", ".join(ignored)}"'} if ignored else {}
    if trimmed:
        h["X-Chatforge-Trimmed-Messages"] = str(trimmed)
    return h


# ----------------------------------------------------------------------------- the served models and app state

@dataclass
class Served:
    name: str
    model: Any
    tokenizer: Any
    batcher: Batcher
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def seq_len(self) -> int:
        return self.model.config.seq_len

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "chatforge",
                "context_length": self.seq_len}


@dataclass
class AppState:
    """Everything the routes share: the models, the arena's votes and open battles, the API key."""
    served: dict[str, Served]
    votes: VoteStore | None
    api_key: str | None
    chat_default: str | None
    battles: "OrderedDict[str, dict]" = field(default_factory=OrderedDict)
    battles_lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, name: str) -> Served:
        if name not in self.served:
            raise ApiError(404, f"The model '{name}' does not exist; served models: {sorted(self.served)}.",
                           "model", "model_not_found")
        return self.served[name]

    def need_votes(self) -> VoteStore:
        if self.votes is None:
            raise ApiError(400, "The arena needs a run directory (serve --run DIR) to store votes.", None, "no_run_dir")
        return self.votes


def state(request: Request) -> AppState:
    return request.app.state.cf


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"Invalid value for 'stop': at most {MAX_STOP} stop strings, got {len(stops)}.", "stop")
    if any(not s for s in stops):
        raise ApiError(400, "Invalid value for 'stop': stop strings must be non-empty.", "stop")
    return stops


def _logit_bias(bias: dict[str, float] | None, n_vocab: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for k, v in (bias or {}).items():
        if not k.isdigit() or not 0 <= int(k) < n_vocab or not -100 <= v <= 100:
            raise ApiError(400, f"Invalid value for 'logit_bias': keys are token ids in 0..{n_vocab - 1}, "
                                f"values in [-100, 100]; got {k!r}: {v!r}.", "logit_bias")
        out[int(k)] = float(v)
    if len(out) > MAX_BIAS:
        raise ApiError(400, f"Invalid value for 'logit_bias': at most {MAX_BIAS} entries.", "logit_bias")
    return out


def _budget(s: Served, n_prompt: int, max_tokens: int | None, default: int | None, param: str) -> int:
    """Tokens to generate; 400 context_length_exceeded when prompt + completion exceed the context
    (the counts in the message are what was asked for, never negative)."""
    want = max_tokens if max_tokens is not None else (default if default is not None else s.seq_len - n_prompt)
    want = max(want, 1)
    if n_prompt + want > s.seq_len:
        raise ApiError(400, f"This model's maximum context length is {s.seq_len} tokens. However, you requested "
                            f"{n_prompt + want} tokens ({n_prompt} in the {param}, {want} for the completion). "
                            f"Please reduce the length of the {param} or the completion.",
                       param, "context_length_exceeded")
    return want


# ----------------------------------------------------------------------------- errors and auth

async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    msg, param = _validation_message(exc)
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


# ----------------------------------------------------------------------------- generation plumbing

def submit(s: Served, req: GenRequest, request: Request | None):
    """Submit req now (503 if the queue is full, before any byte is sent); return an async iterator
    of its events (kind, choice, ...); leaving it early cancels the request."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def emit(*ev: Any) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, ev)
        except RuntimeError:      # the loop is gone (server shutting down)
            req.cancelled.set()

    req.emit = emit
    if not s.batcher.submit(req):
        raise ApiError(503, "The server is overloaded; retry later.", None, "server_overloaded", "server_error")

    async def events():
        done = 0
        try:
            while done < req.n:
                try:
                    ev = await asyncio.wait_for(q.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if request is not None and await request.is_disconnected():
                        return
                    continue
                if ev[0] == "error":
                    raise ApiError(500, ev[1], None, None, "server_error")
                if ev[0] == "done":
                    done += 1
                yield ev
        finally:
            req.cancelled.set()   # a client that went away frees its rows at the next step
    return events()


def make_request(s: Served, body: SamplingParams, prompt: list[int], max_tokens: int,
                 stop_tokens: set[int], logprobs: int | None, structured: bool = False) -> GenRequest:
    if body.n > s.batcher.max_batch:
        raise ApiError(400, f"Invalid value for 'n': this server decodes at most {s.batcher.max_batch} "
                            f"sequences at once.", "n")
    return GenRequest(prompt=prompt, max_tokens=max_tokens, emit=lambda *a: None,
                      temperature=body.temperature, top_k=body.top_k or None,
                      top_p=body.top_p if body.top_p < 1.0 else None, n=body.n, seed=body.seed,
                      stop=_stops(body.stop), stop_tokens=stop_tokens, logprobs=logprobs,
                      presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                      logit_bias=_logit_bias(body.logit_bias, s.tokenizer.n_vocab), structured=structured)


def chat_stop_tokens(tok: Any) -> set[int]:
    return {tok.special("<|assistant_end|>"), tok.bos_id, tok.special("<|user_start|>")}


def piece(tok: Any, i: int) -> str:
    return tok.decode([i])


def token_display(b: bytes) -> str:
    """A token's bytes for people: the text, with bytes that are not (yet) a whole UTF-8 character as
    \\xNN escapes (a byte-level BPE splits emoji and CJK characters across tokens), never U+FFFD."""
    return b.decode("utf-8", errors="backslashreplace")


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage_of(prompt: list[int], n_out: list[int]) -> dict:
    return {"prompt_tokens": len(prompt), "completion_tokens": sum(n_out),
            "total_tokens": len(prompt) + sum(n_out)}


def event_stream(gen, make_chunk, head: dict, body: Any, usage: Callable[[], dict],
                 headers: dict[str, str] | None = None) -> StreamingResponse:
    """SSE body: the chunks of each event, the usage chunk if stream_options.include_usage asks for it,
    then [DONE]; an error after the first byte is sent as an event."""
    async def events():
        try:
            async for ev in gen:
                for c in make_chunk(ev):
                    yield sse(c)
            if body.stream_options and body.stream_options.include_usage:
                yield sse({**head, "choices": [], "usage": usage()})
        except ApiError as e:
            yield sse(e.body())
        yield "data: [DONE]\n\n"
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


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
    max_tokens = _budget(s, len(prompt), body.max_tokens, 16, "prompt")
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
    return prompt, trimmed, _budget(s, len(prompt), asked, None, "messages")


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
    m = _budget(s, len(ids), min(max_tokens, max(1, s.seq_len - len(ids))), None, "prompt")
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


def create_app(models: dict[str, tuple[Any, Any]], run_dir: str | Path | None = None, api_key: str | None = None,
               max_batch: int = 16, max_queue: int = 1024, tools: Callable[[str, str], str] | None = None) -> FastAPI:
    """The ASGI app serving ``models`` {name: (GPT, Tokenizer)}; arena votes go to run_dir/arena/;
    ``tools(name, input) -> str`` (e.g. ``assistant.tools.ToolBox``) runs the model's tool calls in chat."""
    if not models:
        raise CfError("serve: no models to serve (give --run with base/sft/rl checkpoints or --model NAME=PATH)")
    served = {name: Served(name, m, tok, Batcher(m, tok, max_batch=max_batch, max_queue=max_queue, tools=tools))
              for name, (m, tok) in models.items()}
    results = load_results(run_dir) if run_dir is not None else {}
    st = AppState(served, VoteStore(Path(run_dir) / "arena" / "votes.json") if run_dir is not None else None,
                  api_key, best_assistant(results, list(served)))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for s in served.values():
            s.batcher.close()

    app = FastAPI(title="chatforge", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API of chatforge checkpoints (completions, chat, tokenize, arena).")
    app.state.cf, app.state.served = st, served
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.middleware("http")(auth_and_last_resort)
    for method, path, endpoint, in_schema in ROUTES:
        app.add_api_route(path, endpoint, methods=[method], responses=ERRORS if in_schema else None,
                          include_in_schema=in_schema)
    add_page_routes(app, st.model, Path(run_dir) if run_dir is not None else None, ApiError, STATIC / "index.html",
                    ERRORS)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ----------------------------------------------------------------------------- loading and CLI

@dataclass
class ServeConfig:
    run: str = field(default="", metadata={"help": "run directory: serves its base/sft/rl checkpoints; arena votes go here"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (0.0.0.0 exposes the server to the network)"})
    port: int = field(default=8000, metadata={"help": "port"})
    api_key: str = field(default="", metadata={"help": "require 'Authorization: Bearer KEY' on /v1 (also $CHATFORGE_API_KEY)"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | mps | auto"})
    max_batch: int = field(default=16, metadata={"help": "rows decoded together per model (continuous batching)"})
    tools: bool = field(default=True, metadata={"help": "run the model's tool calls in chat (calculator, python, "
                                                        "search over the run's world)"})
    weights: str = field(default="fp32", metadata={"help": "inference weights: fp32 | bf16 | fp16 | int8 (weight-only)",
                                                   "choices": list(KINDS)})


def find_models(run: str | Path | None, specs: list[str]) -> dict[str, Path]:
    """{name: checkpoint path} from a run dir's stage folders and NAME=PATH specs (specs win)."""
    out: dict[str, Path] = {}
    if run:
        rd = run_dir(run)           # a bare name means runs/<name>
        if not rd.is_dir():
            raise CfError(f"--run {rd}: not a directory")
        for stage in STAGES:
            if (rd / stage).is_dir() and latest_checkpoint(rd / stage) is not None:
                out[stage] = rd / stage
    out.update(model_specs(specs))
    if not out:
        raise CfError("serve: no checkpoints found; give --run DIR (with base/, sft/ or rl/) or --model NAME=PATH")
    return out


def default_run_dir(paths: dict[str, Path]) -> Path:
    """Where arena votes go when no --run is given: the run dir above the first checkpoint."""
    p = next(iter(paths.values())).resolve()
    if p.name.startswith("step_"):
        p = p.parent
    return p.parent


def cli(argv: list[str]) -> None:

    parser = make_parser("chatforge serve", "OpenAI-compatible API server and web UI")
    add_config_args(parser, ServeConfig)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="serve a checkpoint under NAME (repeatable)")
    add_unsafe_python_arg(parser)
    args = parser.parse_args(argv)
    apply_unsafe_python_arg(args)
    cfg = config_from_args(ServeConfig, args)
    key = cfg.api_key or os.environ.get("CHATFORGE_API_KEY", "")
    print_config({**cfg.__dict__, "api_key": "***" if key else ""}, "serve config")
    paths = find_models(cfg.run or None, args.model)
    device = get_device(cfg.device)
    models = {}
    for name, path in paths.items():
        ck = load_checkpoint(path, device=device)
        models[name] = (quantize_for_inference(ck.model, cfg.weights), ck.tokenizer)
        print0(f"serve: model '{name}' <- {ck.path} ({ck.model.num_params() / 1e6:.1f}M params)")
    votes_dir = run_dir(cfg.run) if cfg.run else default_run_dir(paths)
    print0(f"serve: arena votes -> {votes_dir / 'arena' / 'votes.json'}")
    tools = None
    if cfg.tools:
        rd = run_dir(cfg.run) if cfg.run else None
        tools = default_tools(load_world(rd) if rd is not None and (rd / "world" / "world.json").exists() else None)
    app = create_app(models, votes_dir, key or None, max_batch=cfg.max_batch, tools=tools)
    if app.state.cf.chat_default:
        print0(f"serve: the web chat starts on '{app.state.cf.chat_default}' (RL only if it beat SFT in results.json)")
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print0(f"serve: WARNING: listening on {cfg.host} without an API key")
    print0(f"serve: http://{cfg.host}:{cfg.port}/  (API at /v1, spec at /openapi.json)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
