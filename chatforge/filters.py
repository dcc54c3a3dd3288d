"""chatforge's datatrove PipelineSteps: read web data, extract, filter, dedup, anonymize.

A short tour (FineWeb order, Penedo et al. 2024, "The FineWeb Datasets", section 3):

    (CrawlReader     WARC/WARC.gz/WET/ARC, HTML folders, JSONL, parquet, text: in crawl.py)
    URLFilter        blocklisted domains (UT1 list shipped inside datatrove) + banned URL words
    Extract          HTML -> main text (trafilatura, FineWeb settings, or resiliparse: ~10x faster)
    LanguageFilter   py3langid (model ships in the wheel), keep `languages` with score >= threshold
    GopherRepetition / GopherQuality   Rae et al. 2021, "Scaling Language Models", appendix A
    C4Filter         Raffel et al. 2020, section 2.2 (line rules + doc rules, no terminal-punct rule)
    FineWebFilter    FineWeb's own three rules + list ratio
    (dedup)          exact hash + MinHash LSH, see `minhash_signature`, done between stages
    PIIStep          emails and public IPs -> fixed placeholders (datatrove's PIIFormatter rules)
    TokenCount       token count with chatforge's tokenizer, or a regex approximation without one
    Tally            counts docs/tokens flowing past a point: the funnel in data_report.md

Why our own filters instead of datatrove's stock ones: the stock Gopher/C4/FineWeb filters tokenize
words with NLTK punkt (a data download at run time), its URL filter with tldextract (downloads the
public-suffix list), its language filter with a fasttext model from a hub, and its token counter
with a hub tokenizer. Ours keep the same rules and thresholds but use a regex word splitter, so
nothing is downloaded. Every filter returns (False, reason) and writes dropped docs aside.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import tarfile
import zlib
import threading
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.pii import PIIFormatter

TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", ":", ";", "…", ")")
_WORD_RE = re.compile(r"\w+", re.UNICODE)
_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_SENT_RE = re.compile(r"[^.!?\n]+[.!?]+")
_BULLETS = ("•", "●", "○", "▪", "-", "*", "‣", "⁃", "◦")


# ----------------------------------------------------------------------------- URL filter

DATATROVE_ASSETS = Path(__import__("datatrove").__file__).parent / "assets"


def domain_hash(d: str) -> int:
    """64-bit key of a domain: crc32 of it and of its reverse (deterministic, ~0.2 us)."""
    raw = d.encode()
    return (zlib.crc32(raw) << 32) | zlib.crc32(raw[::-1])


@lru_cache(maxsize=1)
def ut1_blocklist() -> np.ndarray:
    """Sorted (N,) uint64 keys of the UT1 blocklist (adult/malware domains) FineWeb used.

    datatrove ships the list as an asset (4.5M domains, ~2 s to parse into a set and ~400 MB). We
    keep only 64-bit keys (36 MB) and cache them in ~/.cache/chatforge, so later runs load in ~50 ms.
    """
    asset = DATATROVE_ASSETS / "url_filterblacklistsv0_3_0.tar.gz"
    cache = Path(os.environ.get("CHATFORGE_CACHE", Path.home() / ".cache" / "chatforge"))
    path = cache / f"ut1_domains_{asset.stat().st_size}.npy"
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a corrupt cache is rebuilt
    with tarfile.open(asset) as tf:
        member = tf.extractfile("domains")
        assert member is not None
        keys = np.unique(np.fromiter((domain_hash(d) for d in member.read().decode("utf-8", "replace").split()),
                                     dtype=np.uint64))
    try:
        from chatforge.common import atomic_path
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, keys)
    except OSError:
        pass  # read-only home: stay in memory
    return keys


def _in_sorted(keys: np.ndarray, k: int) -> bool:
    i = int(np.searchsorted(keys, np.uint64(k)))
    return i < len(keys) and int(keys[i]) == k


@lru_cache(maxsize=1)
def banned_url_words() -> frozenset[str]:
    return frozenset((DATATROVE_ASSETS / "banned_words.txt").read_text().split())


class URLFilter(BaseFilter):
    """Drop a document whose host (or any parent domain) is blocklisted, or whose URL has a banned word."""

    name = "😈 URL filter"

    def __init__(self, domains: list[str], use_ut1: bool, banned_words: bool, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.extra, self.use_ut1, self.use_words = frozenset(d.lower() for d in domains), use_ut1, banned_words

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        url = doc.metadata.get("url") or ""
        host = (urlsplit(url).hostname or "").lower()
        parts = host.split(".")
        for i in range(len(parts) - 1):  # a.b.example.com, b.example.com, example.com
            d = ".".join(parts[i:])
            if d in self.extra or (self.use_ut1 and _in_sorted(ut1_blocklist(), domain_hash(d))):
                return False, "blocklisted domain"
        if self.use_words and set(_WORD_RE.findall(url.lower())) & banned_url_words():
            return False, "banned word in url"
        return True


# ----------------------------------------------------------------------------- extraction

class _Timeout(Exception):
    pass


def _extract_one(html: str, extractor: str) -> str:
    if extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text
        return extract_plain_text(html, main_content=True, alt_texts=False, links=False,
                                  list_bullets=True, comments=False, form_fields=False, noscript=False)
    import trafilatura
    # FineWeb's settings (datatrove Trafilatura step): favor_precision, no comments. deduplicate=False:
    # trafilatura's dedup is an LRU cache across calls, so output would depend on document order.
    return trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=False) or ""


def extract_text(html: str, extractor: str = "trafilatura", timeout: float = 0.0) -> str:
    """HTML -> main text. ``timeout`` (s, 0 = none) uses SIGALRM, so only in the main thread."""
    use_alarm = timeout > 0 and threading.current_thread() is threading.main_thread()
    if not use_alarm:
        return _extract_one(html, extractor)

    def _raise(*_):
        raise _Timeout
    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return _extract_one(html, extractor)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Extract(BaseFilter):
    """HTML -> text in place; drops documents with no main text, a timeout or an extractor error.

    Raises if the first 20 documents all fail with an error: a broken install (e.g. a missing
    lxml_html_clean) must not look like a corpus of empty pages.
    """

    name = "⛏ Extract"

    def __init__(self, extractor: str, timeout: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.extractor, self.timeout = extractor, timeout
        self._seen = self._errors = 0

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("format") != "html":
            return bool(doc.text.strip()) or (False, "empty text")
        self._seen += 1
        try:
            text = extract_text(doc.text, self.extractor, self.timeout)
        except _Timeout:
            return False, "extraction timeout"
        except Exception as e:  # noqa: BLE001
            self._errors += 1
            if self._errors == self._seen == 20:
                raise RuntimeError(f"{self.extractor} failed on 20/20 documents: {e!r}") from e
            return False, f"extraction error ({type(e).__name__})"
        doc.text = text.strip()
        doc.metadata["format"] = "text"
        return bool(doc.text) or (False, "no main text")


# ----------------------------------------------------------------------------- language

@lru_cache(maxsize=1)
def language_identifier():
    # The model file is inside the py3langid wheel: nothing is downloaded. norm_probs=True gives
    # probabilities in [0, 1] (the raw scores are log-likelihoods), so a 0.65 threshold means something.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageFilter(BaseFilter):
    name = "🌍 Language"

    def __init__(self, languages: list[str], threshold: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages, self.threshold = set(languages), threshold

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang, score = language_identifier().classify(doc.text.replace("\n", " ")[:20000])
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(float(score), 4)
        if lang not in self.languages:
            return False, f"language {lang}"
        if score < self.threshold:
            return False, "low language score"
        return True


# ----------------------------------------------------------------------------- quality rules

def _dup_stats(items: list[str]) -> tuple[int, int]:
    """(# items that repeat an earlier one, # chars in those repeats)."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


class GopherRepetition(BaseFilter):
    """Gopher (Rae et al. 2021, Table A1) repetition rules: duplicate lines/paragraphs and n-grams."""

    name = "👯 Gopher repetition"

    def __init__(self, dup_line_frac=0.3, dup_para_frac=0.3, dup_line_char_frac=0.2, dup_para_char_frac=0.2,
                 top_n_grams=((2, 0.2), (3, 0.18), (4, 0.16)),
                 dup_n_grams=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
                 exclusion_writer=None, fast: bool = True):
        super().__init__(exclusion_writer)
        self.fast = fast
        self.t = (dup_line_frac, dup_para_frac, dup_line_char_frac, dup_para_char_frac)
        self.top_n_grams, self.dup_n_grams = top_n_grams, dup_n_grams

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        paras = [p for p in re.split(r"\n{2,}", text.strip()) if p.strip()]
        n, c = _dup_stats(paras)
        if paras and n / len(paras) > self.t[1]:
            return False, "dup_para_frac"
        if c / max(1, len(text)) > self.t[3]:
            return False, "dup_para_char_frac"
        lines = [ln for ln in text.split("\n") if ln.strip()]
        n, c = _dup_stats(lines)
        if lines and n / len(lines) > self.t[0]:
            return False, "dup_line_frac"
        if c / max(1, len(text)) > self.t[2]:
            return False, "dup_line_char_frac"
        words = _WORD_RE.findall(text.lower())
        why = (ngram_repetition if self.fast else ngram_repetition_slow)(words, self.top_n_grams, self.dup_n_grams)
        return (False, why) if why else True


def ngram_repetition_slow(words: list[str], top_n_grams, dup_n_grams) -> str | None:
    """Gopher's n-gram rules, the obviously-correct twin of ``ngram_repetition``.

    top: chars covered by the most frequent n-gram (ties: the longest) / all word chars > frac.
    dup: chars of words inside any n-gram that repeats an earlier one / all word chars > frac.
    """
    total = sum(len(w) for w in words) or 1
    for n, frac in top_n_grams:
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        if grams:
            cnt, chars = max((c, sum(len(w) for w in g)) for g, c in grams.items())
            if cnt > 1 and chars * cnt / total > frac:
                return f"top_{n}_gram"
    for n, frac in dup_n_grams:
        seen: set[tuple] = set()
        covered = [False] * len(words)
        for i in range(len(words) - n + 1):
            g = tuple(words[i:i + n])
            if g in seen:
                covered[i:i + n] = [True] * n
            else:
                seen.add(g)
        if sum(len(w) for w, c in zip(words, covered) if c) / total > frac:
            return f"duplicated_{n}_n_grams"
    return None


def _ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """(L,) word ids -> (L-n+1,) uint64 keys of each n-gram (polynomial hash mod 2^64; collisions ~2^-64)."""
    keys = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            keys = keys * np.uint64(0x100000001B3) + ids[k:len(ids) - n + 1 + k]
    return keys


def ngram_repetition(words: list[str], top_n_grams, dup_n_grams) -> str | None:
    """Vectorized ``ngram_repetition_slow`` (same results, ~5x faster): n-grams as uint64 keys."""
    vocab: dict[str, int] = {}
    ids = np.array([vocab.setdefault(w, len(vocab) + 1) for w in words], dtype=np.uint64)  # (L,)
    lens = np.array([len(w) for w in words], dtype=np.int64)
    cl = np.concatenate([[0], np.cumsum(lens)])  # chars of words[i:j] = cl[j] - cl[i]
    total = int(cl[-1]) or 1
    L = len(words)
    for n, frac in top_n_grams:
        if L < n:
            continue
        keys = _ngram_keys(ids, n)
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        cnt = counts.max()
        chars = (cl[first + n] - cl[first])[counts == cnt].max()
        if cnt > 1 and chars * cnt / total > frac:
            return f"top_{n}_gram"
    for n, frac in dup_n_grams:
        if L < n:
            continue
        keys = _ngram_keys(ids, n)
        _, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        starts = np.nonzero(first[inv] != np.arange(len(keys)))[0]  # repeats of an earlier n-gram
        if not len(starts):
            continue
        d = np.zeros(L + 1, dtype=np.int64)
        np.add.at(d, starts, 1)
        np.add.at(d, starts + n, -1)
        covered = np.cumsum(d)[:L] > 0
        if lens[covered].sum() / total > frac:
            return f"duplicated_{n}_n_grams"
    return None


STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])


