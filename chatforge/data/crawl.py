"""Web crawls: read them (``CrawlReader``), and make synthetic ones with ground truth.

``CrawlReader`` is the pipeline's datatrove reader for every input format; it skips bad records
(truncated gzip, non-HTTP records, binary or undecodable bodies, empty pages) and counts each
reason, so one bad record never stops a run.

``make_crawl(docs, out_dir, seed)`` renders clean documents ({"id", "text"}) as HTML pages with
navigation, sidebar and footer boilerplate, and plants the things a web pipeline must remove or fix:

    exact_dup     the same page again under another URL                 -> exact dedup
    near_dup      a copy with ~2% of words changed and a line appended  -> MinHash dedup
    spam          keyword-stuffed pages and link farms                  -> Gopher / C4 / FineWeb rules
    non_english   French, German, Spanish, Italian pages                -> language filter
    pii           a clean page with an email address and a public IP    -> kept, anonymized
    blocklisted   a clean page on a UT1-blocklisted domain              -> URL filter
    junk          records a reader must skip: image, empty page, non-HTTP record

It writes ``crawl.warc.gz`` (a real WARC via warcio; one response record per page, originals
before their copies so "keep the first" is well defined) and ``labels.jsonl`` ({"url", "label",
"source_id"}). ``chatforge data eval`` scores every filter's precision and recall against it.
"""
from __future__ import annotations

import gzip
import io
import json
import random
import re
import tarfile
import uuid
import zlib
from pathlib import Path
from typing import Iterator

from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseDiskReader
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from chatforge.common import atomic_path, atomic_write_text, CfError
from chatforge.data.filters import DATATROVE_ASSETS




# ----------------------------------------------------------------------------- reading crawls

def decode_body(body: bytes, declared: str | None) -> tuple[str | None, str]:
    """Bytes of a page -> (text, "") or (None, reason). Declared charset first, then UTF-8, then detection."""
    if not body or not body.strip():
        return None, "empty body"
    if b"\x00" in body[:4096]:
        return None, "binary body"
    # strict UTF-8 first: it almost never decodes non-UTF-8 bytes by accident, while a wrong
    # declared single-byte charset (a common server error) "succeeds" with mojibake
    for enc in ["utf-8"] + ([declared] if declared else []):
        try:
            return body.decode(enc), ""
        except (UnicodeDecodeError, LookupError):
            continue
    text = bytes_to_str(body, detect_encoding(body))
    if text.count("\ufffd") > 0.05 * max(1, len(text)):
        return None, "undecodable body"
    return text, ""


_CHARSET_RE = re.compile(r"charset=[\"']?([\w.:-]+)", re.I)
_HTML_TYPES = ("text/html", "application/xhtml", "text/plain", "")


