"""Continuous batching for the server: one worker thread per model decodes every active request together.

Why: a 1-token decode step of a small model is dominated by reading the weights, so 16 sequences
decoded in one (16, 1) forward cost little more than one. Requests must therefore not queue behind
each other; they join and leave a running batch ("continuous batching", Yu et al. 2022, Orca, OSDI).

Design (picked for being simple and exactly correct, not for peak speed):

* A slot KV cache: per layer k/v buffers of shape (S, n_kv_head, seq_len, head_dim), S = max rows.
  The active rows are kept packed at 0..B-1 so a decode step reads plain views ``k[:B, :, :L]``.
  When a row finishes, the last active row is moved into its place (one row copy).
* Admission (prefill): a new request's prompt goes through the model's own ``GPT.forward`` with a
  batch-1 ``KVCache``; its keys/values are copied into the request's rows (n rows for n choices).
  Prompts of different lengths are never padded together, so no position/padding masks leak.
* Decode step: tokens (B, 1) at per-row positions pos_b. This is the one place that does not call
  ``GPT.forward`` (whose cache has one position for the whole batch): ``decode_step`` re-runs the
  model's own submodules, differing only in per-row RoPE angles / learned positions and a per-row
  key mask ``key_index <= pos_b``. Its slow twin is ``GPT.forward`` on each sequence alone; the
  parity test (tests/test_server.py) checks greedy outputs are identical.
* Sampling is per row with the request's own torch.Generator and parameters (``engine.sample_next``),
  so a seeded request gives the same tokens whether it is batched with others or alone.
* Text: each row has a ``StreamDecoder`` (UTF-8 safe) and holds back the tail that could still be the
  start of a stop string; on a stop string the row finishes and the text is cut before it.
* Penalties (OpenAI's definition): ``logit[j] -= count[j] * frequency + (count[j] > 0) * presence``
  over the tokens this choice generated, then ``+ logit_bias[j]`` (``penalize``).
* Chat requests (``structured=True``) read the assistant's tool syntax the way ``Engine`` does:
  ``<|tool_start|>name\ninput<|tool_end|>`` becomes a ("tool_call", ...) event and, when the batcher
  has a ``tools`` hook, the call runs on a small thread pool while its row is *parked*: the row keeps
  re-feeding its last token at the same position (rewriting identical keys/values) without sampling,
  so the other rows never wait for a tool. The result is then forced in, one token per step, as
  ``<|output_start|>output<|output_end|>`` (a ("tool_output", ...) event). No control token is ever
  decoded into text.

Events go to the request's ``emit`` callback (called on the worker thread): ("token", choice, text,
info) for sampled text, ("tool_call", choice, name, input), ("tool_output", choice, text), and
("done", choice, finish_reason, n_tokens) per choice; ("error", msg) on failure.
"""
from __future__ import annotations

import queue
import secrets
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from chatforge.common import autocast_ctx
from chatforge.model.engine import decode_step, sample_next   # decode_step is shared with Engine.generate_many
from chatforge.model.gpt import GPT, KVCache
from chatforge.tokenizer.tokenizer import StreamDecoder


@dataclass
class GenRequest:
    """One API request: a prompt and per-request sampling parameters (n choices)."""
    prompt: list[int]
    max_tokens: int
    emit: Callable[..., None]
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_tokens: set[int] = field(default_factory=set)
    logprobs: int | None = None          # None: no logprobs; k >= 0: chosen token's logprob + top k
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    structured: bool = False             # chat: tool calls/outputs become events, control tokens never text
    cancelled: threading.Event = field(default_factory=threading.Event)
    t_submit: float = field(default_factory=time.perf_counter)


