"""The sampling engine: prefill once, decode with a KV cache, N samples of one prompt in one batch.

How generation works here::

    prompt (T0 ids) --prefill, B=1--> KVCache (pos = T0) + next-token logits (1, V)
    cache.expand(N): N rows share the prompt's keys/values; logits repeated N times
    each step:  sample_next(logits (N, V)) -> N tokens
                per sample: a queued forced token (tool output) replaces the sampled one (mask 0);
                            a stop token ends that sample (it is kept, mask 1); the tool state machine
                            watches <|tool_start|> name\\ninput <|tool_end|> and, on the end token, calls
                            tools(name, input) and queues <|output_start|> output <|output_end|>
                yield (tokens, masks);  feed the N tokens (N, 1) -> next logits
    stops when every sample is done, after max_new_tokens, or when the context (seq_len) is full.

Finished samples yield token -1 with mask 0 until the batch ends (generate_batch drops those).
``naive_generate`` is the slow twin: no cache, the full forward every step, one sample.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from chatforge.common import autocast_ctx, CfError, get_device, make_parser, read_jsonl, seed_all
from chatforge.model.batching import pad_right
from chatforge.model.checkpoint import load_checkpoint
from chatforge.model.gpt import apply_rope, GPT, KVCache
from chatforge.tokenizer.tokenizer import StreamDecoder

# generate_many: rows in flight, and prompts per prefill forward (length-sorted, so one chunk pads
# little); both chosen by measurement (bench/generate.py, dev/LOG.md)
DEFAULT_MAX_BATCH = 32        # rows in flight in generate_many at least ...
MAX_BATCH_CAP = 256           # ... and at most, as many as fit in
CACHE_BUDGET_BYTES = 256 << 20   # this much KV cache (d4 at 150 positions: 256 rows; the speedrun's
#                               best-of-N decodes 2.1x faster at 256 rows than at 32; dev/LOG.md)
PREFILL_CHUNK = 8


# ----------------------------------------------------------------------------- sampling (pure)

def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,) long.

    temperature 0 = greedy (argmax). top_k keeps the k most likely tokens; top_p keeps the smallest
    set of most likely tokens whose probability mass reaches p (nucleus sampling, Holtzman et al. 2019,
    arXiv:1904.09751). Both filters apply after temperature; all randomness comes from ``generator``.
    """
    if temperature < 0:
        raise CfError(f"temperature: expected >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise CfError(f"top_p: expected a value in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filtered_probs(logits, temperature, top_k, top_p)                  # (B, V)
    return sample_categorical(probs, torch.rand(probs.size(0), 1, generator=generator, device=probs.device))


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """Next-token probabilities (B, V) after temperature (> 0), top-k and top-p (see sample_next)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]                  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)     # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs                            # mass of strictly better tokens
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))  # the top token always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.softmax(logits, dim=-1)


def sample_categorical(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of probs (B, V), given one uniform u in [0, 1) per row (B, 1): inverse-CDF
    sampling, the first token whose cumulative mass exceeds u x (row total). Exact, and on CPU ~30x
    faster than ``torch.multinomial(probs, 1)`` at V = 4096 (2.1 ms vs 0.07 ms for 16 rows; multinomial
    was 40% of the speedrun's best-of-N decode time, dev/LOG.md). The target is kept strictly below the
    total, so the token found always has mass: cdf[i-1] <= target < cdf[i] means probs[i] > 0."""
    cdf = probs.cumsum(dim=-1)                                                  # (B, V), non-decreasing
    total = cdf[:, -1:]                                                         # (B, 1)
    target = torch.minimum(u.to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)              # (B,)


# ----------------------------------------------------------------------------- per-sample state

@dataclass
class SampleState:
    """What one sample of the batch is doing: finished?, inside a tool call?, tokens to force next."""
    done: bool = False
    in_call: bool = False
    call: list[int] = field(default_factory=list)       # tokens between <|tool_start|> and <|tool_end|>
    forced: deque = field(default_factory=deque)        # tokens to inject before sampling again


def _special(tokenizer: Any, name: str) -> int | None:
    try:
        return tokenizer.special(name) if tokenizer is not None else None
    except Exception:
        return None


def check_prompt(prompt: list[int], vocab_size: int, seq_len: int, max_new_tokens: int,
                 truncate: str | None) -> list[int]:
    """Validate a prompt; with truncate="left" keep its last seq_len - min(max_new_tokens, seq_len // 2)
    tokens when it is longer, so that room remains to generate."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise CfError("prompt: expected at least one token")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise CfError(f"prompt: token id {bad[0]} outside the vocabulary 0..{vocab_size - 1}")
    if truncate not in (None, "left"):
        raise CfError(f"truncate: expected None or 'left', got {truncate!r}")
    if max_new_tokens < 1:
        raise CfError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
    if truncate == "left":
        keep = seq_len - min(max_new_tokens, seq_len // 2)
        return prompt[-keep:]
    if len(prompt) > seq_len:
        raise CfError(f"prompt: {len(prompt)} tokens exceed the model context of {seq_len} "
                      f"(shorten it or pass truncate='left')")
    return prompt


# ----------------------------------------------------------------------------- the engine

class Engine:
    """Batched sampling with a KV cache, stop tokens, streaming and the tool hook (see module doc)."""
    def __init__(self, model: GPT, tokenizer: Any = None, tools: Callable[[str, str], str] | None = None):
        self.model, self.tokenizer, self.tools = model, tokenizer, tools
        p = next(model.parameters())
        self.device = p.device
        # on CUDA the forward runs under bf16 autocast: keep the cache in bf16 too
        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.cache_dtype = torch.bfloat16 if bf16 else p.dtype
        self.ids = {n: _special(tokenizer, f"<|{n}|>") for n in
                    ("bos", "assistant_end", "tool_start", "tool_end", "output_start", "output_end")}

    def default_stop_tokens(self) -> list[int]:
        """<|assistant_end|> and <|bos|> (the document separator) when the tokenizer has them."""
        return [t for t in (self.ids["assistant_end"], self.ids["bos"]) if t is not None]

    def _forward(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits of the last position only (B, V): a long prefill never materializes (T, V) logits."""
        m = self.model
        with torch.inference_mode(), autocast_ctx(str(self.device)):
            if hasattr(m, "forward_hidden"):
                return m.lm_head(m.forward_hidden(idx, kv_cache=cache)[:, -1, :]).float()
            return m(idx, kv_cache=cache)[:, -1, :].float()

    def generate(self, prompt: list[int], num_samples: int = 1, max_new_tokens: int = 256,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0, stop_tokens: list[int] | None = None,
                 truncate: str | None = None, kv_cache: KVCache | None = None) -> Iterator[tuple[list[int], list[int]]]:
        """Yield, per step, (token of each sample, mask of each sample): mask 1 = sampled, 0 = forced
        (tool output) or finished (token -1). stop_tokens None = default_stop_tokens(); [] = none.

        ``kv_cache`` (multi-turn chat): a batch-1 cache already holding the keys/values of
        ``prompt[:kv_cache.pos]``; only the rest of the prompt is prefilled and the cache is advanced in
        place (it then holds every token fed to the model). Needs num_samples == 1."""
        c = self.model.config
        n_given = len(prompt)
        prompt = check_prompt(prompt, c.vocab_size, c.seq_len, max_new_tokens, truncate)
        if kv_cache is not None and len(prompt) != n_given:
            kv_cache.pos = 0          # left-truncation shifted every position: the cached keys are stale
        if num_samples < 1:
            raise CfError(f"num_samples: expected >= 1, got {num_samples}")
        stops = set(self.default_stop_tokens() if stop_tokens is None else stop_tokens)
        if kv_cache is not None and (num_samples != 1 or kv_cache.batch_size != 1):
            raise CfError("kv_cache: continuing a cache needs num_samples == 1 and a batch-1 cache")
        return self._generate(prompt, num_samples, max_new_tokens, temperature, top_k, top_p, seed, stops, kv_cache)

    def _generate(self, prompt, num_samples, max_new_tokens, temperature, top_k, top_p, seed, stops, kv_cache=None):
        seq_len = self.model.config.seq_len
        gen = torch.Generator(device=self.device).manual_seed(seed)
        cache = kv_cache if kv_cache is not None else KVCache.for_model(self.model, 1, dtype=self.cache_dtype)
        cache.pos = min(cache.pos, len(prompt) - 1)   # at least one prompt token to feed (its logits)
        logits = self._forward(torch.tensor([prompt[cache.pos:]], device=self.device), cache)   # (1, V)
        if num_samples > 1:
            cache = cache.expand(num_samples)
            logits = logits.expand(num_samples, -1)
        states = [SampleState() for _ in range(num_samples)]
        for step in range(max_new_tokens):
            sampled = sample_next(logits, temperature, top_k, top_p, gen).tolist()
            tokens, masks = [], []
            for st, tok in zip(states, sampled):
                tok, mask = self._take(st, tok, stops) if not st.done else (-1, 0)
                tokens.append(tok)
                masks.append(mask)
            yield tokens, masks
            if all(st.done for st in states) or step == max_new_tokens - 1 or cache.pos >= seq_len:
                return
            feed = [t if t >= 0 else 0 for t in tokens]            # finished rows: any valid id
            logits = self._forward(torch.tensor(feed, device=self.device).view(-1, 1), cache)

    def _take(self, st: SampleState, tok: int, stops: set[int]) -> tuple[int, int]:
        """One step of one live sample: (token, mask). A queued forced token (tool output) replaces the
        sampled one (mask 0); a sampled stop token finishes the sample; the tool watcher sees either."""
        if st.forced:
            tok, mask = st.forced.popleft(), 0
        else:
            mask = 1
            if tok in stops:
                st.done = True
        self._watch_tools(st, tok)
        return tok, mask

    def _watch_tools(self, st: SampleState, tok: int) -> None:
        """The tool state machine of one sample: collect the call, run it, queue the output tokens."""
        if self.tools is None or self.ids["tool_start"] is None:
            return
        if tok == self.ids["tool_start"]:
            st.in_call, st.call = True, []
        elif tok == self.ids["tool_end"] and st.in_call:
            st.in_call = False
            name, _, inp = self.tokenizer.decode(st.call).partition("\n")
            try:
                out = str(self.tools(name.strip(), inp))
            except Exception as e:   # a failing tool is reported to the model, not raised
                out = f"error: {type(e).__name__}: {e}"
            st.forced.extend([self.ids["output_start"], *self.tokenizer.encode(out), self.ids["output_end"]])
        elif st.in_call:
            st.call.append(tok)

    def generate_batch(self, prompt: list[int], num_samples: int = 1, **kw: Any) -> tuple[list[list[int]], list[list[int]]]:
        """All samples at once: (completions, masks), the new tokens only (not the prompt); a completion
        that stopped ends with its stop token."""
        seqs: list[list[int]] = [[] for _ in range(num_samples)]
        masks: list[list[int]] = [[] for _ in range(num_samples)]
        for tokens, ms in self.generate(prompt, num_samples=num_samples, **kw):
            for i, (t, m) in enumerate(zip(tokens, ms)):
                if t >= 0:
                    seqs[i].append(t)
                    masks[i].append(m)
        return seqs, masks

    # ------------------------------------------------------------------------- many prompts at once

    def generate_many(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                      top_k: int | None = None, seed: int = 0, num_samples: int = 1,
                      stop_tokens: list[int] | None = None, **kw: Any) -> list[list[int]]:
        """New tokens of every prompt and sample, prompt-major: [p0 s0, p0 s1, ..., p1 s0, ...].
        Prompt i behaves exactly as ``generate_batch(prompts[i], num_samples, seed=seed + i, ...)``
        (same tokens for greedy; for sampling the same random stream). See ``generate_many_masked``."""
        return self.generate_many_masked(prompts, max_new_tokens, temperature, top_k, seed, num_samples,
                                         stop_tokens, **kw)[0]

    def auto_max_batch(self, max_len: int) -> int:
        """Rows in flight when the caller does not say: as many as CACHE_BUDGET_BYTES of KV cache holds
        at ``max_len`` positions, between DEFAULT_MAX_BATCH and MAX_BATCH_CAP."""
        c = self.model.config
        per_row = 2 * c.n_layer * c.n_kv_head * c.head_dim * min(max_len, c.seq_len) * self.cache_dtype.itemsize
        return max(DEFAULT_MAX_BATCH, min(MAX_BATCH_CAP, CACHE_BUDGET_BYTES // max(1, per_row)))

    def generate_many_masked(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                             top_k: int | None = None, seed: int = 0, num_samples: int = 1,
                             stop_tokens: list[int] | None = None, top_p: float | None = None,
                             truncate: str | None = None, max_batch: int | None = None
                             ) -> tuple[list[list[int]], list[list[int]]]:
        """(completions, masks) of many different prompts decoded together (continuous batching).

        Up to ``max_batch`` rows (samples) are in flight; a finished row's slot is refilled from the
        queue of prompts (shortest first, prefilled PREFILL_CHUNK at a time, so prompts padded together are
        of similar length). Each
        prompt has its own generator (seed + i) and samples all of its rows in one ``sample_next`` call,
        finished rows included (placeholder logits: a row's draw does not depend on the other rows'
        values), which reproduces ``generate``'s random stream. Prefill: the admitted prompts right-
        padded in one ``GPT.forward_hidden`` (causal attention, so real tokens never see the padding);
        decode: ``decode_step`` with per-row positions and key masks."""
        c = self.model.config
        prompts = [check_prompt(p, c.vocab_size, c.seq_len, max_new_tokens, truncate) for p in prompts]
        if num_samples < 1:
            raise CfError(f"num_samples: expected >= 1, got {num_samples}")
        if temperature < 0:
            raise CfError(f"temperature: expected >= 0, got {temperature}")
        S = max(max_batch or self.auto_max_batch(max(map(len, prompts), default=0) + max_new_tokens), num_samples)
        stops = set(self.default_stop_tokens() if stop_tokens is None else stop_tokens)
        seqs: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]
        masks: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]
        if not prompts:
            return seqs, masks
        with torch.inference_mode(), autocast_ctx(str(self.device)):
            self._many(prompts, max_new_tokens, (temperature, top_k, top_p), seed, num_samples, stops, S, seqs, masks)
        return seqs, masks

    def _many(self, prompts: list[list[int]], max_new_tokens: int, sampler: tuple, seed: int, num_samples: int,
              stops: set[int], S: int, seqs: list[list[int]], masks: list[list[int]]) -> None:
        """generate_many's loop: admit (prefill) while slots are free, sample, retire, decode."""
        c = self.model.config
        max_len = min(c.seq_len, max(map(len, prompts)) + max_new_tokens)
        shape = (S, c.n_kv_head, max_len, c.head_dim)
        k = [torch.zeros(shape, device=self.device, dtype=self.cache_dtype) for _ in range(c.n_layer)]
        v = [torch.zeros(shape, device=self.device, dtype=self.cache_dtype) for _ in range(c.n_layer)]
        waiting = deque(sorted(range(len(prompts)), key=lambda i: len(prompts[i])))
        rows: list[_Row] = []                                # active rows; row j lives in cache slot j
        logits = torch.empty(0, c.vocab_size, device=self.device)
        while True:
            n_new = min(len(waiting), (S - len(rows)) // num_samples)
            batch = [waiting.popleft() for _ in range(n_new)]
            for j in range(0, n_new, PREFILL_CHUNK):
                new_logits = self._prefill_rows(batch[j:j + PREFILL_CHUNK], prompts, num_samples, seed, rows, k, v)
                logits = torch.cat([logits, new_logits])
            if not rows:
                return
            self._sample_rows(rows, logits, sampler, stops, max_new_tokens, seqs, masks)
            self._retire(rows, k, v)
            if rows:
                logits = decode_step(self.model, torch.tensor([r.last for r in rows], device=self.device),
                                     torch.tensor([r.pos for r in rows], device=self.device), k, v)
                for r in rows:
                    r.pos += 1
            else:
                logits = logits[:0]

    def _prefill_rows(self, batch: list[int], prompts: list[list[int]], num_samples: int, seed: int,
                      rows: list["_Row"], k: list[torch.Tensor], v: list[torch.Tensor]) -> torch.Tensor:
        """Prefill prompts[batch] right-padded in one forward, copy each prompt's keys/values into
        num_samples fresh slots after the active rows, append their _Rows; returns their logits (R, V)."""
        lens = torch.tensor([len(prompts[i]) for i in batch])
        T = int(lens.max())
        idx = pad_right([prompts[i] for i in batch], 0)                          # (b, T), pad id 0
        cache = KVCache.for_model(self.model, len(batch), max_len=T, dtype=self.cache_dtype)
        h = self.model.forward_hidden(idx.to(self.device), kv_cache=cache)        # (b, T, C)
        last = h[torch.arange(len(batch)), (lens - 1).to(self.device)]           # (b, C) at each prompt's end
        logits = self.model.lm_head(last).float().repeat_interleave(num_samples, 0)   # (b * N, V)
        src = torch.arange(len(batch), device=self.device).repeat_interleave(num_samples)
        first = len(rows)
        for layer in range(len(k)):
            k[layer][first:first + len(src), :, :T] = cache.k[layer][src]
            v[layer][first:first + len(src), :, :T] = cache.v[layer][src]
        for i in batch:
            group = _Group(torch.Generator(device=self.device).manual_seed(seed + i), num_samples)
            rows += [_Row(i * num_samples + s, group, s, pos=len(prompts[i])) for s in range(num_samples)]
        return logits

    def _sample_rows(self, rows: list["_Row"], logits: torch.Tensor, sampler: tuple, stops: set[int],
                     max_new_tokens: int, seqs: list[list[int]], masks: list[list[int]]) -> None:
        """Pick each active row's next token (logits (B, V), row j = rows[j]) and record it; marks
        finished rows (stop token, max_new_tokens or a full context) with ``r.st.done``."""
        temperature, top_k, top_p = sampler
        if temperature == 0:
            picked = logits.argmax(dim=-1).tolist()
        else:   # one set of probabilities for all rows; the uniforms come from each prompt's generator,
            # drawn for all of its samples (finished ones included), exactly as generate draws them
            probs = filtered_probs(logits, temperature, top_k, top_p)              # (B, V)
            u = torch.empty(len(rows), 1, device=logits.device)
            groups: dict[int, list[int]] = {}
            for j, r in enumerate(rows):
                groups.setdefault(id(r.group), []).append(j)
            for js in groups.values():
                g = rows[js[0]].group
                draws = torch.rand(g.size, 1, generator=g.gen, device=logits.device)   # (N, 1)
                u[js] = draws[[rows[j].sample for j in js]]
            picked = sample_categorical(probs, u).tolist()
        seq_len = self.model.config.seq_len
        for r, tok in zip(rows, picked):
            tok, mask = self._take(r.st, tok, stops)
            seqs[r.out].append(tok)
            masks[r.out].append(mask)
            r.last = tok
            if len(seqs[r.out]) >= max_new_tokens or r.pos >= seq_len:
                r.st.done = True

    @staticmethod
    def _retire(rows: list["_Row"], k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        """Drop finished rows, moving the last active row into each freed slot (rows stay packed at
        0..B-1, so a decode step reads plain views of the cache); highest slots first, so the row moved
        is always a live one."""
        for i in reversed([j for j, r in enumerate(rows) if r.st.done]):
            last = len(rows) - 1
            if i != last:
                n = rows[last].pos
                for layer in range(len(k)):
                    k[layer][i, :, :n] = k[layer][last, :, :n]
                    v[layer][i, :, :n] = v[layer][last, :, :n]
                rows[i] = rows[last]
            rows.pop()


@dataclass
class _Group:
    """The samples of one prompt in generate_many: one generator, sampled together."""
    gen: torch.Generator
    size: int


@dataclass
class _Row:
    """One sample in flight in generate_many."""
    out: int                  # index into the outputs
    group: _Group
    sample: int               # index within its prompt's samples
    pos: int                  # positions filled in the cache
    last: int = -1            # newest token (input of the next decode step)
    st: SampleState = field(default_factory=SampleState)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of one new query per row: q (B, H, 1, d), k/v (B, Hkv, L, d), mask (B, 1, 1, L) bool
    (True = may attend) -> (B, H, 1, d). Written out as two batched matmuls: with a per-row mask,
    CPU SDPA ran 2.6x slower than this at B=32 (dev/LOG.md). GQA without copying the keys: the
    H / Hkv query heads that share a kv head become G query rows of that head (as repeat_kv)."""
    B, H, _, d = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    qg = q.reshape(B, Hkv, H // Hkv, d)                                      # (B, Hkv, G, d)
    att = (qg @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))                  # (B, Hkv, G, L)
    att = att.masked_fill(~mask.view(B, 1, 1, L), float("-inf")).softmax(dim=-1)
    return (att @ v).reshape(B, H, 1, d)


def decode_step(model: GPT, tokens: torch.Tensor, pos: torch.Tensor, k_cache: list[torch.Tensor],
                v_cache: list[torch.Tensor]) -> torch.Tensor:
    """One batched decode step with a different position per row.

    tokens (B,) long: each row's newest token; pos (B,) long: its position (= tokens already cached).
    k_cache/v_cache[l]: (S >= B, n_kv_head, max_len, head_dim); rows 0..B-1 are this batch.
    Writes the new keys/values at (b, :, pos_b) and returns logits (B, V) float32.
    Mirrors GPT.forward / Block / Attention exactly except for the per-row positions and key mask
    (its slow twin is GPT.forward on each sequence alone, with its own KVCache).
    """
    B = tokens.shape[0]
    cfg = model.config
    L = int(pos.max()) + 1                                     # keys to look at: 0..max(pos)
    rows = torch.arange(B, device=tokens.device)
    x = model.wte(tokens[:, None])                             # (B, 1, C)
    rope = None
    if model.wpe is not None:
        x = x + model.wpe(pos)[:, None, :]                     # (B, 1, C)
    else:
        rope = (model.rope_cos[pos][:, None, None, :], model.rope_sin[pos][:, None, None, :])  # (B, 1, 1, d)
    mask = (torch.arange(L, device=tokens.device)[None, :] <= pos[:, None])[:, None, None, :]  # (B, 1, 1, L)
    for layer, block in enumerate(model.blocks):
        a = block.attn
        h = block.norm_1(x)
        q = a.c_q(h).view(B, 1, a.n_head, a.head_dim).transpose(1, 2)       # (B, H, 1, d)
        k = a.c_k(h).view(B, 1, a.n_kv_head, a.head_dim).transpose(1, 2)    # (B, Hkv, 1, d)
        v = a.c_v(h).view(B, 1, a.n_kv_head, a.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_cache[layer][rows, :, pos] = k[:, :, 0].to(k_cache[layer].dtype)  # scatter at per-row positions
        v_cache[layer][rows, :, pos] = v[:, :, 0].to(v_cache[layer].dtype)
        K, V = k_cache[layer][:B, :, :L], v_cache[layer][:B, :, :L]          # (B, Hkv, L, d) views
        y = decode_attention(q, K.to(q.dtype), V.to(q.dtype), mask)          # (B, H, 1, d)
        x = x + a.c_proj(y.transpose(1, 2).reshape(B, 1, cfg.n_embd))
        x = x + block.mlp(block.norm_2(x))
    x = model.norm_f(x)
    return model.lm_head(x).float()[:, 0]                      # (B, V)


def naive_generate(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
                   top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                   stop_tokens: list[int] | None = None) -> list[int]:
    """The slow, obviously-correct twin of Engine.generate_batch for one sample: no cache, the whole
    sequence through the model at every step. Returns the new tokens (a stop token ends and is kept)."""
    c = model.config
    ids = check_prompt(prompt, c.vocab_size, c.seq_len, max_new_tokens, None)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    stops = set(stop_tokens or [])
    out: list[int] = []
    for _ in range(max_new_tokens):
        with torch.inference_mode(), autocast_ctx(str(device)):
            logits = model(torch.tensor([ids], device=device))[:, -1, :].float()     # (1, V)
        tok = int(sample_next(logits, temperature, top_k, top_p, gen)[0])
        out.append(tok)
        ids.append(tok)
        if tok in stops or len(ids) > c.seq_len:
            break
    return out


# ----------------------------------------------------------------------------- CLI

def few_shot_prefix(path: str | Path) -> str:
    """In-context examples as text. ``*.jsonl``: one {"input": ..., "output": ...} per line, rendered
    "input -> output" one per line; any other file is used verbatim (a newline is added if missing)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        lines = []
        for n, ex in read_jsonl(path, what="few-shot file"):
            if not isinstance(ex.get("input"), str) or not isinstance(ex.get("output"), str):
                raise CfError(f'{path}:{n}: expected {{"input": str, "output": str}}')
            lines.append(f"{ex['input']} -> {ex['output']}\n")
        return "".join(lines)
    if not path.exists():
        raise CfError(f"{path}: few-shot file not found")
    text = path.read_text(encoding="utf-8")
    return text if text.endswith("\n") or not text else text + "\n"


def cli(argv: list[str]) -> None:
    ap = make_parser("chatforge sample", "sample completions of a prompt from a checkpoint (streams text). "
                     "--few-shot FILE prepends examples: a .jsonl of {\"input\",\"output\"} becomes lines "
                     "\"input -> output\", the prompt is appended as \"PROMPT ->\" and each sample stops at "
                     "the end of its line; any other file is prepended verbatim.")
    ap.add_argument("--ckpt", required=True, help="checkpoint step folder or stage folder (latest step)")
    ap.add_argument("--prompt", default="", help="text to continue (the document starts with <|bos|>)")
    ap.add_argument("--few-shot", default=None, help="JSONL of {input, output} examples, or a plain text prefix")
    ap.add_argument("--chat", action="store_true", help="render the prompt as a user turn (SFT/RL checkpoints)")
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=50, help="0 = off")
    ap.add_argument("--top-p", type=float, default=None, help="nucleus mass, e.g. 0.9")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    seed_all(args.seed)
    ck = load_checkpoint(args.ckpt, device=get_device(args.device))
    tok = ck.tokenizer
    text, one_line = args.prompt, False
    if args.few_shot:
        text, one_line = few_shot_prefix(args.few_shot) + f"{args.prompt} ->", True
    if args.chat:
        ids = tok.render_for_completion({"messages": [{"role": "user", "content": text}]})
        stops = None
    else:
        ids = [tok.bos_id] + tok.encode(text)
        stops = [tok.bos_id]
    engine = Engine(ck.model, tok)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
              top_p=args.top_p, seed=args.seed, stop_tokens=stops, truncate="left")
    if args.num_samples == 1:
        print(text, end="", flush=True)
        dec = StreamDecoder(tok)
        for tokens, _ in engine.generate(ids, **kw):
            t = tokens[0]
            if t < 0 or (stops and t in stops) or (stops is None and t in engine.default_stop_tokens()):
                break
            piece = dec.push(t)
            if one_line and "\n" in piece:
                print(piece.split("\n")[0], end="")
                break
            print(piece, end="", flush=True)
        else:
            print(dec.flush(), end="")
        print()
        return
    seqs, _ = engine.generate_batch(ids, num_samples=args.num_samples, **kw)
    ends = set(stops if stops is not None else engine.default_stop_tokens())
    for i, s in enumerate(seqs):
        out = tok.decode([t for t in s if t not in ends])
        if one_line:
            out = out.split("\n")[0]
        print(f"--- sample {i} ---\n{text}{out}")