class CrawlReader(BaseDiskReader):
    """Every input format -> Documents. Bad records are skipped and counted as ``skip:<reason>``.

    html documents carry ``metadata["format"] = "html"``; text ones ``"text"`` (the extractor passes them).
    Ids are ``<file>/<index:08d>`` so that sorting ids sorts documents in crawl order (dedup keeps the first).
    """
    name = "📖 CrawlReader"

    def __init__(self, data_folder, glob_pattern: str | None = None, limit: int = -1):
        super().__init__(data_folder, glob_pattern=glob_pattern, limit=limit, recursive=True)

    def _skip_record(self, reason: str) -> None:
        self.stat_update(f"skip:{reason}")

    def read_file(self, filepath: str) -> Iterator[Document]:
        name = filepath.lower()
        try:
            if name.endswith((".warc", ".warc.gz", ".arc", ".arc.gz", ".wet", ".wet.gz")):
                yield from self._read_warc(filepath)
            elif name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".json")):
                yield from self._read_jsonl(filepath)
            elif name.endswith(".parquet"):
                yield from self._read_parquet(filepath)
            elif name.endswith((".html", ".htm", ".html.gz", ".htm.gz")):
                raw = self._open_bytes(filepath)
                text, why = decode_body(raw, None)
                if text is None:
                    self._skip_record(why)
                else:
                    yield self._doc(text, filepath, 0, "html", url=f"file:///{filepath}")
            elif name.endswith((".txt", ".txt.gz")):
                text, why = decode_body(self._open_bytes(filepath), "utf-8")
                if text is None:
                    self._skip_record(why)
                else:
                    yield self._doc(text, filepath, 0, "text", url=f"file:///{filepath}")
            else:
                self._skip_record("unknown file type")
        except (OSError, EOFError, ValueError, gzip.BadGzipFile) as e:  # truncated gzip, corrupt file
            self._skip_record(f"corrupt file ({type(e).__name__})")

    def _open_bytes(self, filepath: str) -> bytes:
        with self.data_folder.open(filepath, "rb") as f:
            raw = f.read()
        return gzip.decompress(raw) if filepath.endswith(".gz") else raw

    def _doc(self, text: str, filepath: str, idx: int, fmt: str, **meta) -> Document:
        return Document(text=text, id=f"{filepath}/{idx:08d}", metadata={"format": fmt, **meta})

    def _gzip_truncated(self, filepath: str) -> bool:
        """warcio stops quietly at a cut gzip stream; check every gzip member ends (zlib, ~300 MB/s)."""
        with self.data_folder.open(filepath, "rb") as f:
            d, started = zlib.decompressobj(16 + zlib.MAX_WBITS), False
            while chunk := f.read(1 << 20):
                data = chunk
                while data:
                    started = True
                    try:
                        d.decompress(data, 1 << 20)
                    except zlib.error:
                        return True
                    data = d.unconsumed_tail
                    if d.eof:  # a WARC.gz is one gzip member per record
                        data, started = d.unused_data, False
                        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return started
        return False

    def _read_warc(self, filepath: str) -> Iterator[Document]:
        if filepath.lower().endswith(".gz") and self._gzip_truncated(filepath):
            # the last record may be cut: keep all but the last
            self._skip_record("truncated file (last record dropped)")
            docs = list(self._read_warc_records(filepath))
            yield from docs[:-1]
            return
        yield from self._read_warc_records(filepath)

    def _read_warc_records(self, filepath: str) -> Iterator[Document]:
        with self.data_folder.open(filepath, "rb") as f:
            it = iter(ArchiveIterator(f, arc2warc=True))
            idx = 0
            while True:
                try:
                    record = next(it)
                    kind = record.rec_type
                    if kind not in ("response", "conversion", "resource"):
                        self._skip_record(f"{kind} record")
                        continue
                    url = record.rec_headers.get_header("WARC-Target-URI") or ""
                    date = record.rec_headers.get_header("WARC-Date") or ""
                    ctype = ""
                    if kind == "response":
                        if record.http_headers is None:
                            self._skip_record("response without HTTP headers")
                            continue
                        ctype = (record.http_headers.get_header("Content-Type") or "").lower()
                    body = record.content_stream().read()
                except StopIteration:
                    return
                except Exception as e:  # noqa: BLE001  truncated gzip, bad chunking, bad headers
                    self._skip_record(f"corrupt record ({type(e).__name__})")
                    return  # a broken stream cannot be resynchronized
                idx += 1
                if kind == "response" and ctype.split(";")[0].strip() not in _HTML_TYPES:
                    self._skip_record("not html")
                    continue
                m = _CHARSET_RE.search(ctype)
                text, why = decode_body(body, m.group(1) if m else None)
                if text is None:
                    self._skip_record(why)
                    continue
                fmt = "text" if kind == "conversion" or ctype.startswith("text/plain") else "html"
                yield self._doc(text, filepath, idx, fmt, url=url, timestamp=date)

    def _read_jsonl(self, filepath: str) -> Iterator[Document]:
        with self.data_folder.open(filepath, "rb") as f:
            raw = f.read()
        if filepath.endswith(".gz"):
            raw = gzip.decompress(raw)
        for i, line in enumerate(io.BytesIO(raw)):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if not isinstance(d, dict):  # e.g. a bare list: a bad record, skipped and counted
                    raise ValueError
                html = d.get("html")
                text = html if isinstance(html, str) else d.get("text")
                if not isinstance(text, str):
                    raise ValueError
            except ValueError:
                self._skip_record("bad JSON line")
                continue
            meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
            yield self._doc(text, filepath, i, "html" if isinstance(html, str) else "text",
                            url=d.get("url") or meta.get("url") or f"file:///{filepath}#{i}",
                            timestamp=d.get("timestamp") or meta.get("timestamp") or "",
                            source_id=str(d.get("id", "")))

    def _read_parquet(self, filepath: str) -> Iterator[Document]:
        try:
            import pyarrow.parquet as pq  # lazy: optional dependency, only for parquet input
        except ImportError:
            raise ValueError("parquet input needs `pip install pyarrow`") from None
        with self.data_folder.open(filepath, "rb") as f:
            table = pq.read_table(f)
        for i, d in enumerate(table.to_pylist()):
            html = d.get("html")
            text = html if isinstance(html, str) else d.get("text")
            if not isinstance(text, str):
                self._skip_record("row without text")
                continue
            yield self._doc(text, filepath, i, "html" if isinstance(html, str) else "text",
                            url=d.get("url") or f"file:///{filepath}#{i}", timestamp=str(d.get("timestamp") or ""))


