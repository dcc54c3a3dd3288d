"""The assistant's tools: calculator, python (sandboxed) and search (BM25), and the dispatcher.

The engine calls ``tools(name, input) -> str`` when the model emits
``<|tool_start|>name\\ninput<|tool_end|>`` and forces the returned string back in between
``<|output_start|>`` and ``<|output_end|>``. Whatever goes wrong inside a tool comes back as a
string starting with ``"error: "`` so the model can see it (and learn to recover); a tool never
raises into the chat loop.

* calculator: arithmetic parsed with ``ast`` and evaluated by walking the tree. Only numbers,
  ``+ - * / // % **``, unary minus/plus and parentheses are accepted; names, calls, attributes,
  subscripts, comparisons... are rejected. Exponents and magnitudes are bounded, so ``9**9**9``
  is an error instead of a frozen server. There is no ``eval``.
* python: ``chatforge.assistant.sandbox.run_python`` (see its docstring for the threat model).
* search: Okapi BM25 (Robertson & Spärck Jones; Robertson & Zaragoza, "The Probabilistic
  Relevance Framework: BM25 and Beyond", 2009) over a local document index, k1=1.5, b=0.75.
"""
from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from collections import Counter
from typing import Callable

from chatforge.assistant.sandbox import SandboxConfig, run_python

TOOL_NAMES = ("calculator", "python", "search")

# ----------------------------------------------------------------------------- calculator

MAX_EXPR_CHARS = 200
MAX_ABS = 1e100          # any intermediate or final result beyond this is an error
MAX_POW_BITS = 340       # |base|.bit_length() * exponent must stay below this (~1e100)


class CalcError(ValueError):
    pass


_BINOPS: dict[type, Callable] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                                 ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv,
                                 ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNOPS: dict[type, Callable] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_ALIASES = {"×": "*", "÷": "/", "−": "-", "^": "**"}  # how people (and models) write arithmetic


def _check(v: int | float) -> int | float:
    if isinstance(v, float) and not math.isfinite(v):
        raise CalcError("result is not a finite number")
    if abs(v) > MAX_ABS:
        raise CalcError("result too large")
    return v


def _pow(a: int | float, b: int | float) -> int | float:
    if abs(b) > 1000:
        raise CalcError("exponent too large")
    if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and abs(a).bit_length() * b > MAX_POW_BITS + 64:
        raise CalcError("result too large")
    if a == 0 and b < 0:
        raise CalcError("division by zero")
    try:
        r = a ** b
    except OverflowError:
        raise CalcError("result too large") from None
    if isinstance(r, complex):
        raise CalcError("result is not a real number")
    return r


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _UNOPS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check(_pow(a, b))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise CalcError("division by zero")
        return _check(_BINOPS[type(node.op)](a, b))
    what = type(node).__name__
    if isinstance(node, ast.Name):
        what = f"name '{node.id}'"
    elif isinstance(node, ast.Constant):
        what = f"constant {node.value!r}"
    elif isinstance(node, ast.Call):
        what = "function call"
    raise CalcError(f"unsupported expression ({what}); use numbers, + - * / // % ** and parentheses")


def calculate(expr: str) -> int | float:
    """Evaluate an arithmetic expression safely; raises CalcError with a readable message."""
    expr = expr.strip().rstrip("=").strip()
    for a, b in _ALIASES.items():
        expr = expr.replace(a, b)
    if not expr:
        raise CalcError("empty expression")
    if len(expr) > MAX_EXPR_CHARS:
        raise CalcError(f"expression too long (max {MAX_EXPR_CHARS} characters)")
    try:
        with warnings.catch_warnings():  # model-written garbage like "3x" warns before it fails
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalcError(f"cannot parse {expr!r}") from None
    try:
        return _eval(tree)
    except RecursionError:
        raise CalcError("expression nested too deeply") from None


def format_number(v: int | float) -> str:
    """84 for 84 and 84.0; 12 significant digits for other floats."""
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e16:
            return str(int(v))
        return format(v, ".12g")
    return str(v)


def calculator(expr: str) -> str:
    try:
        return format_number(calculate(expr))
    except CalcError as e:
        return f"error: {e}"


# ----------------------------------------------------------------------------- search (BM25)

_WORD = re.compile(r"[a-z0-9]+")


