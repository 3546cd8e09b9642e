"""Make docs/images/explore.png: the explorer on the bundled photo (VGG-16, the demo's
weights), a second image (the photo mirrored), one click, and scribbles of three classes.

    uv run --extra app python docs/images/explore_screenshot.py [OUT.png]

Needs Chromium on PATH and Playwright (the dev group).
"""

from __future__ import annotations

import itertools
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from hypercolumns import demo
from hypercolumns.app.page import launch
from hypercolumns.app.state import Explorer


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("explore.png"))
    model, weights = demo.load_demo_model(note=lambda _: None)
    explorer = Explorer(
        model, demo.MODEL, weights=weights, images=[demo.image_path()],
        layers=list(demo.RF_LAYERS),
    )  # fmt: skip
    second = Path(tempfile.mkdtemp()) / "astronaut-mirrored.png"
    with Image.open(demo.image_path()) as img:
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(second)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    page_, url = launch(explorer, port=port, block=False, quiet=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.wait_for_selector("#hc-image img", timeout=120_000)
            upload = page.locator("#hc-target-upload").locator("xpath=..")
            upload.locator("input[type=file]").set_input_files(str(second))
            page.wait_for_function(
                "() => document.querySelector('#hc-status textarea').value"
                ".startsWith('second image')", timeout=120_000,
            )  # fmt: skip
            image = page.locator("#hc-image img")
            box = image.bounding_box()
            assert box is not None
            # the mission patch on the suit's left side
            image.click(position={"x": box["width"] * 0.40, "y": box["height"] * 0.78})
            page.wait_for_selector("#hc-target img", timeout=120_000)
            page.wait_for_selector("#hc-erf img", timeout=120_000)

            page.get_by_role("tab", name="Scribble segmentation").click()
            canvas = page.locator("#hc-scribble .pixi-target canvas")
            canvas.wait_for(timeout=60_000)
            canvas.scroll_into_view_if_needed()
            area = canvas.bounding_box()
            assert area is not None
            cx, cy = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
            side = min(area["width"], area["height"]) * 0.9  # the photo's size on screen

            def stroke(points: list[tuple[float, float]]) -> None:
                """A stroke through ``points`` (fractions of the photo, (x, y))."""
                xy = [(cx + (u - 0.5) * side, cy + (v - 0.5) * side) for u, v in points]
                page.mouse.move(*xy[0])
                page.mouse.down()
                for (x0, y0), (x1, y1) in itertools.pairwise(xy):
                    for k in range(1, 9):
                        page.mouse.move(x0 + (x1 - x0) * k / 8, y0 + (y1 - y0) * k / 8)
                page.mouse.up()

            def colour(k: int) -> None:
                page.locator("#hc-scribble").get_by_role("button", name="Color").click()
                page.locator("#hc-scribble menu.swatch button.color").nth(k).click()
                page.locator("#hc-scribble").get_by_role("button", name="Brush", exact=True).click()

            stroke([(0.62, 0.08), (0.80, 0.12), (0.92, 0.35), (0.75, 0.45)])  # red: background
            stroke([(0.05, 0.1), (0.1, 0.45)])
            colour(1)  # blue: the suit
            stroke([(0.15, 0.85), (0.35, 0.7), (0.55, 0.95)])
            stroke([(0.3, 0.55), (0.45, 0.6)])
            colour(2)  # green: the face and hair
            stroke([(0.40, 0.20), (0.48, 0.30), (0.52, 0.22)])
            colour(3)  # yellow: the helmet
            stroke([(0.80, 0.80), (0.9, 0.9)])
            page.wait_for_timeout(1000)
            page.get_by_role("button", name="Fit probe and segment").click()
            page.wait_for_selector("#hc-segmentation img", timeout=180_000)
            page.wait_for_timeout(1000)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        page_.close()
    print(out)


if __name__ == "__main__":
    main()
