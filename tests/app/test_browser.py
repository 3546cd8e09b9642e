"""The explorer in a real browser: Debian's Chromium, driven headless by Playwright.

Set ``HYPERCOLUMNS_SCREENSHOTS=DIR`` to keep screenshots of the page (docs/explore.md).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from hypercolumns.app.state import Explorer

pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no Chromium on PATH (apt-get install -y chromium; CI does)"
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(explorer: Explorer) -> Iterator[str]:
    from hypercolumns.app.page import launch

    page, url = launch(explorer, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url
    finally:
        page.close()


def status_of(page: Any) -> str:
    return str(page.locator("#hc-status textarea").input_value())


def wait_status(page: Any, old: str) -> str:
    page.wait_for_function(
        "old => document.querySelector('#hc-status textarea').value !== old", arg=old,
        timeout=60_000,
    )  # fmt: skip
    return status_of(page)


def test_upload_click_and_see_status_and_receptive_fields(served: str, tmp_path: Path) -> None:
    shots = os.environ.get("HYPERCOLUMNS_SCREENSHOTS")
    picture = tmp_path / "stripes.png"
    Image.new("RGB", (150, 100), (30, 120, 200)).save(picture)
    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on(
            "request",
            lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else outside.append(r.url),
        )  # fmt: skip
        page.goto(served)
        page.wait_for_selector("#hc-image img", timeout=60_000)
        for element in ("hc-image", "hc-rf", "hc-similarity", "hc-target", "hc-status"):
            assert page.locator(f"#{element}").is_visible(), element
        assert "astronaut.jpg 224x224" in status_of(page)

        old = status_of(page)
        page.locator("#hc-upload").locator("xpath=..").locator("input[type=file]").set_input_files(
            str(picture)
        )
        assert wait_status(page, old) == "stripes.png 224x336: click a pixel"

        old, rf_before = status_of(page), page.locator("#hc-rf img").count()
        image = page.locator("#hc-image img")
        box = image.bounding_box()
        assert box is not None
        image.click(position={"x": box["width"] * 0.25, "y": box["height"] * 0.5})
        line = wait_status(page, old)
        assert line.startswith("pixel (y=")
        assert "of the 224x336 image; 3 unit (" in line
        page.wait_for_selector("#hc-rf img", timeout=30_000)
        assert rf_before == 0
        assert page.locator("#hc-rf img").get_attribute("src")
        assert "29 unit" in page.locator("#hc-rf-legend").inner_text()
        if shots:
            page.wait_for_selector("#hc-erf img", timeout=60_000)
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(shots) / "explore.png"), full_page=True)

        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        old = status_of(page)
        page.locator("#hc-upload").locator("xpath=..").locator("input[type=file]").set_input_files(
            str(bad)
        )
        assert "error: 'notes.png' is not an image" in wait_status(page, old)
        browser.close()
    assert outside == [], "the page fetched assets from the internet"
