"""The web UI's reading pages: the run's report card (/report) and the internals viewer (/v1/internals).

Kept apart from server.py's chat routes: ``add_page_routes(app, ...)`` adds them to the app
``server.create_app`` builds. The report is rendered server-side by a deliberately small markdown
subset (the one ``report.md`` uses: headings, paragraphs, lists, tables, code, images), so no markdown
dependency is needed; figures are inlined as data: URIs so they pass the same API-key check as the text.
"""
from __future__ import annotations

import asyncio
import base64
import html
import re
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from chatforge.model.inspect import answer_token, internals, prompt_ids

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
MAX_INTERNALS_TEXT = 20_000     # characters; the token count is checked against the context as well


# ----------------------------------------------------------------------------- minimal markdown

def _inline(s: str, image: Callable[[str], str | None]) -> str:
    """Escape, then `code`, **bold**, ![alt](src) (only figures ``image`` resolves) and http(s) links."""
    parts = re.split(r"(`[^`]*`)", s)
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) >= 2:
            out.append(f"<code>{html.escape(p[1:-1])}</code>")
            continue
        p = html.escape(p, quote=False)
        p = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", p)

        def img(m: re.Match) -> str:
            src = image(html.unescape(m.group(2)))
            return f'<img alt="{html.escape(m.group(1))}" src="{src}">' if src else f"[{m.group(1)}: figure missing]"
        p = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", img, p)
        p = re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r'<a href="\2">\1</a>', p)
        out.append(p)
    return "".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_html(md: str, image: Callable[[str], str | None] = lambda src: None) -> str:
    """The markdown subset of report.md as HTML; ``image(src)`` gives an image's URL (None: not shown)."""
    lines = md.splitlines()
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append("<p>" + " ".join(_inline(x, image) for x in para) + "</p>")
            para.clear()
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        if not s or (s.startswith("<!--") and s.endswith("-->")):
            flush()
        elif m := re.match(r"(#{1,6})\s+(.*)", s):
            flush()
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2), image)}</h{n}>")
        elif s.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|?[\s:|-]+\|?", lines[i + 1].strip()):
            flush()
            head = _cells(s)
            align = ["right" if c.endswith(":") else "left" for c in _cells(lines[i + 1])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            th = "".join(f"<th>{_inline(c, image)}</th>" for c in head)
            body = "".join("<tr>" + "".join(f'<td style="text-align:{align[k] if k < len(align) else "left"}">'
                                            f"{_inline(c, image)}</td>" for k, c in enumerate(r)) + "</tr>" for r in rows)
            out.append(f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>')
            continue
        elif re.match(r"[-*]\s+", s):
            flush()
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append("<li>" + _inline(re.sub(r"^\s*[-*]\s+", "", lines[i]), image) + "</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        else:
            para.append(s)
        i += 1
    flush()
    return "\n".join(out)


def figure_uri(run_dir: Path, src: str) -> str | None:
    """A figure of ``<run>/report/`` as a data: URI; anything else (other folders, "..", URLs) is not shown."""
    folder = (run_dir / "report").resolve()
    p = (run_dir / src).resolve()
    if p.parent != folder or p.suffix.lower() not in IMAGE_TYPES or not p.is_file():
        return None
    return f"data:{IMAGE_TYPES[p.suffix.lower()]};base64," + base64.b64encode(p.read_bytes()).decode()


def report_page(run_dir: Path | None) -> dict[str, Any]:
    """{"path", "markdown", "html"} of ``<run>/report.md`` (empty with a message when there is none)."""
    path = run_dir / "report.md" if run_dir is not None else None
    if path is None or not path.is_file():
        return {"path": str(path) if path else None, "markdown": "",
                "html": "<p>No report yet: this server's run directory has no report.md "
                        "(run <code>chatforge speedrun</code>, or serve with <code>--run DIR</code>).</p>"}
    md = path.read_text(encoding="utf-8", errors="replace")
    return {"path": str(path), "markdown": md, "html": markdown_html(md, lambda src: figure_uri(run_dir, src))}


# ----------------------------------------------------------------------------- routes

class InternalsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=200)
    text: str = Field(min_length=1, max_length=MAX_INTERNALS_TEXT)
    chat: bool = Field(False, description="render the text as a user message (chat models)")
    answer: str = Field("", max_length=200, description="follow this answer's first token (default: the top-1)")
    top_k: int = Field(5, ge=1, le=20)


def add_page_routes(app: FastAPI, get_model: Callable[[str], Any], run_dir: Path | None, api_error: type,
                    index_html: Path, responses: dict) -> None:
    """POST /v1/internals, GET /v1/report, and /report (the web UI, opened on its report tab)."""

    @app.post("/v1/internals", responses=responses)
    async def inspect_prompt(body: InternalsRequest) -> dict:
        """Logit lens, attention maps, residual norms and tensor shapes of one prompt (chatforge.inspect)."""
        s = get_model(body.model)
        ids = prompt_ids(s.tokenizer, body.text, body.chat)
        if len(ids) > s.model.config.seq_len:
            raise api_error(400, f"The prompt is {len(ids)} tokens; this model's context is {s.model.config.seq_len}.",
                            "text", "context_length_exceeded")
        obj = await asyncio.to_thread(internals, s.model, s.tokenizer, ids, body.top_k,
                                      answer_token(s.tokenizer, body.answer))
        return {"model": body.model, **obj}

    @app.get("/v1/report", responses=responses)
    async def report() -> dict:
        return await asyncio.to_thread(report_page, Path(run_dir) if run_dir is not None else None)

    @app.get("/report", include_in_schema=False)
    async def report_ui() -> FileResponse:
        return FileResponse(index_html)
