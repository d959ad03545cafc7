"""The ``cvt serve`` page in a real headless browser: Debian's Chromium driven by Playwright (no browser download).

Upload a real photo through the page's file input, wait for the top-5 bars and the attention overlay, and check
that the browser logged no console error and no failed request; then the keyboard and phone-width basics.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.serve

from test_serve import serve, tiny_weights  # noqa: E402, F401 - the fixture is used by name
from test_transforms import photo_paths  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_page_shows_top5_and_overlay_without_console_errors(tmp_path: Path, tiny_weights, browser):  # noqa: F811
    with serve(tmp_path, tiny_weights, "--max-wait-ms", "5") as server:
        page = browser.new_page(viewport={"width": 375, "height": 740})  # a phone's width
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.on("response", lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
        # listened for from the start: Playwright turns file-chooser interception on when the first listener is
        # added, and a key pressed before the browser has applied it opens no interceptable chooser (a flaky test)
        choosers: list = []
        page.on("filechooser", lambda chooser: choosers.append(chooser))
        page.goto(f"http://127.0.0.1:{server.port}/")
        sync_api.expect(page.locator("#model-info")).to_contain_text("cvt-tiny", timeout=WAIT_MS)
        assert page.get_by_label("Drop an image here, or choose one").count() == 1  # the input has its label

        page.set_input_files("#file", str(photo_paths()["chelsea.png"]))
        items = page.locator("#topk li")
        sync_api.expect(items).to_have_count(5, timeout=WAIT_MS)
        overlay = page.locator("#overlay")
        page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=WAIT_MS)
        assert overlay.evaluate("img => img.naturalWidth") == 224
        expected = server.predict(photo_paths()["chelsea.png"].read_bytes())[1]
        assert expected["labels"][0] in items.first.inner_text()
        widths = items.locator(".bar").evaluate_all("bars => bars.map(b => parseFloat(b.style.width))")
        assert widths == sorted(widths, reverse=True) and widths[0] > 0
        assert page.locator("#results").get_attribute("aria-live") == "polite"
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling on a phone

        page.focus("#drop-zone")  # the drop zone is reachable and opens the picker from the keyboard
        page.keyboard.press("Enter")
        for _ in range(WAIT_MS // 100):
            if choosers:
                break
            page.wait_for_timeout(100)
        assert choosers, "Enter on the drop zone opened no file chooser"
        choosers[0].set_files(str(photo_paths()["coffee.png"]))
        sync_api.expect(page.locator("#status")).to_contain_text("coffee.png: class_", timeout=WAIT_MS)
        assert "error" not in (page.locator("#status").get_attribute("class") or "")
        assert problems == []
        page.close()
