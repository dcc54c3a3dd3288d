"""The tokenizer: byte-level BPE (rustbpe trains, tiktoken encodes), special tokens, chat rendering.

How it fits together:

* ``train_tokenizer(texts, vocab_size)`` runs rustbpe with the Llama-3 split pattern and gets
  tiktoken-style mergeable ranks (token bytes -> id). ``chatforge.bpe`` is the pure-Python twin.
* ``Tokenizer`` wraps a ``tiktoken.Encoding`` built from those ranks plus our special tokens, whose
  ids come right after the merged vocabulary in ``SPECIAL_TOKENS`` order. Text that merely spells a
  special token ("<|bos|>") is encoded as plain text unless ``allowed_special`` says otherwise, so
  user content can never inject control tokens.
* Conversations (schema in dev/DESIGN.md) render to ``(ids, mask)``: mask 1 on what the assistant
  must learn to produce (its text, its tool calls, ``<|assistant_end|>``), 0 on everything the
  prompt or the engine supplies (system/user turns, tool outputs).
* A tokenizer directory holds ``ranks.tiktoken`` (tiktoken's base64 format) and ``tokenizer.json``
  (pattern, specials, sizes, a hash that catches corruption). ``export_hf_tokenizer`` writes a HF
  ``tokenizer.json`` that encodes identically; ``load_gguf_vocab`` imports e.g. GPT-2 from a GGUF.
"""
from __future__ import annotations

import base64
import codecs
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import rustbpe
import tiktoken
from gguf import GGUFReader

from chatforge.common import (atomic_path, atomic_write_json, CfError, check_out_dir, make_parser, print0,
                              provenance, read_jsonl, run_dir)
from chatforge.tokenizer import bpe




SPECIAL_TOKENS = ["<|bos|>", "<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
                  "<|assistant_start|>", "<|assistant_end|>", "<|tool_start|>", "<|tool_end|>",
                  "<|output_start|>", "<|output_end|>"]
LLAMA3_PATTERN = bpe.LLAMA3_PATTERN
GPT2_PATTERN = bpe.GPT2_PATTERN
ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "tool_call", "tool_output")


# ----------------------------------------------------------------------------- the tokenizer

