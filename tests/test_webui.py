"""The web UI in headless Chromium (Debian's chromium + Playwright): chat with streaming, the
playground's token candidates, the tokenizer page, and an arena vote. Skips without Chromium."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from serve_helpers import LiveServer, tiny_model, tiny_tokenizer

CHROMIUM = os.environ.get("CHATFORGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_web_ui_chat_playground_tokenizer_arena(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from chatforge.serve.server import create_app
    tok = tiny_tokenizer()
    srv = LiveServer(create_app({"base": (tiny_model("llama", 0), tok), "sft": (tiny_model("gpt2", 1), tok)},
                                run_dir=tmp_path))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.set_default_timeout(60000)     # the CI box is shared; waits end as soon as the UI is ready
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            chunks: list[str] = []
            page.on("response", lambda r: chunks.append(r.url) if "/v1/chat/completions" in r.url else None)
            page.goto(srv.url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 2")
            assert page.input_value("#model") == "sft"          # chat picks the most finished stage

            # chat: a streamed answer appears and the status says done
            page.fill("#system", "Be brief.")
            page.fill("#prompt", "What is 12*7?")
            page.click("#send")
            page.wait_for_function("document.getElementById('chat-status').textContent.startsWith('done')"
                                   " || document.querySelector('.msg.error')")
            assert page.query_selector(".msg.error") is None
            assert page.inner_text(".msg.user") == "What is 12*7?"
            assert len(page.inner_text(".msg.assistant")) > 0 and chunks

            # playground: each generated token shows its top candidates with probabilities
            page.click("button[data-tab=playground]")
            page.select_option("#model", "base")
            page.fill("#pg-prompt", "Once upon a time")
            page.fill("#pg-max", "6")
            page.click("#pg-go")
            page.wait_for_function("document.querySelectorAll('#pg-out .tok:not(.prompt)').length >= 1")
            page.click("#pg-out .tok:not(.prompt)")
            assert page.locator(".cands tr").count() == 1 + 5 and "%" in page.inner_text("#pg-detail")

            # tokenizer: coloured tokens, ids and counts
            page.click("button[data-tab=tokenizer]")
            page.fill("#tok-text", "Hello world!")
            page.click("#tok-go")
            page.wait_for_function("document.getElementById('tok-count').textContent.includes('tokens')")
            n = len(tok.encode("Hello world!"))
            assert page.inner_text("#tok-count").startswith(f"{n} tokens")
            assert page.locator("#tok-out .tok").count() == n
            assert json.loads(page.inner_text("#tok-ids")) == tok.encode("Hello world!")

            # arena: two anonymous answers, a vote, the models revealed, the leaderboard on disk
            page.click("button[data-tab=arena]")
            page.fill("#arena-prompt", "Say hi")
            page.click("#arena-go")
            page.wait_for_selector(".vote[data-winner=a]:not([disabled])")
            page.click(".vote[data-winner=a]")
            page.wait_for_function("document.getElementById('arena-status').textContent === 'vote recorded'")
            page.wait_for_function("document.querySelectorAll('#leaderboard tbody tr').length === 2")
            assert "Model A: " in page.inner_text("#arena-a-name")
            browser.close()
            assert errors == []
        votes = json.loads((tmp_path / "arena" / "votes.json").read_text())
        assert len(votes) == 1 and votes[0]["winner"] == "a"
    finally:
        srv.stop()