# ----------------------------------------------------------------------------- making crawls

_NAV = ["Home", "News", "Blog", "About", "Contact", "Archive", "Shop", "Help", "Events", "Careers"]
_SITES = ["meadowlark", "riverbend", "oakridge", "stonebridge", "foxglove", "harborview", "pinecrest",
          "silverleaf", "brightwater", "elmstead", "copperfield", "larkspur"]

_FOREIGN = {
    "fr": "Le petit village se trouve au bord de la rivière et les habitants aiment se promener le soir. "
          "Nous avons visité le marché où les fermiers vendent des légumes frais et du fromage. "
          "La bibliothèque municipale propose aussi des ateliers pour les enfants chaque mercredi. "
          "Il faut réserver sa place à l'avance parce que les cours sont souvent complets. "
          "Selon le maire, la nouvelle école sera construite près de la gare avant la fin de l'année.",
    "de": "Das kleine Dorf liegt am Ufer des Flusses und die Bewohner gehen abends gern spazieren. "
          "Wir haben den Markt besucht, auf dem die Bauern frisches Gemüse und Käse verkaufen. "
          "Die Stadtbibliothek bietet außerdem jeden Mittwoch Kurse für Kinder an. "
          "Man muss sich rechtzeitig anmelden, weil die Plätze oft schnell vergeben sind. "
          "Nach Angaben des Bürgermeisters wird die neue Schule noch in diesem Jahr neben dem Bahnhof gebaut.",
    "es": "El pequeño pueblo está a orillas del río y a los vecinos les gusta pasear por la tarde. "
          "Visitamos el mercado donde los agricultores venden verduras frescas y queso. "
          "La biblioteca municipal también ofrece talleres para los niños todos los miércoles. "
          "Hay que reservar la plaza con antelación porque los cursos suelen estar completos. "
          "Según el alcalde, la nueva escuela se construirá junto a la estación antes de fin de año.",
    "it": "Il piccolo paese si trova sulla riva del fiume e gli abitanti amano passeggiare la sera. "
          "Abbiamo visitato il mercato dove i contadini vendono verdure fresche e formaggio. "
          "La biblioteca comunale offre anche laboratori per i bambini ogni mercoledì. "
          "Bisogna prenotare il posto in anticipo perché i corsi sono spesso pieni. "
          "Secondo il sindaco, la nuova scuola sarà costruita vicino alla stazione entro la fine dell'anno.",
}
_SPAM_WORDS = ["cheap", "best", "price", "buy", "discount", "watches", "online", "deal", "free", "shipping",
               "replica", "sale", "top", "offer", "casino", "bonus", "win", "now"]


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_page(text: str, site: str, rng: random.Random, lang: str = "en") -> str:
    """A page: header nav, article (one <p> per paragraph/line), sidebar links, footer with policy links.

    A short first line without final punctuation is the document's own title: it becomes the <h1>
    (and is not repeated as a paragraph, which would plant a duplicated line); otherwise the <h1>
    is a section name.
    """
    paras = [p.strip() for p in text.replace("\r", "").split("\n") if p.strip()]
    if paras and len(paras[0].split()) <= 12 and not paras[0].endswith((".", "!", "?")):
        title, paras = paras[0], paras[1:]
    else:
        title = rng.choice(["Articles", "Stories", "Notes", "Features", "Reports"])
    nav = "".join(f'<li><a href="/{n.lower()}">{n}</a></li>' for n in rng.sample(_NAV, 6))
    side = "".join(f'<li><a href="/post/{rng.randrange(10**5)}">{rng.choice(_NAV)} {rng.randrange(100)}</a></li>'
                   for _ in range(5))
    body = "".join(f"<p>{_escape(p)}</p>\n" for p in paras)
    return (f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8"><title>{_escape(title)} | {site}</title>'
            f'<script>var analytics = {{"id": {rng.randrange(10**6)}}};</script></head>\n<body>\n'
            f'<header><div class="logo">{site.title()}</div><nav><ul>{nav}</ul></nav></header>\n'
            f'<main><article><h1>{_escape(title)}</h1>\n{body}</article></main>\n'
            f'<aside><h3>Popular posts</h3><ul>{side}</ul></aside>\n'
            f'<footer><p>&copy; 2024 {site.title()} Media. All rights reserved.</p>'
            f'<p><a href="/privacy">Privacy policy</a> | <a href="/terms">Terms of use</a> | '
            f'This site uses cookies.</p></footer>\n</body></html>\n')