class Tokenizer:
    """Mergeable ranks + split pattern + special tokens, encoded by tiktoken."""
    def __init__(self, ranks: dict[bytes, int], pattern: str = LLAMA3_PATTERN,
                 specials: dict[str, int] | None = None, name: str = "chatforge", meta: dict | None = None):
        n = len(ranks)
        if specials is None:  # our convention: specials right after the merged vocabulary
            specials = {s: n + i for i, s in enumerate(SPECIAL_TOKENS)}
        if sorted(ranks.values()) != list(range(n)):
            raise CfError(f"{name}: token ranks must be exactly 0..{n - 1}")
        if set(specials.values()) & set(range(n)) or len(set(specials.values())) != len(specials):
            raise CfError(f"{name}: special token ids collide with the vocabulary or each other")
        self.ranks, self.pattern, self.specials, self.name = ranks, pattern, dict(specials), name
        self.meta = dict(meta or {})
        self.n_merged = n
        self.n_vocab = max([n - 1, *specials.values()]) + 1
        self.enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens=self.specials)
        self.bos_id = specials.get("<|bos|>", specials.get("<|endoftext|>", -1))
        self._special_ids = set(self.specials.values())
        self._hash: str | None = None

    def __repr__(self) -> str:
        return f"Tokenizer(n_vocab={self.n_vocab}, n_merged={self.n_merged}, specials={len(self.specials)})"

    def special(self, name: str) -> int:
        try:
            return self.specials[name]
        except KeyError:
            raise CfError(f"tokenizer: unknown special token {name!r}; have {list(self.specials)}") from None

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    # -- encode / decode
    def encode(self, text: str, allowed_special: str | set = ()) -> list[int]:
        if not allowed_special:  # the common case: every special's spelling is plain text
            return self.enc.encode_ordinary(text)
        return self.enc.encode(text, allowed_special=allowed_special, disallowed_special=())

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.enc.decode_bytes(ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.enc.decode_single_token_bytes(token_id)

    # -- persistence
    @property
    def hash(self) -> str:
        """sha256 over pattern, ranks and specials: identical vocabularies have identical hashes."""
        if self._hash is None:
            h = hashlib.sha256(self.pattern.encode())
            h.update(_ranks_text(self.ranks).encode())
            h.update(json.dumps(sorted(self.specials.items())).encode())
            self._hash = h.hexdigest()[:16]
        return self._hash

    def save(self, path: str | os.PathLike) -> None:
        """Write the directory atomically (temp folder, then rename)."""
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            (tmp / "ranks.tiktoken").write_text(_ranks_text(self.ranks), encoding="ascii")
            atomic_write_json(tmp / "tokenizer.json", {
                "kind": "tokenizer", "config": self.meta.get("config", {}), "name": self.name,
                "pattern": self.pattern, "specials": self.specials, "n_merged": self.n_merged,
                "n_vocab": self.n_vocab, "hash": self.hash,
                **{k: v for k, v in self.meta.items() if k != "config"}, "provenance": provenance()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        if not path.is_dir():
            raise CfError(f"{path}: tokenizer directory not found")
        meta_path, ranks_path = path / "tokenizer.json", path / "ranks.tiktoken"
        if not meta_path.exists() or not ranks_path.exists():
            raise CfError(f"{path}: not a tokenizer directory (expected ranks.tiktoken and tokenizer.json)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            pattern, specials, want_hash = meta["pattern"], meta["specials"], meta["hash"]
            assert isinstance(specials, dict) and all(isinstance(v, int) for v in specials.values())
        except Exception as e:
            raise CfError(f"{meta_path}: corrupt tokenizer metadata, expected JSON with pattern, specials, "
                          f"hash ({type(e).__name__})") from None
        ranks = _parse_ranks(ranks_path)
        tok = cls(ranks, pattern, specials, name=meta.get("name", "chatforge"),
                  meta={k: meta[k] for k in ("config", "train") if k in meta})
        if tok.hash != want_hash:
            raise CfError(f"{path}: corrupt tokenizer, hash {tok.hash} != {want_hash} recorded in tokenizer.json")
        return tok

    # -- chat
    def render_conversation(self, conv: dict, max_tokens: int | None = None) -> tuple[list[int], list[int]]:
        """Conversation -> (ids, mask); mask[i] = 1 where ids[i] is a training target (DESIGN.md)."""
        validate_conversation(conv)
        ids: list[int] = []
        mask: list[int] = []

        def add(tokens: list[int], m: int) -> None:
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        sp = self.special
        add([self.bos_id], 0)
        for msg in conv["messages"]:
            role, content = msg["role"], msg["content"]
            if role in ("system", "user"):
                text = content if isinstance(content, str) else "".join(p["text"] for p in content)
                add([sp(f"<|{role}_start|>")] + self.encode(text) + [sp(f"<|{role}_end|>")], 0)
                continue
            add([sp("<|assistant_start|>")], 0)
            for part in ([{"type": "text", "text": content}] if isinstance(content, str) else content):
                if part["type"] == "text":
                    add(self.encode(part["text"]), 1)
                elif part["type"] == "tool_call":
                    add([sp("<|tool_start|>")] + self.encode(part["name"] + "\n" + part["input"])
                        + [sp("<|tool_end|>")], 1)
                else:  # tool_output: the engine injects it, never a target
                    add([sp("<|output_start|>")] + self.encode(part["text"]) + [sp("<|output_end|>")], 0)
            add([sp("<|assistant_end|>")], 1)
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def render_for_completion(self, conv: dict) -> list[int]:
        """Prompt ids for the next assistant turn: a trailing assistant message is dropped."""
        msgs = list(conv["messages"])
        if msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        conv = {**conv, "messages": msgs}
        validate_conversation(conv)
        if msgs[-1]["role"] != "user":
            raise CfError("messages: a completion prompt must end with a user message")
        ids, _ = self.render_conversation(conv)
        return ids + [self.special("<|assistant_start|>")]

    def parse_conversation(self, ids: list[int]) -> dict:
        return parse_conversation(self, ids)


def _ranks_text(ranks: dict[bytes, int]) -> str:
    """tiktoken's ``.tiktoken`` format: one "base64(token) rank" per line, by rank."""
    return "".join(f"{base64.b64encode(b).decode()} {r}\n" for b, r in sorted(ranks.items(), key=lambda x: x[1]))


def _parse_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (UnicodeDecodeError, OSError) as e:
        raise CfError(f"{path}: unreadable ranks file ({type(e).__name__})") from None
    for n, line in enumerate(lines, 1):
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except Exception:
            raise CfError(f"{path}:{n}: expected 'base64-token rank', got {line[:40]!r}") from None
    if not ranks:
        raise CfError(f"{path}: empty ranks file")
    return ranks


def train_tokenizer(texts: Iterable[str], vocab_size: int, pattern: str = LLAMA3_PATTERN) -> Tokenizer:
    """Train byte-level BPE with rustbpe; ``vocab_size`` counts the special tokens."""
    n_merged = vocab_size - len(SPECIAL_TOKENS)
    if n_merged < 256:
        raise CfError(f"vocab_size: {vocab_size} is too small; expected >= {256 + len(SPECIAL_TOKENS)} "
                      f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), n_merged, pattern=pattern)
    ranks = dict(trainer.get_mergeable_ranks())
    if len(ranks) < n_merged:  # the corpus ran out of pairs to merge
        print0(f"warning: corpus too small for vocab_size {vocab_size}: learned {len(ranks) - 256} merges, "
               f"vocabulary is {len(ranks) + len(SPECIAL_TOKENS)}")
    return Tokenizer(ranks, pattern, meta={"config": {"vocab_size": vocab_size, "pattern": "llama3"
                                                      if pattern == LLAMA3_PATTERN else pattern}})


# ----------------------------------------------------------------------------- streaming decode

class StreamDecoder:
    """Token-by-token decoding that never splits a UTF-8 character.

    A character can span tokens (emoji, CJK, byte-fallback pieces). Python's incremental UTF-8
    decoder holds back an incomplete trailing sequence until its continuation bytes arrive, and
    replaces bytes that can never be valid with U+FFFD; ``flush`` ends the stream.
    """
    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(self.tok.token_bytes(token_id), final=False)

    def flush(self) -> str:
        """End of stream: emit what is held back (an incomplete tail becomes U+FFFD)."""
        return self._dec.decode(b"", final=True)


# ----------------------------------------------------------------------------- conversations

def validate_conversation(conv: Any, where: str = "") -> None:
    """Check the schema of dev/DESIGN.md; raise a one-line CfError naming the field."""
    pre = f"{where}: " if where else ""

    def fail(field: str, what: str) -> None:
        raise CfError(f"{pre}{field}: {what}")

    if not isinstance(conv, dict):
        fail("conversation", f"expected an object with 'messages', got {type(conv).__name__}")
    msgs = conv.get("messages")
    if not isinstance(msgs, list) or not msgs:
        fail("messages", "expected a non-empty list of messages")
    expect = "user"
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        if not isinstance(m, dict):
            fail(f, f"expected an object with role and content, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            fail(f + ".role", f"unknown role {role!r}; expected system|user|assistant")
        if role == "system":
            if i != 0:
                fail(f + ".role", "a system message may only come first")
        elif role != expect:
            fail(f + ".role", f"expected '{expect}' here (user and assistant alternate, starting with user), "
                              f"got '{role}'")
        else:
            expect = "assistant" if role == "user" else "user"
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            fail(f + ".content", f"expected a string or a list of parts, got {type(content).__name__}")
        for j, p in enumerate(content):
            pf = f"{f}.content[{j}]"
            if not isinstance(p, dict) or p.get("type") not in PART_TYPES:
                fail(pf + ".type", f"expected text|tool_call|tool_output, got "
                                   f"{p.get('type') if isinstance(p, dict) else type(p).__name__!r}")
            if p["type"] != "text" and role != "assistant":
                fail(pf + ".type", f"'{p['type']}' parts are only allowed in assistant messages")
            keys = ("name", "input") if p["type"] == "tool_call" else ("text",)
            for k in keys:
                if not isinstance(p.get(k), str):
                    fail(f"{pf}.{k}", f"expected a string, got {type(p.get(k)).__name__}")
            if p["type"] == "tool_call" and (not p["name"] or "\n" in p["name"]):
                fail(pf + ".name", "expected a non-empty tool name without newlines")


def load_conversations(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of conversations; errors name ``file:line``. Blank lines are skipped."""
    convs = []
    for n, conv in read_jsonl(path, what="conversations file"):
        validate_conversation(conv, f"{path}:{n}")
        convs.append(conv)
    return convs


def parse_conversation(tok: Tokenizer, ids: list[int]) -> dict:
    """The inverse of ``render_conversation``: ids -> {"messages": [...]}.

    Message content comes back as a string when it is plain text, else as a list of parts
    (adjacent text merged). A final assistant message without ``<|assistant_end|>`` (a generation
    cut short) is accepted.
    """
    sp = tok.specials
    inv = {v: k for k, v in sp.items()}
    i, n = 0, len(ids)
    if ids and ids[0] == tok.bos_id:
        i = 1
    msgs: list[dict] = []

    def read_until(end: str) -> tuple[list[int], bool]:
        nonlocal i
        j = i
        while j < n and inv.get(ids[j]) != end:
            if ids[j] in inv:
                raise CfError(f"ids[{j}]: unexpected {inv[ids[j]]} inside a segment; expected {end}")
            j += 1
        seg, closed = ids[i:j], j < n
        i = j + 1
        return seg, closed

    while i < n:
        name = inv.get(ids[i])
        role = {"<|system_start|>": "system", "<|user_start|>": "user", "<|assistant_start|>": "assistant"}.get(name)
        if role is None:
            raise CfError(f"ids[{i}]: expected the start of a message, got token {ids[i]} ({name or 'text'})")
        i += 1
        if role != "assistant":
            seg, _ = read_until(f"<|{role}_end|>")
            msgs.append({"role": role, "content": tok.decode(seg)})
            continue
        parts: list[dict] = []
        text: list[int] = []
        while i < n and inv.get(ids[i]) != "<|assistant_end|>":
            s = inv.get(ids[i])
            if s is None:
                text.append(ids[i])
                i += 1
                continue
            if text:
                parts.append({"type": "text", "text": tok.decode(text)})
                text = []
            i += 1
            if s == "<|tool_start|>":
                seg, _ = read_until("<|tool_end|>")
                name_, _, inp = tok.decode(seg).partition("\n")
                parts.append({"type": "tool_call", "name": name_, "input": inp})
            elif s == "<|output_start|>":
                seg, _ = read_until("<|output_end|>")
                parts.append({"type": "tool_output", "text": tok.decode(seg)})
            else:
                raise CfError(f"ids[{i - 1}]: unexpected {s} inside an assistant message")
        if text:
            parts.append({"type": "text", "text": tok.decode(text)})
        i += 1  # past <|assistant_end|>
        msgs.append({"role": "assistant", "content": _simplify(parts)})
    return {"messages": msgs}


def _simplify(parts: list[dict]) -> str | list[dict]:
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def normalize_conversation(conv: dict) -> dict:
    """The form ``parse_conversation`` returns: plain text as strings, adjacent text parts merged."""
    out = []
    for m in conv["messages"]:
        c = m["content"]
        if isinstance(c, list):
            merged: list[dict] = []
            for p in c:
                if p["type"] == "text" and merged and merged[-1]["type"] == "text":
                    merged[-1] = {"type": "text", "text": merged[-1]["text"] + p["text"]}
                elif p["type"] != "text" or p["text"]:
                    merged.append(dict(p))
            c = _simplify(merged) if m["role"] == "assistant" else "".join(p["text"] for p in c)
        out.append({"role": m["role"], "content": c})
    return {"messages": out}


# ----------------------------------------------------------------------------- HF export, GGUF import

def export_hf_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write a HF ``tokenizer.json`` (ByteLevel BPE, Split pre-tokenizer with our regex).

    Merges are recovered from the ranks (``bpe.recover_merges``); ``ignore_merges`` makes a chunk that
    is itself a token come out whole, as tiktoken does (Llama-3's tokenizer.json does the same).
    """
    b2u = bpe.bytes_to_unicode()

    def u(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {u(b): r for b, r in tok.ranks.items()}
    merges = [[u(a), u(b)] for a, b in bpe.recover_merges(tok.ranks)]
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(tok.specials.items(), key=lambda x: x[1])]
    obj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def load_gguf_vocab(path: str | os.PathLike, pattern: str = GPT2_PATTERN,
                    specials: Iterable[str] = ("<|endoftext|>",)) -> Tokenizer:
    """Import a GPT-2-style BPE vocabulary (tokens in byte-unicode form, merges "a b") from a GGUF.

    Ranks are the GGUF token ids; we check that merge k produces a token no earlier than its parts,
    so tiktoken's lowest-rank-first merging reproduces the merge list. Named specials keep their ids.
    """
    path = Path(path)
    if not path.is_file():
        raise CfError(f"{path}: GGUF file not found")
    try:
        r = GGUFReader(path)
        f = r.fields
        tokens = [bytes(f["tokenizer.ggml.tokens"].parts[k]).decode("utf-8") for k in f["tokenizer.ggml.tokens"].data]
        merges = [bytes(f["tokenizer.ggml.merges"].parts[k]).decode("utf-8") for k in f["tokenizer.ggml.merges"].data]
    except Exception as e:
        raise CfError(f"{path}: not a GGUF vocabulary with tokenizer.ggml.tokens/merges ({type(e).__name__})") from None
    u2b = {c: b for b, c in bpe.bytes_to_unicode().items()}
    specials = list(specials)
    ranks: dict[bytes, int] = {}
    spec_ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in specials:
            spec_ids[t] = i
        else:
            ranks[bytes(u2b[c] for c in t)] = i
    for m in merges:  # consistency: a merged token ranks after both of its parts
        a, b = m.split(" ")
        ab = ranks[bytes(u2b[c] for c in a + b)]
        if ab <= max(ranks[bytes(u2b[c] for c in a)], ranks[bytes(u2b[c] for c in b)]):
            raise CfError(f"{path}: merge {m!r} is out of rank order; tiktoken-style ranks cannot express it")
    return Tokenizer(ranks, pattern, spec_ids, name=path.stem)


# ----------------------------------------------------------------------------- corpora

def iter_corpus(path: str | os.PathLike) -> Iterator[str]:
    """Documents from a file or folder (recursive): ``.txt`` = one document, ``.jsonl`` = {"text": ...},
    ``.parquet`` = its ``text`` column (FineWeb shards from ``chatforge data fetch``)."""
    path = Path(path)
    if not path.exists():
        raise CfError(f"{path}: corpus not found")
    kinds = (".txt", ".jsonl", ".parquet")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in kinds and p.is_file())
    if not files:
        raise CfError(f"{path}: no .txt, .jsonl or .parquet files in corpus")
    for p in files:
        if p.suffix == ".jsonl":
            for n, d in read_jsonl(p):
                if not isinstance(d.get("text"), str):
                    raise CfError(f"{p}:{n}: expected a JSON object with a string 'text'")
                yield d["text"]
        elif p.suffix == ".parquet":
            import pyarrow.parquet as pq  # lazy import on purpose: only parquet corpora need it
            try:
                pf = pq.ParquetFile(p)
            except (OSError, ValueError) as e:
                raise CfError(f"{p}: unreadable parquet file ({e})") from None
            if "text" not in pf.schema_arrow.names:
                raise CfError(f"{p}: expected a parquet file with a 'text' column, got {pf.schema_arrow.names}")
            for batch in pf.iter_batches(columns=["text"], batch_size=1024):
                yield from (t for t in batch.column(0).to_pylist() if t)
        else:
            yield p.read_text(encoding="utf-8", errors="replace")


def take_chars(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """The documents of ``texts`` until ``max_chars`` characters have been given (the last one cut)."""
    left = max_chars
    for t in texts:
        if left <= 0:
            return
        yield t[:left]
        left -= len(t)


def train_from_corpus(corpus_path: str | os.PathLike, vocab_size: int, out_dir: str | os.PathLike,
                      max_chars: int = 0) -> Tokenizer:
    """Train on a corpus folder/file (its first ``max_chars`` characters when > 0; nanochat trains on
    2B characters of FineWeb-Edu) and save the tokenizer directory atomically."""
    stats = {"docs": 0, "bytes": 0}

    def texts() -> Iterator[str]:
        docs = iter_corpus(corpus_path)
        for t in (take_chars(docs, max_chars) if max_chars > 0 else docs):
            stats["docs"] += 1
            stats["bytes"] += len(t.encode("utf-8"))
            yield t

    it = texts()
    first = next((t for t in it if t), None)  # fail early (and clearly) on an empty corpus
    if first is None:
        raise CfError(f"{corpus_path}: corpus is empty (no text)")
    n_merged = vocab_size - len(SPECIAL_TOKENS)
    if n_merged < 256:
        train_tokenizer([], vocab_size)  # raises the one-line vocab_size error
    t0 = time.perf_counter()
    tok = train_tokenizer(_chain([first], it), vocab_size)
    seconds = time.perf_counter() - t0
    tok.meta["train"] = {"corpus": str(corpus_path), "docs": stats["docs"], "bytes": stats["bytes"],
                         "seconds": round(seconds, 3), "trainer": "rustbpe"}
    tok.save(out_dir)
    return tok


def _chain(*its: Iterable[str]) -> Iterator[str]:
    for it in its:
        yield from it


def corpus_stats(tok: Tokenizer, corpus_path: str | os.PathLike, batch: int = 256) -> dict:
    """Compression on a corpus: documents, bytes, tokens, bytes per token."""
    docs = nbytes = ntok = 0
    buf: list[str] = []

    def flush() -> None:
        nonlocal ntok
        ntok += sum(len(x) for x in tok.encode_batch(buf))
        buf.clear()

    for t in iter_corpus(corpus_path):
        docs += 1
        nbytes += len(t.encode("utf-8"))
        buf.append(t)
        if len(buf) >= batch:
            flush()
    flush()
    if docs == 0:
        raise CfError(f"{corpus_path}: corpus is empty (no documents)")
    return {"docs": docs, "bytes": nbytes, "tokens": ntok, "bytes_per_token": nbytes / max(ntok, 1)}


# ----------------------------------------------------------------------------- CLI

_COLORS = [41, 42, 43, 44, 45, 46]  # ANSI background colours, cycled per token


def show(tok: Tokenizer, text: str, color: bool) -> str:
    """Text with each token on an alternating background (like Tiktokenizer), then ids and count."""
    ids = tok.encode(text)
    pieces = [tok.token_bytes(i) for i in ids]
    if color:
        out, dec = [], codecs.getincrementaldecoder("utf-8")(errors="replace")
        for k, b in enumerate(pieces):
            s = dec.decode(b).replace("\n", "\\n\n")
            out.append(f"\x1b[30;{_COLORS[k % len(_COLORS)]}m{s}\x1b[0m")
        body = "".join(out) + dec.decode(b"", final=True)
    else:
        body = "".join(f"[{b.decode('utf-8', errors='backslashreplace')}]" for b in pieces)
    return f"{body}\nids: {ids}\ntokens: {len(ids)}"


def cli(argv: list[str]) -> None:
    p = make_parser("chatforge tok", "BPE tokenizer: train | encode | decode | show | stats")
    sub = p.add_subparsers(dest="action", required=True)
    tr = sub.add_parser("train", help="train a tokenizer on a corpus")
    tr.add_argument("--input", help="file/folder of .txt/.jsonl/.parquet (default: runs/<run>/corpus)")
    tr.add_argument("--vocab-size", type=int, default=32768, help="total vocabulary incl. specials")
    tr.add_argument("--max-chars", type=int, default=0, help="train on the first N characters only (0 = all)")
    tr.add_argument("--out", help="output directory (default: runs/<run>/tokenizer)")
    tr.add_argument("--force", action="store_true",
                    help="write into a non-empty --out (only the tokenizer's files are replaced)")
    for name, h in (("encode", "text -> ids"), ("decode", "ids -> text"), ("show", "coloured tokens"),
                    ("stats", "bytes/token on a corpus")):
        s = sub.add_parser(name, help=h)
        s.add_argument("--tokenizer", help="tokenizer directory (default: runs/<run>/tokenizer)")
        if name == "stats":
            s.add_argument("--input", help="corpus file/folder (default: runs/<run>/corpus)")
        else:
            s.add_argument("args", nargs="*", help="text (or ids for decode); stdin when omitted")
        if name == "show":
            s.add_argument("--no-color", action="store_true", help="plain bracketed tokens")
        s.add_argument("--run", default="default", help="run name or directory")
    tr.add_argument("--run", default="default", help="run name or directory")
    a = p.parse_args(argv)
    rd = run_dir(a.run)

    if a.action == "train":
        corpus = Path(a.input) if a.input else rd / "corpus"
        out = check_out_dir(a.out, a.force) if a.out else rd / "tokenizer"
        print(f"config: {json.dumps({'input': str(corpus), 'vocab_size': a.vocab_size, 'out': str(out)})}")
        tok = train_from_corpus(corpus, a.vocab_size, out, a.max_chars)
        t = tok.meta["train"]
        print(f"trained {tok.n_vocab} tokens ({tok.n_merged} merged + {len(tok.specials)} special) on "
              f"{t['docs']} docs / {t['bytes'] / 1e6:.1f} MB in {t['seconds']:.1f}s -> {out}")
        return
    tok = Tokenizer.load(Path(a.tokenizer) if a.tokenizer else rd / "tokenizer")
    if a.action == "stats":
        s = corpus_stats(tok, Path(a.input) if a.input else rd / "corpus")
        print(f"docs: {s['docs']}\nbytes: {s['bytes']}\ntokens: {s['tokens']}\n"
              f"bytes/token: {s['bytes_per_token']:.3f}")
        return
    text = " ".join(a.args) if a.args else sys.stdin.read()
    if a.action == "encode":
        print(" ".join(map(str, tok.encode(text))))
    elif a.action == "decode":
        try:
            ids = [int(x) for x in text.replace(",", " ").replace("[", " ").replace("]", " ").split()]
        except ValueError:
            raise CfError("decode: expected integer token ids") from None
        bad = [i for i in ids if not 0 <= i < tok.n_vocab]
        if bad:
            raise CfError(f"decode: token id {bad[0]} out of range; expected 0..{tok.n_vocab - 1}")
        sys.stdout.write(tok.decode(ids) + "\n")
    else:
        print(show(tok, text, color=sys.stdout.isatty() and not a.no_color))