class GopherQuality(BaseFilter):
    """Gopher (Rae et al. 2021, appendix A) quality rules: length, word length, symbols, stop words."""

    name = "🥇 Gopher quality"

    def __init__(self, min_doc_words=50, max_doc_words=100_000, min_avg_word_length=3, max_avg_word_length=10,
                 max_symbol_word_ratio=0.1, max_bullet_lines_ratio=0.9, max_ellipsis_lines_ratio=0.3,
                 max_non_alpha_words_ratio=0.8, min_stop_words=2, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.c = {k: v for k, v in locals().items() if k not in ("self", "exclusion_writer", "__class__")}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        c, text = self.c, doc.text
        words = text.split()
        n = len(words)
        if n < c["min_doc_words"]:
            return False, "gopher_short_doc"
        if n > c["max_doc_words"]:
            return False, "gopher_long_doc"
        alpha = [w for w in words if any(ch.isalpha() for ch in w)]
        avg = sum(len(w) for w in alpha) / max(1, len(alpha))
        if avg < c["min_avg_word_length"] or avg > c["max_avg_word_length"]:
            return False, "gopher_avg_word_length"
        if (text.count("#") + text.count("...") + text.count("…")) / n > c["max_symbol_word_ratio"]:
            return False, "gopher_symbol_word_ratio"
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        if lines and sum(ln.startswith(_BULLETS) for ln in lines) / len(lines) > c["max_bullet_lines_ratio"]:
            return False, "gopher_bullet_lines"
        if lines and sum(ln.endswith(("...", "…")) for ln in lines) / len(lines) > c["max_ellipsis_lines_ratio"]:
            return False, "gopher_ellipsis_lines"
        # Gopher: "80% of words in a document contain at least one alphabetic character"
        if len(alpha) / n < c["max_non_alpha_words_ratio"]:
            return False, "gopher_below_alpha_threshold"
        if sum(w.lower().strip(".,;:!?\"'()") in STOP_WORDS for w in words) < c["min_stop_words"]:
            return False, "gopher_enough_stop_words"
        return True


_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.I)


