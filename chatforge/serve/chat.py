"""``chatforge chat``: talk to a checkpoint in the terminal.

Multi-turn chat keeps one engine and one KV cache for the whole conversation: each turn only the
new tokens (``<|user_start|> ... <|user_end|><|assistant_start|>``) are run through the model, the
keys/values of everything before are reused (the cache is rebuilt only after ``/reset`` or when the
conversation no longer fits the context). Text is streamed through ``StreamDecoder`` so multi-byte
characters are never printed half-way; tool calls and their outputs are shown as they happen.

Commands: ``/reset`` (forget the conversation, keep the system prompt), ``/system TEXT`` (new system
prompt, resets), ``/quit`` (or end of input). The loop reads lines from any text stream, so tests
drive it with a scripted ``io.StringIO``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, TextIO

from chatforge.assistant.convo import parse_reply
from chatforge.assistant.sandbox import add_unsafe_python_arg, apply_unsafe_python_arg
from chatforge.assistant.tools import default_tools
from chatforge.common import (add_config_args, CfError, config_from_args, get_device, make_parser,
                              print_config, run_dir)
from chatforge.model.checkpoint import load_checkpoint
from chatforge.model.engine import Engine
from chatforge.model.gpt import KVCache
from chatforge.model.quant import KINDS, quantize_for_inference
from chatforge.tokenizer.tokenizer import StreamDecoder
from chatforge.world.build import load_world




@dataclass
class ChatConfig:
    run: str = field(default="default", metadata={"help": "run name; the checkpoint is <run>/<stage>"})
    stage: str = field(default="sft", metadata={"help": "stage folder to load (sft, rl, base, ...)"})
    checkpoint: str = field(default="", metadata={"help": "explicit checkpoint path (overrides run/stage)"})
    system: str = field(default="", metadata={"help": "system prompt"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (0: greedy)"})
    top_k: int = field(default=50, metadata={"help": "top-k sampling (0: off)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (1: off)"})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens per reply at most"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    tools: bool = field(default=True, metadata={"help": "let the model call calculator/python/search"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | mps | auto"})
    weights: str = field(default="fp32", metadata={"help": "inference weights: fp32 | bf16 | fp16 | int8 (weight-only)",
                                                   "choices": list(KINDS)})


HELP = "commands: /reset (new conversation), /system TEXT (set the system prompt and reset), /quit"


class ChatSession:
    """One conversation with one engine: the messages so far and the KV cache that holds them.

    ``send(text, write)`` adds a user turn, streams the reply through ``write(str)`` and returns the
    assistant message's content. The conversation is kept as tokens (``history``, exactly what was
    generated, not a re-encoding of its text) and each prompt extends it, so the cache, which holds the
    keys/values of ``fed``, covers all but the new user turn. Only the part of the prompt after the
    longest common prefix with ``fed`` is run through the model (after trimming old turns to fit the
    context, that prefix is just the start of the conversation).
    """
    def __init__(self, engine, tokenizer, system: str = "", temperature: float = 0.6, top_k: int | None = 50,
                 top_p: float | None = None, max_new_tokens: int = 256, seed: int = 0):
        self.engine, self.tok = engine, tokenizer
        self.system = system
        self.sample_kw = dict(temperature=temperature, top_k=top_k or None,
                              top_p=top_p if top_p is not None and top_p < 1.0 else None)
        self.max_new_tokens, self.seed, self.turn = max_new_tokens, seed, 0
        self.cache = None
        self.fed: list[int] = []
        self.reset()

    def reset(self, system: str | None = None) -> None:
        if system is not None:
            self.system = system
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.fed = []      # tokens whose keys/values are in the cache (the buffers are kept)
        self.history: list[int] = []  # the conversation as tokens (what the next prompt extends)

    def _prompt(self) -> list[int]:
        """The token history plus the new user turn (append-only, so the cache always matches); when
        that leaves no room to reply, re-render without the oldest exchanges."""
        seq_len = self.engine.model.config.seq_len
        room = min(self.max_new_tokens, seq_len // 2)
        user = self.tok.render_conversation({"messages": [self.messages[-1]]})[0][1:]  # drop <|bos|>
        prompt = (self.history or self.tok.render_conversation(
            {"messages": self.messages[:-1]})[0] if len(self.messages) > 1 else [self.tok.bos_id]) \
            + user + [self.tok.special("<|assistant_start|>")]
        first = 1 if self.messages[0]["role"] == "system" else 0
        while len(prompt) + room > seq_len and len(self.messages) - first > 1:
            del self.messages[first:first + 2]  # forget the oldest user/assistant pair
            prompt = self.tok.render_for_completion({"messages": self.messages})
        if len(prompt) >= seq_len:
            self.messages.pop()
            raise CfError(f"message too long: {len(prompt)} tokens, the model's context is {seq_len}")
        return prompt

    def send(self, text: str, write: Callable[[str], None] = lambda s: None) -> str | list[dict]:
        self.messages.append({"role": "user", "content": text})
        prompt = self._prompt()
        if self.cache is None:
            self.cache = KVCache.for_model(self.engine.model, 1, dtype=getattr(self.engine, "cache_dtype", None))
        lcp = 0
        for a, b in zip(self.fed, prompt):
            if a != b:
                break
            lcp += 1
        self.cache.pos = lcp  # keys/values beyond the common prefix are stale: overwrite them
        budget = min(self.max_new_tokens, self.engine.model.config.seq_len - len(prompt))
        sp = {self.tok.special(n): n for n in ("<|tool_start|>", "<|tool_end|>", "<|output_start|>",
                                                 "<|output_end|>")}
        stops = {self.tok.special("<|assistant_end|>"), self.tok.bos_id}
        dec, mode, held, out = StreamDecoder(self.tok), "text", [], []
        gen = self.engine.generate(prompt, num_samples=1, max_new_tokens=budget, seed=self.seed + self.turn,
                                   kv_cache=self.cache, **self.sample_kw)
        for tokens, _ in gen:
            t = tokens[0]
            if t < 0:
                break
            out.append(t)
            if t in stops:
                break
            name = sp.get(t)
            if name in ("<|tool_start|>", "<|output_start|>"):
                mode, held = ("call" if name == "<|tool_start|>" else "output"), []
            elif name in ("<|tool_end|>", "<|output_end|>"):
                s = self.tok.decode(held)
                if mode == "call":
                    tool, _, inp = s.partition("\n")
                    write(f"\n[tool call] {tool}: {inp}\n")
                else:
                    write(f"[tool output] {s.strip()}\n")
                mode = "text"
            elif mode == "text":
                write(dec.push(t))
            else:
                held.append(t)
        if mode != "text":  # the token budget ended inside a tool call / output: show what there was
            what = "tool call" if mode == "call" else "tool output"
            write(f"\n[{what}, cut at the token budget] {self.tok.decode(held)}\n")
        write(dec.flush())
        gen.close()
        self.turn += 1
        self.fed = (prompt + out)[:self.cache.pos]
        self.last_prompt, self.last_tokens = prompt, out
        end = self.tok.special("<|assistant_end|>")
        self.history = prompt + [t for t in out if t != self.tok.bos_id] + ([] if out and out[-1] == end else [end])
        _, parts = parse_reply(self.tok, out)
        content: str | list[dict] = parts if any(p["type"] != "text" for p in parts) else \
            "".join(p["text"] for p in parts)
        self.messages.append({"role": "assistant", "content": content})
        return content


def chat_loop(session: ChatSession, inp: TextIO, out: TextIO, prompt: str = "> ") -> int:
    """Read lines from ``inp`` until EOF or /quit; returns the number of replies given."""
    replies = 0
    while True:
        out.write(prompt)
        out.flush()
        line = inp.readline()
        if not line:
            out.write("\n")
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/quit", "/exit"):
                break
            if cmd == "/reset":
                session.reset()
                out.write("(new conversation)\n")
            elif cmd == "/system":
                session.reset(system=arg.strip())
                out.write(f"(system prompt set: {arg.strip()!r}; new conversation)\n")
            else:
                out.write(HELP + "\n")
            continue
        try:
            session.send(line, lambda s: (out.write(s), out.flush()))
        except CfError as e:
            out.write(f"error: {e}\n")
            continue
        out.write("\n")
        replies += 1
    return replies


def cli(argv: list[str]) -> None:
    p = make_parser("chatforge chat", "chat with a model in the terminal (" + HELP + ")")
    add_config_args(p, ChatConfig)
    add_unsafe_python_arg(p)
    args = p.parse_args(argv)
    apply_unsafe_python_arg(args)
    cfg = config_from_args(ChatConfig, args)
    if cfg.max_new_tokens < 1:
        raise CfError(f"--max-new-tokens: expected >= 1, got {cfg.max_new_tokens}")
    rd = run_dir(cfg.run)
    ck = load_checkpoint(cfg.checkpoint or rd / cfg.stage, device=get_device(cfg.device))
    tools = None
    if cfg.tools:
        world = None
        if (rd / "world" / "world.json").exists():
            world = load_world(rd)
        tools = default_tools(world)
    if sys.stdin.isatty():
        print_config(cfg, "chat config")
        print(f"loaded {ck.path}; {HELP}")
    model = quantize_for_inference(ck.model, cfg.weights)
    session = ChatSession(Engine(model, ck.tokenizer, tools=tools), ck.tokenizer, system=cfg.system,
                          temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                          max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    chat_loop(session, sys.stdin, sys.stdout, prompt="> " if sys.stdin.isatty() else "")
