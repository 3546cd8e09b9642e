"""Time of one click in ``hypercolumns explore``: the status line, the receptive-field boxes
drawn on the image and the hypercolumn profile, then the similarity view (the cosine
similarity to every pixel, from the kept maps, drawn as a heat map) and the correspondence
in a second image (the photo mirrored); the ERF, measured after them, is timed apart. VGG-16
(random weights, seed 0) on the bundled 224x224 photo, layers 3, 8, 15, 22, 29, as the app's
default.

    uv run python benchmarks/explore.py [--clicks 50] [--threads 2]

Prints one JSON line: the median and 90th percentile of a click in ms, and the one-time costs
(opening the image: planning and the layers' maps; the ERF of the deepest layer's unit).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

# benchmarks/hypercolumns.py would shadow the package when this runs as a script
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hypercolumns import demo
    from hypercolumns.app import handlers
    from hypercolumns.app.state import Explorer

    model, weights = demo.load_demo_model(note=lambda _: None)
    explorer = Explorer(
        model, demo.MODEL, weights=weights, images=[demo.image_path()],
        layers=list(demo.RF_LAYERS),
    )  # fmt: skip
    start = time.perf_counter()
    state = explorer.open(demo.image_path())
    opened = time.perf_counter() - start
    h, w = state.size
    rng = random.Random(0)
    flipped = state.explorer.show(state.x.flip(-1), state.pixels.flip(-1), "mirrored")
    with_target = state.with_target(flipped)
    handlers.click(state, h // 2, w // 2)  # warm up
    handlers.similarity_image(state, h // 2, w // 2)
    times, sims, both = [], [], []
    for _ in range(args.clicks):
        y, x = rng.randrange(h), rng.randrange(w)
        t = time.perf_counter()
        handlers.click(state, y, x)
        times.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        handlers.similarity_image(state, y, x)
        sims.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        handlers.similarity_image(with_target, y, x)
        handlers.target_image(with_target, y, x)
        both.append((time.perf_counter() - t) * 1000)
    total = sorted(a + b for a, b in zip(times, sims, strict=True))
    total2 = sorted(a + b for a, b in zip(times, both, strict=True))
    t = time.perf_counter()
    handlers.erf_image(state, h // 2, w // 2)
    erf_s = time.perf_counter() - t
    times.sort()
    sims.sort()

    def p90(v: list[float]) -> float:
        return round(v[int(0.9 * (len(v) - 1))], 1)

    print(
        json.dumps(
            {
                "model": demo.MODEL,
                "size": [h, w],
                "layers": [layer.name for layer in state.layers],
                "threads": torch.get_num_threads(),
                "clicks": args.clicks,
                "click_ms_median": round(statistics.median(times), 1),
                "click_ms_p90": p90(times),
                "similarity_ms_median": round(statistics.median(sims), 1),
                "click_with_similarity_ms_median": round(statistics.median(total), 1),
                "click_with_similarity_ms_p90": p90(total),
                "click_with_correspondence_ms_median": round(statistics.median(total2), 1),
                "click_with_correspondence_ms_p90": p90(total2),
                "open_s": round(opened, 2),
                "erf_s": round(erf_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
