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
if CHROMIUM is None and os.environ.get("CI"):  # never skipped in CI: .ci/run installs it
    raise RuntimeError("CI is set but no Chromium is on PATH: .ci/run should have installed it")
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


def drag(
    page: Any, box: dict[str, float], start: tuple[float, float], end: tuple[float, float]
) -> None:
    """A mouse stroke from ``start`` to ``end`` (``(x, y)`` from the centre of ``box``)."""
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx + start[0], cy + start[1])
    page.mouse.down()
    for k in range(1, 13):
        t = k / 12
        page.mouse.move(
            cx + start[0] + (end[0] - start[0]) * t, cy + start[1] + (end[1] - start[1]) * t
        )
    page.mouse.up()


def test_click_scribble_upload_in_a_browser(served: str, tmp_path: Path) -> None:
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
        assert "astronaut.jpg 64x64" in status_of(page)

        # a click: status, receptive fields, and the similarity view
        old = status_of(page)
        assert page.locator("#hc-rf img").count() == 0
        assert page.locator("#hc-similarity img").count() == 0
        image = page.locator("#hc-image img")
        box = image.bounding_box()
        assert box is not None
        image.click(position={"x": box["width"] * 0.25, "y": box["height"] * 0.5})
        line = wait_status(page, old)
        assert line.startswith("pixel (y=")
        assert "of the 64x64 image; 3 unit (" in line
        page.wait_for_selector("#hc-rf img", timeout=30_000)
        assert "29 unit" in page.locator("#hc-rf-legend").inner_text()
        page.wait_for_selector("#hc-similarity img", timeout=30_000)
        first = page.locator("#hc-similarity img").get_attribute("src")
        assert first
        image.click(position={"x": box["width"] * 0.75, "y": box["height"] * 0.25})
        page.wait_for_function(
            "old => { const i = document.querySelector('#hc-similarity img');"
            " return i && i.getAttribute('src') !== old; }", arg=first, timeout=30_000,
        )  # fmt: skip

        # scribbles of two colours, a probe, its segmentation
        page.get_by_role("tab", name="Scribble segmentation").click()
        canvas = page.locator("#hc-scribble .pixi-target canvas")
        canvas.wait_for(timeout=30_000)
        canvas.scroll_into_view_if_needed()  # the mouse moves in the viewport's coordinates
        area = canvas.bounding_box()
        assert area is not None
        drag(page, area, (-150, -160), (150, -160))  # red (the first colour) across the top
        page.locator("#hc-scribble").get_by_role("button", name="Color").click()
        page.locator("#hc-scribble menu.swatch button.color").nth(1).click()  # blue
        page.locator("#hc-scribble").get_by_role("button", name="Brush", exact=True).click()
        drag(page, area, (-150, 150), (150, 150))  # across the bottom
        old = status_of(page)
        page.get_by_role("button", name="Fit probe and segment").click()
        line = wait_status(page, old)
        assert "classes red, blue" in line, line
        page.wait_for_selector("#hc-segmentation img", timeout=60_000)
        probe = page.locator("#hc-probe").inner_text().replace("\n", "")
        assert "scribble-probe.safetensors" in probe
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(shots) / "explore.png"), full_page=True)

        old = status_of(page)
        page.locator("#hc-upload").locator("xpath=..").locator("input[type=file]").set_input_files(
            str(picture)
        )
        assert wait_status(page, old) == "stripes.png 64x96: click a pixel"
        # the dropdown says which image is shown (it said the first one offered)
        page.wait_for_function(
            "() => document.querySelector('#hc-pick input').value === 'uploaded: stripes.png'",
            timeout=30_000,
        )

        # a second image uploaded: compared, and named in its dropdown (which said "none")
        assert page.locator("#hc-target-pick input").input_value() == "none"
        old = status_of(page)
        page.locator("#hc-target-upload").locator("xpath=..").locator(
            "input[type=file]"
        ).set_input_files(str(picture))
        assert wait_status(page, old) == "second image: stripes.png 64x96"
        page.wait_for_function(
            "() => document.querySelector('#hc-target-pick input').value"
            " === 'uploaded: stripes.png'",
            timeout=30_000,
        )
        if shots:
            page.screenshot(path=str(Path(shots) / "uploads.png"), full_page=True)

        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        old = status_of(page)
        page.locator("#hc-upload").locator("xpath=..").locator("input[type=file]").set_input_files(
            str(bad)
        )
        assert "error: 'notes.png' is not an image" in wait_status(page, old)
        browser.close()
    assert outside == [], "the page fetched assets from the internet"