def _near_copy(text: str, rng: random.Random) -> str:
    """~2% of words swapped for a neighbour's word, plus one appended sentence."""
    lines = text.split("\n")
    out = []
    for line in lines:
        words = line.split(" ")
        for _ in range(max(0, len(words) // 50)):
            i = rng.randrange(len(words))
            words[i] = words[rng.randrange(len(words))]
        out.append(" ".join(words))
    return "\n".join(out) + "\nUpdated: this article was revised with minor corrections."


def _spam(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:  # keyword stuffing: the same handful of phrases over and over
        kw = rng.sample(_SPAM_WORDS, 5)
        line = " ".join(kw) + " " + " ".join(rng.sample(kw, 3)) + "!"
        return "\n".join([line] * rng.randint(15, 30))
    # link farm / tag cloud: many short lines, no sentences
    return "\n".join(" ".join(rng.sample(_SPAM_WORDS, 2)) for _ in range(rng.randint(40, 80)))


def _foreign(rng: random.Random) -> tuple[str, str]:
    lang = rng.choice(sorted(_FOREIGN))
    sents = _FOREIGN[lang].split(". ")
    paras = [". ".join(rng.sample(sents, len(sents))).rstrip(".") + "." for _ in range(rng.randint(3, 5))]
    return lang, "\n".join(paras)


def ut1_sample_domains(n: int = 2000) -> list[str]:
    """The first n domains of the UT1 blocklist (in file order: deterministic, no 4.5M-entry sort)."""
    with tarfile.open(DATATROVE_ASSETS / "url_filterblacklistsv0_3_0.tar.gz") as tf:
        f = tf.extractfile("domains")
        assert f is not None
        out = []
        for line in io.TextIOWrapper(f, encoding="utf-8", errors="replace"):
            d = line.strip()
            if d and not d.startswith("#"):
                out.append(d)
            if len(out) >= n:
                break
    return out


_NAMES = ["Ada", "Bram", "Cleo", "Dev", "Elin", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lev", "Mona",
          "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tove", "Umar", "Vera", "Wim", "Yara", "Zoe"]
_NOUNS = ["bridge", "garden", "library", "orchard", "harbor", "workshop", "observatory", "bakery", "mill", "school",
          "chapel", "market", "lighthouse", "canal", "station", "museum", "theatre", "farm", "quarry", "tower",
          "clinic", "ferry", "forge", "granary", "pier", "vineyard", "kiln", "archive", "greenhouse", "tunnel"]
_VERBS = ["repaired", "painted", "designed", "visited", "measured", "described", "restored", "mapped", "photographed",
          "cleaned", "rebuilt", "studied", "sold", "inherited", "protected", "opened", "closed", "extended",
          "surveyed", "sketched", "insured", "moved", "renamed", "guarded"]
_ADJS = ["old", "quiet", "narrow", "famous", "busy", "small", "bright", "wooden", "northern", "crowded", "damp",
         "tall", "crooked", "modern", "forgotten", "sunny", "windy", "elegant", "plain", "ancient"]
_PPS = ["near the {n}", "in {y}", "after {k} days", "before the storm", "with help from {a}", "behind the {n}",
        "for almost {k} years", "during the festival", "at dawn", "without any plan", "on a cold morning",
        "across from the {j} {n}", "under a new roof", "despite the rain", "for the first time"]
_TAILS = ["", "", ", and {a} {v} the {n} soon after", " because the {n} needed it",
          ", although {a} disagreed", " while {a} kept notes", ", so the {j} {n} reopened",
          " until {k} neighbours complained", ", which surprised {a}"]


def _sentence(rng: random.Random) -> str:
    f = dict(a=rng.choice(_NAMES), n=rng.choice(_NOUNS), j=rng.choice(_ADJS), v=rng.choice(_VERBS),
             k=rng.randint(2, 99), y=rng.randint(1850, 2024))
    subj = rng.choice(["{a}", "The {j} {n}", "{a} and " + rng.choice(_NAMES), "A team from the {n}",
                       "Our neighbour {a}", "The owner of the {n}"]).format(**f)
    f.update(n=rng.choice(_NOUNS), j=rng.choice(_ADJS))
    obj = rng.choice(["the {j} {n}", "{k} rooms of the {n}", "a part of the {n}", "the {n} itself",
                      "every {j} window"]).format(**f)
    f.update(a=rng.choice(_NAMES), n=rng.choice(_NOUNS), v=rng.choice(_VERBS), k=rng.randint(2, 99))
    pp = rng.choice(_PPS).format(**f)
    f.update(n=rng.choice(_NOUNS), j=rng.choice(_ADJS))
    return f"{subj} {f['v'] if rng.random() < 0.3 else rng.choice(_VERBS)} {obj} {pp}{rng.choice(_TAILS).format(**f)}."


def demo_docs(n: int, seed: int = 0) -> list[dict]:
    """n distinct English documents (3-5 paragraphs) for tests, benchmarks and demos.

    Sentences are composed from small word lists (subject, verb, object, phrase, clause), so two
    documents rarely share a 5-gram: unrelated demo documents do not look like near-duplicates.
    """
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        paras = [" ".join(_sentence(rng) for _ in range(rng.randint(3, 5))) for _ in range(rng.randint(3, 5))]
        docs.append({"id": f"demo-{i}", "text": "\n".join(paras)})
    return docs


# warcio stamps each record with the wall-clock time and a random uuid4; both end up in the curated
# documents' metadata, so the same seed would give different files. A fixed date and a record id
# derived from the (unique) URL keep the crawl byte-identical for a given (docs, seed).
CRAWL_DATE = "2024-01-01T00:00:00Z"


def _fixed_warc_headers(url: str) -> dict[str, str]:
    return {"WARC-Date": CRAWL_DATE, "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"}


def make_crawl(docs: list[dict], out_dir: str | Path, seed: int = 0, frac_exact: float = 0.06,
               frac_near: float = 0.06, frac_spam: float = 0.06, frac_foreign: float = 0.06,
               frac_pii: float = 0.06, frac_blocklisted: float = 0.04, junk: bool = True) -> tuple[Path, Path]:
    """Render ``docs`` as a crawl with planted problems; returns (warc.gz path, labels.jsonl path).

    Fractions are relative to len(docs). Byte-identical for a given (docs, seed).
    """
    if not docs:
        raise CfError("make_crawl: docs is empty; expected a list of {'id', 'text'} documents")
    for i, d in enumerate(docs[:5]):
        if not isinstance(d, dict) or not isinstance(d.get("text"), str):
            raise CfError(f"make_crawl: docs[{i}] must be a dict with a 'text' string")
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    n = len(docs)
    blocked = ut1_sample_domains() if frac_blocklisted > 0 else []
    pages: list[tuple[str, str, str, str, str]] = []  # (url, html, label, source_id, content_type)

    def url_for(i: int, site: str | None = None) -> str:
        site = site or f"{rng.choice(_SITES)}-{rng.randrange(100)}.example.com"
        return f"https://{site}/articles/{i:06d}-{rng.randrange(10**6):06d}.html"

    n_pii = int(frac_pii * n)
    n_block = int(frac_blocklisted * n)
    originals = []
    for i, d in enumerate(docs):
        text = d["text"]
        label = "clean"
        site = None
        if i < n_pii:  # PII: an email and a public IP in the middle of a clean page
            user = rng.choice(["john.smith", "maria.k", "support", "dr.lee"])
            ip = f"{rng.randint(23, 90)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
            lines = text.split("\n")
            lines.insert(max(2, len(lines) // 2), f"For questions write to {user}@mailbox{i}.net or reach our server at {ip} directly.")
            text, label = "\n".join(lines), "pii"
        elif i < n_pii + n_block and blocked:
            site, label = rng.choice(blocked), "blocklisted"
        url = url_for(i, site)
        html = render_page(text, site or url.split("/")[2].split(".")[0], rng)
        pages.append((url, html, label, str(d.get("id", i)), "text/html; charset=utf-8"))
        if label == "clean":
            originals.append((url, text, html, str(d.get("id", i))))
    # copies come after all originals, so the original is always the first occurrence
    pick = rng.sample(originals, min(len(originals), int(frac_exact * n) + int(frac_near * n)))
    n_ex = min(len(pick), int(frac_exact * n))
    for j, (url, text, html, sid) in enumerate(pick):
        if j < n_ex:
            pages.append((url_for(n + j), html, "exact_dup", sid, "text/html; charset=utf-8"))
        else:
            near = _near_copy(text, rng)
            pages.append((url_for(n + j), render_page(near, "mirror", rng), "near_dup", sid,
                          "text/html; charset=utf-8"))
    for j in range(int(frac_spam * n)):
        s = _spam(rng)
        pages.append((url_for(2 * n + j), render_page(s, "deals", rng), "spam", "", "text/html"))
    for j in range(int(frac_foreign * n)):
        lang, s = _foreign(rng)
        pages.append((url_for(3 * n + j), render_page(s, "journal", rng, lang), "non_english", lang,
                      "text/html; charset=utf-8"))
    with atomic_path(out_dir / "crawl.warc.gz") as tmp:
        with open(tmp, "wb") as f:
            w = WARCWriter(f, gzip=True)
            for url, html, label, sid, ctype in pages:
                body = html.encode("utf-8")
                http = StatusAndHeaders("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))],
                                        protocol="HTTP/1.1")
                w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                                    warc_headers_dict=_fixed_warc_headers(url)))
            if junk:  # records a reader must skip, each counted with its reason
                http = StatusAndHeaders("200 OK", [("Content-Type", "image/png")], protocol="HTTP/1.1")
                url = "https://junk.example.com/logo.png"
                w.write_record(w.create_warc_record(url, "response", http_headers=http,
                                                    payload=io.BytesIO(b"\x89PNG\r\n\x1a\n\x00\x00"),
                                                    warc_headers_dict=_fixed_warc_headers(url)))
                http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
                url = "https://junk.example.com/empty.html"
                w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(b""), http_headers=http,
                                                    warc_headers_dict=_fixed_warc_headers(url)))
                url = "https://junk.example.com/meta"
                w.write_record(w.create_warc_record(url, "metadata", payload=io.BytesIO(b"fetchTimeMs: 12\n"),
                                                    warc_content_type="application/warc-fields",
                                                    warc_headers_dict=_fixed_warc_headers(url)))
    labels = [{"url": u, "label": lab, "source_id": sid} for u, _, lab, sid, _ in pages]
    if junk:
        labels += [{"url": "https://junk.example.com/logo.png", "label": "junk", "source_id": ""},
                   {"url": "https://junk.example.com/empty.html", "label": "junk", "source_id": ""}]
    atomic_write_text(out_dir / "labels.jsonl", "".join(json.dumps(x) + "\n" for x in labels))
    return out_dir / "crawl.warc.gz", out_dir / "labels.jsonl"
