"""The synthetic crawl: deterministic, a real WARC, every planted problem labelled."""
import gzip
import json
from collections import Counter

import pytest

from chatforge.common import CfError
from chatforge.data.crawl import demo_docs, make_crawl, render_page


def test_make_crawl_is_deterministic_and_labelled(tmp_path):
    docs = demo_docs(50, seed=1)
    w1, l1 = make_crawl(docs, tmp_path / "a", seed=3)
    w2, l2 = make_crawl(docs, tmp_path / "b", seed=3)
    assert l1.read_text() == l2.read_text()
    assert w1.read_bytes() == w2.read_bytes()  # fixed WARC-Date, record ids from the URL
    assert b"<html" in gzip.decompress(w1.read_bytes())
    labels = [json.loads(x) for x in l1.read_text().splitlines()]
    counts = Counter(x["label"] for x in labels)
    for lab in ("clean", "exact_dup", "near_dup", "spam", "non_english", "pii", "blocklisted", "junk"):
        assert counts[lab] > 0, lab
    assert len({x["url"] for x in labels}) == len(labels)  # URLs identify records

    from warcio.archiveiterator import ArchiveIterator
    with open(w1, "rb") as f:
        urls = [r.rec_headers.get_header("WARC-Target-URI") for r in ArchiveIterator(f) if r.rec_type == "response"]
    assert set(urls) == {x["url"] for x in labels}


def test_page_has_boilerplate_and_content():
    import random
    html = render_page("A title\nFirst paragraph here.\nSecond one.", "site", random.Random(0))
    assert "<nav>" in html and "<footer>" in html and "<p>Second one.</p>" in html
    assert "<h1>A title</h1>" in html and "<p>A title</p>" not in html  # the title is not a duplicated line


def test_bad_docs_raise(tmp_path):
    with pytest.raises(CfError):
        make_crawl([], tmp_path)
    with pytest.raises(CfError):
        make_crawl([{"id": 1}], tmp_path)
