"""The served models, the state the routes share, and the path of a request to a batcher and back.

``Served`` is one model with its tokenizer and its ``batcher.Batcher`` thread; ``AppState`` holds them,
the arena's votes and open battles and the API key (``create_app`` stores it on ``app.state.cf``).
``submit`` hands a ``GenRequest`` to the batcher and turns the events the batcher thread emits into an
async iterator on the server's event loop (leaving it early cancels the request); ``event_stream``
sends those events as server-sent events (SSE), ending with ``data: [DONE]``.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from chatforge.eval.arena import VoteStore
from chatforge.serve.batcher import Batcher, GenRequest
from chatforge.serve.schemas import ApiError, parse_logit_bias, parse_stop, SamplingParams


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


def budget(s: Served, n_prompt: int, max_tokens: int | None, default: int | None, param: str) -> int:
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
                      stop=parse_stop(body.stop), stop_tokens=stop_tokens, logprobs=logprobs,
                      presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                      logit_bias=parse_logit_bias(body.logit_bias, s.tokenizer.n_vocab), structured=structured)


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