def bm25_tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class SearchIndex:
    """Okapi BM25 over an in-memory list of documents.

    score(q, d) = sum over distinct query terms t of
        idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
    with idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5)), the Robertson-Spärck Jones weight with
    +1 inside the log so that very common terms score ~0 instead of negative (as in Lucene).
    ``scores`` walks the inverted index (postings); ``scores_naive`` is the obviously-correct twin.
    """
    def __init__(self, ids: list[str], texts: list[str], k1: float = 1.5, b: float = 0.75):
        if len(ids) != len(texts):
            raise ValueError("ids and texts must have the same length")
        self.ids, self.texts, self.k1, self.b = list(ids), list(texts), k1, b
        self.doc_tf = [Counter(bm25_tokenize(t)) for t in self.texts]
        self.doc_len = [sum(c.values()) for c in self.doc_tf]
        self.N = len(self.texts)
        self.avgdl = (sum(self.doc_len) / self.N) if self.N else 0.0
        self.postings: dict[str, list[tuple[int, int]]] = {}  # term -> [(doc index, tf)]
        for i, c in enumerate(self.doc_tf):
            for term, tf in c.items():
                self.postings.setdefault(term, []).append((i, tf))

    @classmethod
    def from_documents(cls, docs: list[dict], k1: float = 1.5, b: float = 0.75) -> "SearchIndex":
        return cls([str(d["id"]) for d in docs], [d["text"] for d in docs], k1=k1, b=b)

    def idf(self, term: str) -> float:
        n = len(self.postings.get(term, ()))
        return math.log(1.0 + (self.N - n + 0.5) / (n + 0.5))

    def _norm(self, i: int) -> float:
        return self.k1 * (1.0 - self.b + self.b * self.doc_len[i] / self.avgdl) if self.avgdl else self.k1

    def scores(self, query: str) -> list[float]:
        out = [0.0] * self.N
        for term in sorted(set(bm25_tokenize(query))):
            idf = self.idf(term)
            for i, tf in self.postings.get(term, ()):
                out[i] += idf * tf * (self.k1 + 1.0) / (tf + self._norm(i))
        return out

    def scores_naive(self, query: str) -> list[float]:
        """Slow twin: score every document directly from its text."""
        terms = sorted(set(bm25_tokenize(query)))
        out = []
        for i in range(self.N):
            words = bm25_tokenize(self.texts[i])
            s = 0.0
            for term in terms:
                tf = words.count(term)
                if tf:
                    n = sum(1 for t in self.texts if term in bm25_tokenize(t))
                    idf = math.log(1.0 + (self.N - n + 0.5) / (n + 0.5))
                    s += idf * tf * (self.k1 + 1.0) / (tf + self.k1 * (1 - self.b + self.b * len(words) / self.avgdl))
            out.append(s)
        return out

    def search(self, query: str, k: int = 3) -> list[dict]:
        """Top-k {"id", "score", "text"}, best first; ties broken by index order; zero scores dropped."""
        sc = self.scores(query)
        best = sorted((i for i in range(self.N) if sc[i] > 0), key=lambda i: (-sc[i], i))[:k]
        return [{"id": self.ids[i], "score": sc[i], "text": self.texts[i]} for i in best]


def snippet(text: str, max_chars: int = 300) -> str:
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut + " ..."


def format_search_results(query: str, hits: list[dict], snippet_chars: int = 300) -> str:
    if not hits:
        return f"no results for {query!r}"
    return "\n".join(f"[{j}] {h['id']}: {snippet(h['text'], snippet_chars)}" for j, h in enumerate(hits, 1))


# ----------------------------------------------------------------------------- dispatcher

class ToolBox:
    """The engine's ``tools`` hook: ``ToolBox(index=...)(name, input) -> str``."""
    def __init__(self, index: SearchIndex | None = None, sandbox: SandboxConfig | None = None,
                 top_k: int = 3, snippet_chars: int = 300, max_output_chars: int = 1500,
                 enabled: tuple[str, ...] = TOOL_NAMES):
        self.index, self.sandbox = index, sandbox or SandboxConfig()
        self.top_k, self.snippet_chars, self.max_output_chars = top_k, snippet_chars, max_output_chars
        self.enabled = tuple(enabled)

    @classmethod
    def from_documents(cls, docs: list[dict], **kw) -> "ToolBox":
        return cls(index=SearchIndex.from_documents(docs), **kw)

    @classmethod
    def from_world(cls, world, **kw) -> "ToolBox":
        """Search over ``world.search_documents()`` (all people's bios, known or not, + filler)."""
        return cls.from_documents(world.search_documents(), **kw)

    def __call__(self, name: str, input: str) -> str:
        return run_tool(name, input, self)


def run_tool(name: str, input: str, ctx: ToolBox | None = None) -> str:
    """Dispatch one tool call; always returns a string (errors start with "error: ")."""
    ctx = ctx or ToolBox()
    name = (name or "").strip()
    input = input or ""
    if name not in ctx.enabled:
        return f"error: unknown tool {name!r}; available: {', '.join(ctx.enabled)}"
    try:
        if name == "calculator":
            out = calculator(input)
        elif name == "python":
            out = run_python(input, ctx.sandbox).to_tool_output(ctx.max_output_chars)
        elif name == "search":
            if ctx.index is None:
                return "error: search is not available (no document index loaded)"
            query = input.strip()
            if not query:
                return "error: empty search query"
            out = format_search_results(query, ctx.index.search(query, ctx.top_k), ctx.snippet_chars)
        else:
            return f"error: tool {name!r} is not implemented"
    except Exception as e:  # a tool bug must not kill the chat; report it to the model instead
        return f"error: {name} failed ({type(e).__name__}: {e})"
    if len(out) > ctx.max_output_chars:
        out = out[:ctx.max_output_chars] + " ... [truncated]"
    return out


def default_tools(world=None) -> ToolBox:
    """All three tools with default limits; search over ``world`` when one is given (else disabled)."""
    return ToolBox.from_world(world) if world is not None else ToolBox()