class C4Filter(BaseFilter):
    """C4 (Raffel et al. 2020, section 2.2) without the terminal-punctuation line rule, as FineWeb.

    Line rules edit the text (drop lines with < 3 words, javascript or policy lines, too-long words);
    document rules drop it (lorem ipsum, curly brace, < 5 sentences after line cleaning).
    """

    name = "⛰ C4"

    def __init__(self, min_words_per_line=3, max_word_length=1000, min_num_sentences=5, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_words_per_line, self.max_word_length, self.min_sents = min_words_per_line, max_word_length, min_num_sentences

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        low = doc.text.lower()
        if "lorem ipsum" in low:
            return False, "c4_lorem_ipsum"
        if "{" in doc.text:
            return False, "c4_curly_bracket"
        kept = []
        for line in doc.text.split("\n"):
            line = _CITATION_RE.sub("", line).strip()
            words = line.split()
            if len(words) < self.min_words_per_line or max(len(w) for w in words) > self.max_word_length:
                continue
            ll = line.lower()
            if "javascript" in ll or any(p in ll for p in _POLICY):
                continue
            kept.append(line)
        text = "\n".join(kept)
        if len(_SENT_RE.findall(text)) < self.min_sents:
            return False, "c4_too_few_sentences"
        doc.text = text
        return True


class FineWebFilter(BaseFilter):
    """FineWeb's own rules (Penedo et al. 2024, section 3.3), datatrove's default thresholds."""

    name = "🍷 FineWeb"

    def __init__(self, line_punct_thr=0.12, short_line_thr=0.67, short_line_length=30, char_duplicates_ratio=0.01,
                 new_line_ratio=0.3, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.t = (line_punct_thr, short_line_thr, short_line_length, char_duplicates_ratio, new_line_ratio)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        punct, short_thr, short_len, dup_thr, nl_thr = self.t
        lines = [ln for ln in doc.text.split("\n") if ln.strip()]
        if not lines:
            return False, "empty"
        if sum(ln.endswith(TERMINAL_PUNCT) for ln in lines) / len(lines) < punct:
            return False, "line_punct_ratio"
        if sum(len(ln) <= short_len for ln in lines) / len(lines) > short_thr:
            return False, "short_line_ratio"
        if _dup_stats(lines)[1] / max(1, len(doc.text.replace("\n", ""))) > dup_thr:
            return False, "char_dup_ratio"
        if doc.text.count("\n") / max(1, len(doc.text.split())) > nl_thr:
            return False, "list_ratio"
        return True


# ----------------------------------------------------------------------------- dedup signatures

def normalize_for_hash(text: str) -> str:
    return " ".join(_WORD_RE.findall(text.lower()))


def exact_hash(text: str) -> int:
    """64-bit hash of the normalized text (lowercase words): formatting-only differences collide."""
    return int.from_bytes(hashlib.blake2b(normalize_for_hash(text).encode(), digest_size=8).digest(), "little")


@lru_cache(maxsize=4)
def _perms(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)  # odd
    b = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def minhash_signature(text: str, n_gram: int = 5, num_perm: int = 112, seed: int = 1) -> np.ndarray:
    """(num_perm,) uint32 MinHash of the set of word n-grams (Broder 1997).

    Words are hashed with crc32 (deterministic across processes, unlike ``hash``), n-grams combined
    with the polynomial key of ``_ngram_keys`` and cut to 32 bits; permutation j is the
    multiply-shift hash h -> (a_j h + b_j) mod 2^64 >> 32 (Dietzfelbinger et al. 1997).
    """
    words = _WORD_RE.findall(text.lower())
    wh = np.array([zlib.crc32(w.encode()) + 1 for w in words] or [0], dtype=np.uint64)  # (L,) word hashes
    h = np.unique(_ngram_keys(wh, min(n_gram, len(wh))) >> np.uint64(32))  # (S,) distinct 32-bit shingles
    a, b = _perms(num_perm, seed)
    with np.errstate(over="ignore"):
        phv = (h[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)  # (S, P) multiply-shift hashes
    return phv.min(axis=0).astype(np.uint32)


class Signatures(PipelineStep):
    """Writes (id, exact hash, MinHash) of every document to ``<folder>/<rank>.npz`` for the dedup stage."""

    name = "🔏 Signatures"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, num_perm: int, n_gram: int):
        super().__init__()
        self.folder, self.num_perm, self.n_gram = folder, num_perm, n_gram

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        ids, hashes, sigs = [], [], []
        for doc in data:
            with self.track_time():
                ids.append(doc.id)
                hashes.append(exact_hash(doc.text))
                sigs.append(minhash_signature(doc.text, self.n_gram, self.num_perm))
            yield doc
        os.makedirs(self.folder, exist_ok=True)
        tmp = os.path.join(self.folder, f".{rank:05d}.tmp.npz")
        np.savez(tmp, ids=np.array(ids, dtype=object), hashes=np.array(hashes, dtype=np.uint64),
                 sigs=np.array(sigs, dtype=np.uint32).reshape(len(sigs), self.num_perm))
        os.replace(tmp, os.path.join(self.folder, f"{rank:05d}.npz"))


def find_duplicates(ids: list[str], hashes: np.ndarray, sigs: np.ndarray, bands: int, rows: int,
                    exact: bool = True, near: bool = True) -> dict[str, str]:
    """Global dedup: doc id -> "exact duplicate" | "near duplicate" for every doc to drop.

    Keeps the smallest id of each group. Exact: identical normalized-text hash. Near: LSH with
    ``bands`` x ``rows`` (Jaccard threshold ~ (1/bands)^(1/rows) = 0.72 for 14x8); candidate pairs
    are unioned into clusters (union-find), like datatrove's MinhashDedupCluster.
    """
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    drop: dict[str, str] = {}
    alive = []
    if exact:
        first: dict[int, int] = {}
        for i in order:
            if int(hashes[i]) in first:
                drop[ids[i]] = "exact duplicate"
            else:
                first[int(hashes[i])] = i
                alive.append(i)
    else:
        alive = order
    if not near or not alive:
        return drop
    parent = {i: i for i in alive}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for band in range(bands):
        buckets: dict[bytes, int] = {}
        for i in alive:  # sorted by id, so the first member of a bucket is its smallest
            key = sigs[i, band * rows:(band + 1) * rows].tobytes()
            j = buckets.setdefault(key, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:  # the root is the member with the smaller id
                    if ids[ri] < ids[rj]:
                        parent[rj] = ri
                    else:
                        parent[ri] = rj
    for i in alive:
        if find(i) != i:
            drop[ids[i]] = "near duplicate"
    return drop


class DropIds(BaseFilter):
    """Drops the documents the dedup stage marked (id -> reason in a JSON file)."""

    name = "🫂 Dedup filter"

    def __init__(self, path: str, reason: str, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.path, self.reason, self._drop = path, reason, None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._drop is None:
            with open(self.path) as f:
                self._drop = json.load(f)
        return (False, self.reason) if self._drop.get(doc.id) == self.reason else True


# ----------------------------------------------------------------------------- PII, tokens, tally

class PIIStep(PIIFormatter):
    """datatrove's PII rules (emails, public IPs only); records how many docs were changed."""

    name = "📞 PII"

    def __init__(self, emails: bool, ips: bool):
        super().__init__(remove_emails=emails, remove_ips=ips, only_remove_public_ips=True,
                         email_replacement="<EMAIL>", ip_replacement="<IP>")

    def format(self, text: str) -> str:
        new = super().format(text)
        if new != text:
            self.stat_update("anonymized")
            self._last_changed = True
        return new

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self._last_changed = False
            doc.text = self.format(doc.text)
            doc.metadata["pii_replaced"] = self._last_changed
            yield doc


def approx_token_count(text: str) -> int:
    """Without a tokenizer: words + punctuation marks (BPE on English gives ~1.3 tokens/word)."""
    return len(_TOKEN_RE.findall(text))


class TokenCount(PipelineStep):
    """Sets ``metadata["token_count"]`` with chatforge's tokenizer (a directory) or the approximation."""

    name = "🔢 Token count"
    type = "🔢 - TOKENIZER"

    def __init__(self, tokenizer_dir: str = "", batch_size: int = 256):
        super().__init__()
        self.tokenizer_dir, self.batch_size = tokenizer_dir, batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        tok = None
        if self.tokenizer_dir:
            from chatforge.tokenizer import Tokenizer
            tok = Tokenizer.load(self.tokenizer_dir)
        batch: list[Document] = []

        def flush() -> Iterator[Document]:
            counts = ([len(x) for x in tok.encode_batch([d.text for d in batch])] if tok is not None
                      else [approx_token_count(d.text) for d in batch])
            for d, n in zip(batch, counts):
                d.metadata["token_count"] = n
                self.stat_update("tokens", value=n)
                yield d
            batch.clear()
        for doc in data:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                yield from flush()
        yield from flush()


class Tally(PipelineStep):
    """Counts documents, characters and tokens flowing past this point (one row of the funnel)."""

    type = "📊 - TALLY"

    def __init__(self, after: str):
        self.name = after  # before super().__init__(): the stats are named from it
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("docs")
            self.stat_update("chars", value=len(doc.text))
            self.stat_update("tokens", value=int(doc.metadata.get("token_count", 0)))
            yield doc