@dataclass
class _Row:
    req: GenRequest
    choice: int
    gen: torch.Generator
    decoder: Any
    pos: int                 # positions filled in the cache for this row
    last: int                # last token (input of the next decode step)
    n_out: int = 0
    text: str = ""           # decoded text so far (before stop-cut)
    sent: int = 0            # characters of text already emitted
    mode: str = "text"       # structured rows: "text", inside a tool "call", or inside its "output"
    held: list[int] = field(default_factory=list)      # tokens of the call/output being read
    forced: deque = field(default_factory=deque)       # tool output tokens to feed instead of sampling
    tool: Future | None = None                         # the running tool call (the row is parked)
    counts: torch.Tensor | None = None                 # (V,) generated-token counts (penalties only)

    def parked(self) -> bool:
        return self.tool is not None and not self.tool.done()


def penalize(logits: torch.Tensor, counts: torch.Tensor | None, presence: float, frequency: float,
             bias: dict[int, float]) -> torch.Tensor:
    """OpenAI's presence/frequency penalties and logit_bias on one row of logits (V,) -> (V,)."""
    out = logits.float().clone()
    if counts is not None:
        out -= counts * frequency + (counts > 0).float() * presence
    for t, b in bias.items():
        out[t] += b
    return out


class Batcher:
    """Owns one model; a daemon thread admits requests and runs batched decode steps."""
    def __init__(self, model: GPT, tokenizer: Any, max_batch: int = 16, max_queue: int = 1024,
                 tools: Callable[[str, str], str] | None = None):
        self.sample_next, self.StreamDecoder = sample_next, StreamDecoder
        self.model, self.tok = model, tokenizer
        self.tools = tools
        self.tool_pool = ThreadPoolExecutor(2, thread_name_prefix="chatforge-tool") if tools else None
        self.specials = {i: name for name, i in getattr(tokenizer, "specials", {}).items()}
        self.cfg = model.config
        self.max_batch, self.max_queue = max_batch, max_queue
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.autocast = autocast_ctx(str(self.device))   # bf16 on CUDA, a no-op (fp32) on CPU
        S, c = max_batch, self.cfg
        shape = (S, c.n_kv_head, c.seq_len, c.head_dim)
        self.k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(c.n_layer)]
        self.v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(c.n_layer)]
        self.rows: list[_Row] = []
        self.pending: "queue.Queue[GenRequest]" = queue.Queue()
        self._waiting: list[GenRequest] = []
        self.stats = {"steps": 0, "tokens": 0, "max_active": 0}
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True, name="chatforge-batcher")
        self.thread.start()

    # ------------------------------------------------------------------ public
    def submit(self, req: GenRequest) -> bool:
        """Queue a request; False when the queue is full (the server answers 503)."""
        if self.pending.qsize() + len(self._waiting) >= self.max_queue:
            return False
        self.pending.put(req)
        return True

    def close(self) -> None:
        self._stop = True
        self.pending.put(None)  # type: ignore[arg-type]  # wake the thread
        self.thread.join(timeout=5)
        if self.tool_pool is not None:
            self.tool_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ worker loop
    def _loop(self) -> None:
        while not self._stop:
            try:
                self._drain(block=not self.rows and not self._waiting)
                self._admit()
                if self.rows:
                    self._step()
            except Exception as e:  # a bug must not kill the server: fail the active requests, keep going
                for r in {id(x.req): x.req for x in self.rows}.values():
                    r.emit("error", f"generation failed: {type(e).__name__}: {e}")
                self.rows = []

    def _drain(self, block: bool) -> None:
        try:
            item = self.pending.get(timeout=0.5) if block else self.pending.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                item = self.pending.get_nowait()
        except queue.Empty:
            pass

    @torch.no_grad()
    def _admit(self) -> None:
        """Prefill waiting requests (FIFO) while they fit in the free rows."""
        while self._waiting and len(self.rows) + min(self._waiting[0].n, self.max_batch) <= self.max_batch:
            req = self._waiting.pop(0)
            if req.cancelled.is_set():
                continue
            if req.n > self.max_batch:   # could never fit (the server rejects these with a 400 first)
                req.emit("error", f"n={req.n} exceeds the batch size {self.max_batch}")
                continue
            try:
                with self.autocast:
                    self._prefill(req)
            except Exception as e:
                req.emit("error", f"generation failed: {type(e).__name__}: {e}")

    def _prefill(self, req: GenRequest) -> None:
        """Run the prompt through GPT.forward (batch 1) and copy its cache into n fresh rows."""
        T = len(req.prompt)
        cache = KVCache.for_model(self.model, 1, max_len=T)
        logits = self.model(torch.tensor([req.prompt], device=self.device), kv_cache=cache)[:, -1]  # (1, V)
        base = secrets.randbits(62) if req.seed is None else req.seed
        new_rows = []
        for i in range(req.n):
            r = len(self.rows)
            for layer in range(self.cfg.n_layer):
                self.k[layer][r, :, :T] = cache.k[layer][0]
                self.v[layer][r, :, :T] = cache.v[layer][0]
            gen = torch.Generator(device=self.device)
            gen.manual_seed((base * 1_000_003 + i) % (2**63 - 1))
            row = _Row(req, i, gen, self.StreamDecoder(self.tok), pos=T, last=-1)
            self.rows.append(row)
            new_rows.append(row)
        self._sample_and_emit(new_rows, logits.expand(len(new_rows), -1))

    @torch.no_grad()
    def _step(self) -> None:
        rows = self.rows
        parked = [r.parked() for r in rows]
        if all(parked):            # every row waits for a tool: nothing to compute yet
            time.sleep(0.005)
            return
        tokens = torch.tensor([r.last for r in rows], device=self.device)
        pos = torch.tensor([r.pos for r in rows], device=self.device)
        with self.autocast:
            logits = decode_step(self.model, tokens, pos, self.k, self.v)   # (B, V)
        live = []
        for r, p in zip(rows, parked):
            if not p:      # a parked row rewrote the same key/value at the same position: no progress
                r.pos += 1
                live.append(r)
        self.stats["steps"] += 1
        self.stats["max_active"] = max(self.stats["max_active"], len(rows))
        if len(live) < len(rows):
            logits = logits[[i for i, p in enumerate(parked) if not p]]
        self._sample_and_emit(live, logits)

    def _sample_and_emit(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Sample one token per row (its own params/generator), emit text, retire finished rows."""
        if logits.shape[-1] > self.tok.n_vocab:   # padded vocab rows are never valid tokens
            logits = logits.clone()
            logits[:, self.tok.n_vocab:] = float("-inf")
        want_lp = any(r.req.logprobs is not None for r in rows)
        logp = F.log_softmax(logits.float(), dim=-1) if want_lp else None
        done: list[tuple[_Row, str]] = []
        for i, r in enumerate(rows):
            req = r.req
            if req.cancelled.is_set():
                done.append((r, ""))
                continue
            forced = bool(r.forced)
            tok, info = (r.forced.popleft(), None) if forced else self._sample(r, logits[i], logp, i)
            r.last = tok
            r.n_out += 1
            self.stats["tokens"] += 1
            if tok in req.stop_tokens and not forced:   # the stop token itself is not part of the answer
                r.text += self._end_text(r)
                self._flush(r, None, final=True)
                done.append((r, "stop"))
                continue
            if req.structured and (tok in self.specials or r.mode != "text"):
                self._structure(r, tok)
            else:
                r.text += r.decoder.push(tok)
            finish = None
            if req.stop:
                hits = [r.text.find(s, max(0, r.sent - len(s))) for s in req.stop]
                hits = [h for h in hits if h >= 0]
                if hits:
                    r.text = r.text[:min(hits)]
                    finish = "stop"
            if finish is None and (r.n_out >= req.max_tokens or r.pos >= self.cfg.seq_len):
                finish = "length"
                r.text += self._end_text(r)
            self._flush(r, info, final=finish is not None)
            if finish:
                done.append((r, finish))
        for r, reason in done:
            if reason:
                r.req.emit("done", r.choice, reason, r.n_out)
            self._retire(r)

    def _sample(self, r: _Row, logits: torch.Tensor, logp: torch.Tensor | None, i: int) -> tuple[int, dict | None]:
        """One sampled token of row r from its logits (V,), with penalties and logprob info."""
        req = r.req
        if req.presence_penalty or req.frequency_penalty or req.logit_bias:
            logits = penalize(logits, r.counts, req.presence_penalty, req.frequency_penalty, req.logit_bias)
        tok = int(self.sample_next(logits[None], req.temperature, req.top_k, req.top_p, r.gen)[0])
        if req.presence_penalty or req.frequency_penalty:
            if r.counts is None:
                r.counts = torch.zeros(logits.shape[-1], device=logits.device)
            r.counts[tok] += 1
        info = None
        if req.logprobs is not None:
            info = {"id": tok, "logprob": float(logp[i, tok])}
            if req.logprobs > 0:
                top = torch.topk(logp[i], req.logprobs)
                info["top"] = [(int(t), float(v)) for v, t in zip(top.values, top.indices)]
        return tok, info

    def _structure(self, r: _Row, tok: int) -> None:
        """The tool syntax of a chat row (the state machine of ``Engine._watch_tools``, plus events)."""
        name = self.specials.get(tok)
        if name in ("<|tool_start|>", "<|output_start|>"):
            self._flush(r, None, final=True)          # a stop string cannot span a tool call
            r.mode, r.held = ("call" if name == "<|tool_start|>" else "output"), []
        elif name == "<|tool_end|>" and r.mode == "call":
            tool, _, inp = self.tok.decode(r.held).partition("\n")
            r.req.emit("tool_call", r.choice, tool.strip(), inp)
            r.mode = "text"
            if self.tool_pool is not None:
                r.tool = self.tool_pool.submit(self._run_tool, r, tool.strip(), inp)
        elif name == "<|output_end|>" and r.mode == "output":
            r.req.emit("tool_output", r.choice, self.tok.decode(r.held))
            r.mode = "text"
        elif name is None:
            r.held.append(tok)
        # any other control token is dropped: it never becomes text

    def _run_tool(self, r: _Row, name: str, inp: str) -> None:
        """On the tool pool: run the call, queue its output tokens (the row un-parks when this returns)."""
        try:
            out = str(self.tools(name, inp))
        except Exception as e:   # a failing tool is reported to the model, not raised
            out = f"error: {type(e).__name__}: {e}"
        sp = self.tok.special
        r.forced.extend([sp("<|output_start|>"), *self.tok.encode(out), sp("<|output_end|>")])

    def _end_text(self, r: _Row) -> str:
        """Bytes the UTF-8 decoder still holds (an incomplete character becomes U+FFFD)."""
        return r.decoder.flush() if hasattr(r.decoder, "flush") else ""

    def _flush(self, r: _Row, info: dict | None, final: bool) -> None:
        """Emit the new text of a row, holding back a tail that may begin a stop string."""
        hold = 0 if final else max((len(s) - 1 for s in r.req.stop), default=0)
        upto = max(r.sent, len(r.text) - hold)
        delta = r.text[r.sent:upto]
        r.sent = upto
        r.req.emit("token", r.choice, delta, info)

    def _retire(self, r: _Row) -> None:
        """Remove row r, moving the last active row into its slot so rows stay packed at 0..B-1."""
        i = self.rows.index(r)
        last = len(self.rows) - 1
        if i != last:
            moved = self.rows[last]
            L = moved.pos
            for layer in range(self.cfg.n_layer):
                self.k[layer][i, :, :L] = self.k[layer][last, :, :L]
                self.v[layer][i, :, :L] = self.v[layer][last, :, :L]
            self.rows[i] = moved
        self.rows.pop()


def sequential_generate(model: GPT, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Slow twin for the parity test: greedy decoding of one sequence with GPT.forward's own cache."""
    cache = KVCache.for_model(model, 1)
    out: list[int] = []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), kv_cache=cache)[:, -1]
        for _ in range(max_new_tokens):
            tok = int(logits.argmax(-1))
            out.append(tok)
            if cache.pos >= model.config.seq_len:
                break
            logits = model(torch.tensor([[tok]]), kv_cache=cache)[:, -1]
    return out
