"""The web UI in headless Chromium (Debian's chromium + Playwright) at 1280 px and at a phone's 390 px:
chat with streaming and tool parts, per-tab model pickers, the chat's default stage, the playground's
token candidates, the tokenizer page (no U+FFFD), an arena vote, a long chat on a phone that is
trimmed, not broken, and the internals viewer and the report card at both widths. Screenshots go to
$CHATFORGE_SCREENSHOTS (default: the test's tmp dir).
Skips without Chromium."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from serve_helpers import LiveServer, scripted, tiny_model, tiny_tokenizer, tool_script

from chatforge.assistant.tools import ToolBox
from chatforge.common import save_figure
from chatforge.report import update_results
from chatforge.serve.server import create_app

CHROMIUM = os.environ.get("CHATFORGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DONE = "document.getElementById('chat-status').textContent.match(/^(done|not sent)/)"


def chat_turn(page, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_function(DONE)
    assert page.inner_text("#chat-status").startswith("done"), page.inner_text("#chat-status")


def fits(page, selector: str, width: int) -> bool:
    box = page.locator(selector).bounding_box()
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    run = tmp_path_factory.mktemp("run")
    update_results(run, "rl", {"conditions": {"grpo": {"rate": 0.6}, "sft": {"rate": 0.4}},
                               "diffs": {"grpo - sft": {"delta": 0.2, "ci": [0.05, 0.35]}}})
    tok = tiny_tokenizer()
    app = create_app({"base": (tiny_model("llama", 0), tok), "sft": (tiny_model("gpt2", 1), tok),
                      "rl": (tiny_model("llama", 2), tok)}, run_dir=run, tools=ToolBox())
    srv = LiveServer(app)
    shots = Path(os.environ.get("CHATFORGE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield srv, browser, run, shots, app
        browser.close()
    srv.stop()


def open_page(ui, width: int, height: int):
    srv, browser = ui[0], ui[1]
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60000)     # the CI box is shared; waits end as soon as the UI is ready
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(srv.url + "/")
    page.wait_for_function("document.querySelectorAll('#chat-model option').length === 3")
    return page, errors


def test_desktop_chat_tools_pickers_playground_tokenizer_arena(ui):
    srv, _, run, shots, app = ui
    page, errors = open_page(ui, 1280, 800)
    assert page.input_value("#chat-model") == "rl"            # RL beat SFT in results.json
    assert page.input_value("#pg-model") == "base"

    # chat: the model's calculator call runs on the server and shows as readable blocks, no control text
    b = app.state.served["rl"].batcher
    real = b.sample_next
    b.sample_next = scripted(tool_script(tiny_tokenizer()), [])
    page.fill("#system", "Be brief.")
    page.fill("#temperature", "1")
    chat_turn(page, "What is 12*7?")
    assert page.inner_text(".msg.user") == "What is 12*7?"
    assert page.inner_text(".tool.tool_call") == "calculator: 12*7" and page.inner_text(".tool.tool_output") == "→ 84"
    assert "<|" not in page.inner_text("#messages")
    b.sample_next = real
    page.fill("#temperature", "0")
    chat_turn(page, "Thanks")                                  # the reply with parts goes back as history
    assert page.locator(".msg.assistant").count() == 2
    page.screenshot(path=str(shots / "chat-1280.png"))

    # playground: its own picker (base), each generated token shows its top candidates
    page.click("button[data-tab=playground]")
    page.fill("#pg-prompt", "Once upon a time")
    page.fill("#pg-max", "6")
    page.click("#pg-go")
    page.wait_for_function("document.querySelectorAll('#pg-out .tok:not(.prompt)').length >= 1")
    page.click("#pg-out .tok:not(.prompt)")
    assert page.locator(".cands tr").count() == 1 + 5 and "%" in page.inner_text("#pg-detail")
    assert "\ufffd" not in page.inner_text("#pg-out") + page.inner_text("#pg-detail")
    assert page.input_value("#chat-model") == "rl"              # the chat's choice did not move

    # tokenizer: coloured tokens and ids; partial UTF-8 bytes as \xNN, never U+FFFD
    tok = tiny_tokenizer()
    page.click("button[data-tab=tokenizer]")
    page.fill("#tok-text", "Hello 😀 world!")
    page.click("#tok-go")
    page.wait_for_function("document.getElementById('tok-count').textContent.includes('tokens')")
    ids = tok.encode("Hello 😀 world!")
    assert page.inner_text("#tok-count").startswith(f"{len(ids)} tokens")
    assert page.locator("#tok-out .tok").count() == len(ids) and json.loads(page.inner_text("#tok-ids")) == ids
    shown = page.inner_text("#tok-out")
    assert "\ufffd" not in shown and "\\x" in shown and page.locator("#tok-out .partial").count() >= 2
    assert "😀" in page.locator("#tok-out .partial").first.get_attribute("title")
    page.screenshot(path=str(shots / "tokenizer-1280.png"))

    # arena: two anonymous answers, a vote, the models revealed, the leaderboard on disk
    page.click("button[data-tab=arena]")
    page.fill("#arena-prompt", "Say hi")
    page.click("#arena-go")
    page.wait_for_selector(".vote[data-winner=a]:not([disabled])")
    page.click(".vote[data-winner=a]")
    page.wait_for_function("document.getElementById('arena-status').textContent === 'vote recorded'")
    page.wait_for_function("document.querySelectorAll('#leaderboard tbody tr').length === 3")
    assert "Model A: " in page.inner_text("#arena-a-name")
    votes = json.loads((run / "arena" / "votes.json").read_text())
    assert len(votes) == 1 and votes[0]["winner"] == "a"
    assert errors == []
    page.close()


def test_phone_width_long_chat_is_trimmed_and_usable(ui):
    shots = ui[3]
    page, errors = open_page(ui, 390, 844)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390     # nothing wider than the screen
    assert not page.locator("#settings").evaluate("d => d.open")           # settings folded on a phone
    assert page.locator("#prompt").bounding_box()["width"] >= 200
    assert fits(page, "#send", 390) and fits(page, "#stop", 390) and fits(page, "#prompt", 390)
    page.click("#settings summary")
    page.fill("#max_tokens", "8")
    page.select_option("#chat-model", "sft")
    page.click("#settings summary")
    page.fill("#prompt", "fox " * 300)                      # cannot fit at all: shown, not kept, not fatal
    page.click("#send")
    page.wait_for_function(DONE)
    assert page.inner_text("#chat-status").startswith("not sent") and "context length" in page.inner_text(".msg.error")
    assert page.locator(".msg.not-sent").count() == 1
    for turn in range(20):                                  # the 96-token context fills after a few turns
        chat_turn(page, f"turn {turn}: tell me about the quick brown fox")
    assert page.locator(".msg.assistant:not(.error)").count() == 20
    assert "oldest messages no longer fit" in page.inner_text("#chat-status")
    assert page.locator(".msg.out-of-context").count() >= 10
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(shots / "chat-390.png"))
    page.click("button[data-tab=tokenizer]")
    assert fits(page, "#tok-go", 390) and fits(page, "#tok-model", 390)
    page.click("button[data-tab=arena]")
    page.screenshot(path=str(shots / "arena-390.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert errors == []
    page.close()


# ----------------------------------------------------------------------------- internals and report card

def write_report(run_dir: Path) -> None:
    """A small report card: a heading with a long path, a table, a figure from report/ and one from
    elsewhere (not served)."""
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [3, 1, 2])
    save_figure(fig, run_dir / "report" / "curve.png")
    (run_dir / "report.md").write_text("# chatforge report card\n\n### Data report: /tmp/" + "a_long_folder_name/" * 4 +
                                       "crawl.warc.gz\n\n## Stage times\n\n| stage | seconds |\n|---|---:|\n"
                                       "| world | 0.1 |\n| pretrain | 19.8 |\n\n![loss](report/curve.png)\n"
                                       "![secret](../secret.png)\n")


def check_internals(page) -> None:
    """Open the internals of a prompt: shapes, a lens table (layers x positions), a heatmap on canvas."""
    page.click("button[data-tab=internals]")
    page.select_option("#in-model", "sft")
    page.fill("#in-text", "What is 12*7?")
    page.click("#in-go")
    page.wait_for_function("document.getElementById('in-status').textContent.includes('tokens')")
    n = len(tiny_tokenizer().render_for_completion({"messages": [{"role": "user", "content": "What is 12*7?"}]}))
    assert page.inner_text("#in-status").startswith(f"{n} tokens, 2 layers")
    assert page.locator("#in-lens tr").count() == 1 + 3                       # header + embedding + 2 blocks
    assert page.locator("#in-lens tr:nth-child(2) td").count() == n
    assert page.locator("#in-answer-p tr").count() == 3 and "%" in page.inner_text("#in-answer-p")
    page.click("#in-lens td.lcell >> nth=-1")
    assert page.locator("#in-lens-detail .cands tr").count() == 5
    assert page.locator("#in-layer option").count() == 2 and page.locator("#in-head option").count() == 2
    page.select_option("#in-layer", index=1)                                    # layer 2
    blue = page.evaluate("""() => { const c = document.getElementById('in-att'), x = c.getContext('2d');
        const d = x.getImageData(0, 0, c.width, c.height).data; let k = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 2] > d[i] + 20) k++; return [c.width, k]; }""")
    assert blue[0] > 100 and blue[1] > 100                                      # the map is drawn in blue


def check_report(page) -> None:
    page.click("button[data-tab=report]")
    page.wait_for_function("document.querySelectorAll('#report table').length === 1")
    assert page.inner_text("#report h1") == "chatforge report card"
    assert page.locator("#report tbody tr").count() == 2 and "19.8" in page.inner_text("#report table")
    assert page.locator("#report img").count() == 1                             # ../secret.png is not served
    assert page.evaluate("document.querySelector('#report img').naturalWidth") > 100


@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_internals_and_report_pages(ui, width, height):
    srv, _, run, shots, _ = ui
    write_report(run)
    page, errors = open_page(ui, width, height)
    check_internals(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= width    # lens and heatmap scroll inside
    page.screenshot(path=str(shots / f"internals-{width}.png"), full_page=True)
    check_report(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= width    # long paths wrap
    page.screenshot(path=str(shots / f"report-{width}.png"), full_page=True)
    page.goto(srv.url + "/report")                                              # its own address opens its tab
    page.wait_for_function("document.querySelectorAll('#report table').length === 1")
    assert page.locator("#tab-report.active").count() == 1
    assert errors == []
    page.close()
