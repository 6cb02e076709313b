"""The chat page at ``GET /``: self-contained, and working end to end in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request

import pytest

from gptlab.data.chat_format import PlainChat
from gptlab.serve.engine import wait_until


def _chromium() -> str | None:
    """The system Chromium (Debian's ``chromium``; ``scripts/setup.sh --dev`` installs it)."""
    for name in (os.environ.get("GPTLAB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_page_is_self_contained(server):
    with urllib.request.urlopen(server.url + "/", timeout=30) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
        page = resp.read().decode()
    assert "<textarea" in page and 'id="stop"' in page and 'id="temperature"' in page and 'id="max-tokens"' in page
    # No external assets: no script/style/image loaded from anywhere else.
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page)
    assert "@import" not in page and "<script src" not in page


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine: scripts/setup.sh --dev installs Debian's chromium with apt-get")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: tests run as root (CI too), where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_chat_in_chromium(browser, slow_server, model, gpt2_tok, tmp_path):
    """Type a message, watch the answer stream in, take a screenshot; then stop a long answer midway."""
    page = browser.new_page()
    try:
        page.goto(slow_server.url + "/")
        # Without the server's API key the page shows the server's error.
        page.fill("#input", "Hello there")
        page.press("#input", "Enter")
        page.wait_for_selector(".error")
        assert "Incorrect API key" in page.inner_text(".error")
        page.click("#reset")
        page.fill("#api-key", "sk-slow-key")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "12")
        # Count how often the answer bubble changes while it streams.
        page.evaluate("""() => {
            window.__updates = 0;
            new MutationObserver(() => { window.__updates++; })
                .observe(document.getElementById('log'), {subtree: true, characterData: true, childList: true});
        }""")
        page.fill("#input", "Hello there")
        page.press("#input", "Enter")
        page.wait_for_selector(".assistant.streaming")
        page.wait_for_selector(".assistant:not(.streaming)", timeout=30_000)
        answer = page.inner_text(".assistant")
        prompt = gpt2_tok.encode(PlainChat().format_chat([{"role": "user", "content": "Hello there"}]))
        expected = gpt2_tok.decode(model.generate(prompt, 12))
        for stop in PlainChat.stop:
            expected = expected.split(stop)[0]
        assert answer.strip() == expected.strip() and answer.strip()
        assert page.evaluate("window.__updates") >= 4  # bubbles added, then text arriving in pieces
        assert page.inner_text(".user") == "Hello there"
        shot = tmp_path / "chat.png"
        if os.environ.get("GPTLAB_KEEP_SCREENSHOT"):
            shot = __import__("pathlib").Path(os.environ["GPTLAB_KEEP_SCREENSHOT"])
        page.screenshot(path=str(shot), full_page=True)
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000

        # A long answer, stopped after a few pieces: the page stops and the server frees the slot.
        page.click("#reset")
        page.fill("#max-tokens", "80")
        page.fill("#input", "Tell me more")
        page.click("#send")
        page.wait_for_function("document.querySelector('.assistant.streaming')?.textContent.length > 5")
        assert page.is_enabled("#stop") and not page.is_enabled("#send")
        page.click("#stop")
        page.wait_for_selector(".assistant:not(.streaming)")
        assert page.is_enabled("#send") and not page.is_enabled("#stop")
        engine = slow_server.engine
        assert wait_until(lambda: engine.stats()["active"] == 0 and engine.stats()["cancelled"] == 1, 10)
        assert engine.stats()["tokens_generated"] < 12 + 60
        assert page.evaluate("conversation.length") == 2  # the question and the partial answer

        # A long answer no longer fits after the earlier exchange: the page drops it and asks again.
        page.fill("#max-tokens", "88")
        page.fill("#input", "again")
        page.click("#send")
        page.wait_for_function("document.querySelector('.assistant.streaming')?.textContent.length > 0")
        page.click("#stop")
        page.wait_for_selector(".assistant:not(.streaming)")
        assert page.query_selector(".error") is None
        roles = page.evaluate("conversation.map((m) => m.role + ':' + (m.role === 'user' ? m.content : ''))")
        assert roles == ["user:again", "assistant:"]
    finally:
        page.close()
