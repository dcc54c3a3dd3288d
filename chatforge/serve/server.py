"""``chatforge serve``: an OpenAI-compatible API (FastAPI + uvicorn) and the web UI.

Endpoints (all under /v1 need ``Authorization: Bearer KEY`` when the server has an API key):

    GET  /v1/models                 the served checkpoints, by name (base, sft, rl, or --model NAME=PATH)
    POST /v1/completions            raw text completion (base-model playground), SSE with "stream": true
    POST /v1/chat/completions       chat, rendered with the tokenizer's chat format, SSE streaming
    POST /v1/tokenize               token ids and pieces of a text (the tokenizer page)
    POST /v1/arena/battle           two anonymous models answer one prompt
    POST /v1/arena/vote             record a vote (run/arena/votes.json), reveal the models
    GET  /v1/arena/leaderboard      Bradley–Terry ratings from all votes
    GET  /openapi.json, /docs       the API spec;   GET /  the web UI (chatforge/static)

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad parameters
(never FastAPI's 422), 401 for a wrong key, 404 for an unknown model, 503 when the queue is full.
Everything is validated before the first streamed byte. Generation runs in one ``batcher.Batcher``
thread per model, so concurrent requests share batched decode steps.

No endpoint touches the file system except the arena's votes file inside the run directory.
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
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.common import (add_config_args, CfError, config_from_args, get_device, make_parser, print0,
                              print_config, run_dir)
from chatforge.eval.arena import leaderboard, OUTCOMES, VoteStore
from chatforge.model.checkpoint import latest_checkpoint, load_checkpoint
from chatforge.serve.batcher import Batcher, GenRequest
from chatforge.tokenizer.tokenizer import validate_conversation




STATIC = Path(__file__).parent / "static"
MAX_N = 8                 # choices per request
MAX_STOP = 4              # stop strings per request (as OpenAI)
MAX_TOP_LOGPROBS = 20
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


class CompletionRequest(SamplingParams):
    prompt: str | list[int] = Field(max_length=MAX_TEXT, description="text, or token ids")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="top candidates per token")
    echo: Literal[False] = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] = Field(max_length=MAX_TEXT)
    name: str | None = Field(None, max_length=64)


class ChatRequest(SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


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


# ----------------------------------------------------------------------------- the served models

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


def _conv_from_messages(messages: list[ChatMessage]) -> dict:
    out = []
    for m in messages:
        text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
        out.append({"role": m.role, "content": text})
    return {"messages": out}


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"Invalid value for 'stop': at most {MAX_STOP} stop strings, got {len(stops)}.", "stop")
    if any(not s for s in stops):
        raise ApiError(400, "Invalid value for 'stop': stop strings must be non-empty.", "stop")
    return stops


def _budget(s: Served, n_prompt: int, max_tokens: int | None, default: int | None, param: str) -> int:
    """Tokens to generate; 400 context_length_exceeded when prompt + completion exceed the context."""
    want = max_tokens if max_tokens is not None else (default if default is not None else s.seq_len - n_prompt)
    if n_prompt + max(want, 1) > s.seq_len:
        raise ApiError(400, f"This model's maximum context length is {s.seq_len} tokens. However, you requested "
                            f"{n_prompt + want} tokens ({n_prompt} in the {param}, {want} for the completion). "
                            f"Please reduce the length of the {param} or the completion.",
                       param, "context_length_exceeded")
    return want


# ----------------------------------------------------------------------------- the app

def create_app(models: dict[str, tuple[Any, Any]], run_dir: str | Path | None = None, api_key: str | None = None,
               max_batch: int = 16, max_queue: int = 1024) -> FastAPI:
    """The ASGI app serving ``models`` {name: (GPT, Tokenizer)}; arena votes go to run_dir/arena/."""
    if not models:
        raise CfError("serve: no models to serve (give --run with base/sft/rl checkpoints or --model NAME=PATH)")
    served = {name: Served(name, m, tok, Batcher(m, tok, max_batch=max_batch, max_queue=max_queue))
              for name, (m, tok) in models.items()}
    votes = VoteStore(Path(run_dir) / "arena" / "votes.json") if run_dir is not None else None
    battles: "OrderedDict[str, dict]" = OrderedDict()
    battles_lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for s in served.values():
            s.batcher.close()

    app = FastAPI(title="chatforge", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API of chatforge checkpoints (completions, chat, tokenize, arena).")
    app.state.served = served

    # ---------------------------------------------------------------- error handling and auth
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc)
        return ApiError(400, msg, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ApiError(exc.status_code, str(exc.detail), None, code).response()

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path.startswith("/v1/"):
            got = request.headers.get("authorization", "")
            token = got[7:] if got[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return ApiError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                                None, "invalid_api_key").response()
        try:
            return await call_next(request)
        except Exception as e:  # last resort: a bug answers 500 in the documented shape
            return ApiError(500, f"internal error: {type(e).__name__}", None, None, "server_error").response()

    def get_model(name: str) -> Served:
        if name not in served:
            raise ApiError(404, f"The model '{name}' does not exist; served models: {sorted(served)}.",
                           "model", "model_not_found")
        return served[name]

    # ---------------------------------------------------------------- generation plumbing
    def run(s: Served, req: GenRequest, request: Request | None):
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
                     stop_tokens: set[int], logprobs: int | None) -> GenRequest:
        if body.n > s.batcher.max_batch:
            raise ApiError(400, f"Invalid value for 'n': this server decodes at most {s.batcher.max_batch} "
                                f"sequences at once.", "n")
        return GenRequest(prompt=prompt, max_tokens=max_tokens, emit=lambda *a: None,
                          temperature=body.temperature, top_k=body.top_k or None,
                          top_p=body.top_p if body.top_p < 1.0 else None, n=body.n, seed=body.seed,
                          stop=_stops(body.stop), stop_tokens=stop_tokens, logprobs=logprobs)

    def piece(tok: Any, i: int) -> str:
        return tok.decode([i])

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def usage_of(prompt: list[int], n_out: list[int]) -> dict:
        return {"prompt_tokens": len(prompt), "completion_tokens": sum(n_out),
                "total_tokens": len(prompt) + sum(n_out)}

    def event_stream(gen, make_chunk, head: dict, body: Any, usage: Callable[[], dict]) -> StreamingResponse:
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
        return StreamingResponse(events(), media_type="text/event-stream")

    # ---------------------------------------------------------------- endpoints
    @app.get("/v1/models", responses=ERRORS)
    async def list_models() -> dict:
        return {"object": "list", "data": [
            {"id": s.name, "object": "model", "created": s.created, "owned_by": "chatforge",
             "context_length": s.seq_len} for s in served.values()]}

    @app.get("/v1/models/{model_id}", responses=ERRORS)
    async def get_model_info(model_id: str) -> dict:
        s = get_model(model_id)
        return {"id": s.name, "object": "model", "created": s.created, "owned_by": "chatforge",
                "context_length": s.seq_len}

    @app.post("/v1/completions", responses=ERRORS)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        s = get_model(body.model)
        tok = s.tokenizer
        if isinstance(body.prompt, str):
            prompt = [tok.bos_id] + tok.encode(body.prompt)   # a document starts with <|bos|>
        else:
            if not body.prompt or any(not 0 <= t < tok.n_vocab for t in body.prompt):
                raise ApiError(400, f"Invalid value for 'prompt': token ids must be in 0..{tok.n_vocab - 1}.", "prompt")
            prompt = list(body.prompt)
        max_tokens = _budget(s, len(prompt), body.max_tokens, 16, "prompt")
        req = make_request(s, body, prompt, max_tokens, {tok.bos_id}, body.logprobs)
        rid, created = "cmpl-" + uuid.uuid4().hex, int(time.time())

        def lp_block(info: dict | None, offset: int) -> dict | None:
            if info is None:
                return None
            top = info.get("top", [])
            return {"tokens": [piece(tok, info["id"])], "token_logprobs": [info["logprob"]],
                    "top_logprobs": [{piece(tok, t): v for t, v in top}] if body.logprobs else None,
                    "text_offset": [offset],
                    # extension: OpenAI's dict merges candidates whose pieces print alike (partial UTF-8)
                    "top_candidates": [[{"id": t, "token": piece(tok, t), "logprob": v} for t, v in top]]}

        texts = [""] * body.n
        lps: list[list[dict]] = [[] for _ in range(body.n)]
        finish: list[str | None] = [None] * body.n
        n_out = [0] * body.n

        def on(ev: tuple) -> dict | None:
            if ev[0] == "token":
                _, c, delta, info = ev
                off = len(texts[c])
                texts[c] += delta
                if info is not None:
                    lps[c].append(lp_block(info, off))
                return {"index": c, "text": delta, "logprobs": lp_block(info, off), "finish_reason": None}
            _, c, reason, n = ev
            finish[c], n_out[c] = reason, n
            return {"index": c, "text": "", "logprobs": None, "finish_reason": reason}

        head = {"id": rid, "object": "text_completion", "created": created, "model": s.name}
        gen = run(s, req, request)
        if body.stream:
            def chunk(ev):
                ch = on(ev)
                if ev[0] == "token" and not ch["text"] and ch["logprobs"] is None:
                    return []
                return [{**head, "choices": [ch]}]

            return event_stream(gen, chunk, head, body, lambda: usage_of(prompt, n_out))
        async for ev in gen:
            on(ev)
        choices = []
        for c in range(body.n):
            lp = None
            if body.logprobs is not None:
                lp = {"tokens": [x["tokens"][0] for x in lps[c]], "token_logprobs": [x["token_logprobs"][0] for x in lps[c]],
                      "top_logprobs": [x["top_logprobs"][0] for x in lps[c]] if body.logprobs else None,
                      "text_offset": [x["text_offset"][0] for x in lps[c]],
                      "top_candidates": [x["top_candidates"][0] for x in lps[c]]}
            choices.append({"index": c, "text": texts[c], "logprobs": lp, "finish_reason": finish[c]})
        return {**head, "choices": choices, "usage": usage_of(prompt, n_out)}

    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        s = get_model(body.model)
        tok = s.tokenizer
        conv = _conv_from_messages(body.messages)
        if conv["messages"][-1]["role"] == "assistant":
            raise ApiError(400, "Invalid value for 'messages': the last message must be from the user.", "messages")
        try:
            validate_conversation(conv, "messages")
            prompt = tok.render_for_completion(conv)
        except CfError as e:
            raise ApiError(400, f"Invalid value for 'messages': {e}", "messages") from None
        max_tokens = _budget(s, len(prompt), body.max_completion_tokens or body.max_tokens, None, "messages")
        stop_ids = {tok.special("<|assistant_end|>"), tok.bos_id, tok.special("<|user_start|>")}
        k = (body.top_logprobs or 0) if body.logprobs else None
        req = make_request(s, body, prompt, max_tokens, stop_ids, k)
        rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

        def lp_items(info: dict | None) -> list[dict]:
            if info is None:
                return []
            def one(t: int, v: float) -> dict:
                return {"token": piece(tok, t), "logprob": v, "bytes": list(tok.decode_bytes([t]))}
            return [{**one(info["id"], info["logprob"]), "top_logprobs": [one(t, v) for t, v in info.get("top", [])]}]

        texts = [""] * body.n
        lps: list[list[dict]] = [[] for _ in range(body.n)]
        finish: list[str | None] = [None] * body.n
        n_out = [0] * body.n
        started = [False] * body.n
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": s.name,
                "system_fingerprint": None}

        gen = run(s, req, request)
        if body.stream:
            def chunk(ev):
                out = []
                c = ev[1]
                if not started[c]:
                    started[c] = True
                    out.append({**head, "choices": [{"index": c, "delta": {"role": "assistant", "content": ""},
                                                     "logprobs": None, "finish_reason": None}]})
                if ev[0] == "token":
                    items = lp_items(ev[3]) if body.logprobs else []
                    if ev[2] or items:
                        out.append({**head, "choices": [{"index": c, "delta": {"content": ev[2]},
                                                         "logprobs": {"content": items} if body.logprobs else None,
                                                         "finish_reason": None}]})
                else:
                    n_out[c] = ev[3]
                    out.append({**head, "choices": [{"index": c, "delta": {}, "logprobs": None, "finish_reason": ev[2]}]})
                return out

            return event_stream(gen, chunk, head, body, lambda: usage_of(prompt, n_out))
        async for ev in gen:
            c = ev[1]
            if ev[0] == "token":
                texts[c] += ev[2]
                lps[c] += lp_items(ev[3]) if body.logprobs else []
            else:
                finish[c], n_out[c] = ev[2], ev[3]
        return {"id": rid, "object": "chat.completion", "created": created, "model": s.name,
                "system_fingerprint": None,
                "choices": [{"index": c, "message": {"role": "assistant", "content": texts[c]},
                             "logprobs": {"content": lps[c]} if body.logprobs else None,
                             "finish_reason": finish[c]} for c in range(body.n)],
                "usage": usage_of(prompt, n_out)}

    @app.post("/v1/tokenize", responses=ERRORS)
    async def tokenize(body: TokenizeRequest) -> dict:
        tok = get_model(body.model).tokenizer
        ids = tok.encode(body.text, allowed_special="all" if body.allow_special else ())
        return {"model": body.model, "count": len(ids),
                "tokens": [{"id": i, "text": piece(tok, i), "bytes": list(tok.decode_bytes([i]))} for i in ids]}

    # ---------------------------------------------------------------- arena
    async def answer(s: Served, prompt: str, max_tokens: int, temperature: float) -> str:
        tok = s.tokenizer
        ids = tok.render_for_completion({"messages": [{"role": "user", "content": prompt}]})
        m = _budget(s, len(ids), min(max_tokens, max(1, s.seq_len - len(ids))), None, "prompt")
        req = GenRequest(prompt=ids, max_tokens=m, emit=lambda *a: None, temperature=temperature,
                         stop_tokens={tok.special("<|assistant_end|>"), tok.bos_id, tok.special("<|user_start|>")})
        text = ""
        async for ev in run(s, req, None):
            if ev[0] == "token":
                text += ev[2]
        return text

    def need_votes() -> VoteStore:
        if votes is None:
            raise ApiError(400, "The arena needs a run directory (serve --run DIR) to store votes.", None, "no_run_dir")
        return votes

    @app.post("/v1/arena/battle", responses=ERRORS)
    async def arena_battle(body: BattleRequest) -> dict:
        need_votes()
        names = list(served)
        a, b = random.sample(names, 2) if len(names) >= 2 else (names[0], names[0])
        ta, tb = await asyncio.gather(answer(served[a], body.prompt, body.max_tokens or 256, body.temperature or 0.0),
                                      answer(served[b], body.prompt, body.max_tokens or 256, body.temperature or 0.0))
        bid = uuid.uuid4().hex
        with battles_lock:
            battles[bid] = {"model_a": a, "model_b": b, "prompt": body.prompt}
            while len(battles) > 1000:
                battles.popitem(last=False)
        return {"battle_id": bid, "answer_a": ta, "answer_b": tb}

    @app.post("/v1/arena/vote", responses=ERRORS)
    async def arena_vote(body: VoteRequest) -> dict:
        store = need_votes()
        with battles_lock:
            battle = battles.pop(body.battle_id, None)
        if battle is None:
            raise ApiError(404, "Unknown or already voted battle_id.", "battle_id", "battle_not_found")
        assert body.winner in OUTCOMES
        await asyncio.to_thread(store.add, battle["model_a"], battle["model_b"], body.winner, battle["prompt"])
        return {"model_a": battle["model_a"], "model_b": battle["model_b"], "winner": body.winner}

    @app.get("/v1/arena/leaderboard", responses=ERRORS)
    async def arena_leaderboard() -> dict:
        all_votes = votes.snapshot() if votes is not None else []
        return {"leaderboard": leaderboard(all_votes, list(served)), "votes": len(all_votes)}

    # ---------------------------------------------------------------- UI and health
    @app.get("/health", include_in_schema=False)
    async def health() -> dict:
        return {"status": "ok", "models": {n: s.batcher.stats for n, s in served.items()}}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

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
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CfError(f"--model {spec!r}: expected NAME=PATH (a checkpoint step or stage folder)")
        if latest_checkpoint(path) is None:
            raise CfError(f"--model {name}={path}: no complete checkpoint there")
        out[name] = Path(path)
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
    args = parser.parse_args(argv)
    cfg = config_from_args(ServeConfig, args)
    key = cfg.api_key or os.environ.get("CHATFORGE_API_KEY", "")
    print_config({**cfg.__dict__, "api_key": "***" if key else ""}, "serve config")
    paths = find_models(cfg.run or None, args.model)
    device = get_device(cfg.device)
    models = {}
    for name, path in paths.items():
        ck = load_checkpoint(path, device=device)
        models[name] = (ck.model, ck.tokenizer)
        print0(f"serve: model '{name}' <- {ck.path} ({ck.model.num_params() / 1e6:.1f}M params)")
    votes_dir = run_dir(cfg.run) if cfg.run else default_run_dir(paths)
    print0(f"serve: arena votes -> {votes_dir / 'arena' / 'votes.json'}")
    app = create_app(models, votes_dir, key or None, max_batch=cfg.max_batch)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print0(f"serve: WARNING: listening on {cfg.host} without an API key")
    print0(f"serve: http://{cfg.host}:{cfg.port}/  (API at /v1, spec at /openapi.json)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
