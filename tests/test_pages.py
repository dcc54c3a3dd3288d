"""The reading pages of the server: the markdown subset of the report card, figures confined to
report/, the report and internals endpoints (with the API key)."""
from __future__ import annotations

import pytest

from chatforge.serve.pages import figure_uri, markdown_html, report_page
from serve_helpers import LiveServer, tiny_model, tiny_tokenizer
from test_server import KEY, call


def test_markdown_subset():
    md = ("# Title\n\nSome **bold** and `x<y` text,\ncontinued.\n\n- one\n- two `c`\n\n"
          "| a | b |\n|---|---:|\n| 1 | 2.5 |\n| <script> | [x](https://example.org) |\n\n"
          "```\ncode <b>\n```\n<!-- arena -->\n![fig](report/f.png)\n")
    out = markdown_html(md, lambda src: "data:image/png;base64,AA" if src == "report/f.png" else None)
    assert "<h1>Title</h1>" in out
    assert "<p>Some <strong>bold</strong> and <code>x&lt;y</code> text, continued.</p>" in out
    assert "<ul><li>one</li><li>two <code>c</code></li></ul>" in out
    assert '<th>a</th><th>b</th>' in out and '<td style="text-align:right">2.5</td>' in out
    assert "&lt;script&gt;" in out and "<script>" not in out
    assert '<a href="https://example.org">x</a>' in out
    assert "<pre>code &lt;b&gt;</pre>" in out and "arena" not in out
    assert '<img alt="fig" src="data:image/png;base64,AA">' in out
    assert "[fig: figure missing]" in markdown_html("![fig](report/f.png)")


def test_figures_only_from_report_folder(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "a.png").write_bytes(b"\x89PNG....")
    (tmp_path / "b.png").write_bytes(b"\x89PNG....")
    (tmp_path / "report" / "c.txt").write_text("x")
    assert figure_uri(tmp_path, "report/a.png").startswith("data:image/png;base64,")
    for src in ("b.png", "report/../b.png", "report/c.txt", "report/missing.png", "/etc/passwd", "report/"):
        assert figure_uri(tmp_path, src) is None, src
    assert "No report yet" in report_page(tmp_path)["html"] and report_page(None)["path"] is None


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from chatforge.serve.server import create_app
    run = tmp_path_factory.mktemp("run")
    (run / "report.md").write_text("# card\n\n| a |\n|---|\n| 1 |\n")
    s = LiveServer(create_app({"sft": (tiny_model("gpt2", 1), tiny_tokenizer())}, run_dir=run, api_key=KEY))
    yield s
    s.stop()


def test_report_endpoint_and_page(srv):
    status, body = call(srv, "GET", "/v1/report")
    assert status == 200 and body["html"].startswith("<h1>card</h1>") and body["markdown"].startswith("# card")
    assert call(srv, "GET", "/v1/report", key=None)[0] == 401
    status, page = call(srv, "GET", "/report", key=None)
    assert status == 200 and 'id="tab-report"' in page


def test_internals_endpoint(srv):
    status, body = call(srv, "POST", "/v1/internals", {"model": "sft", "text": "Hello world", "answer": "!"})
    tok = tiny_tokenizer()
    assert status == 200, body
    assert body["model"] == "sft" and len(body["tokens"]) == 1 + len(tok.encode("Hello world"))
    assert body["answer"]["id"] == tok.encode("!")[0] and len(body["answer"]["p"]) == 3
    assert body["lens_vs_logits_max_abs_diff"] < 1e-5
    status, body = call(srv, "POST", "/v1/internals", {"model": "sft", "text": "Hi", "chat": True})
    assert status == 200 and body["tokens"][-1]["text"] == "<|assistant_start|>"
    status, body = call(srv, "POST", "/v1/internals", {"model": "nope", "text": "Hi"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = call(srv, "POST", "/v1/internals", {"model": "sft", "text": "Hello world! " * 60})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    status, body = call(srv, "POST", "/v1/internals", {"model": "sft", "text": "Hi", "top_k": 99})
    assert status == 400 and body["error"]["param"] == "top_k"
