"""Sweep timm: analyse one model per architecture module and check it against gradients.

For every module of ``timm.list_modules()`` the smallest model by parameter count (``test_*``
models excluded when the module has others) is built with ``pretrained=False`` and analysed
by :func:`hypercolumns.rf.layers.layers` at 224x224. The receptive field of its last spatial
layer is then checked against an independent measurement from input gradients
(:mod:`hypercolumns.rf.groundtruth`):

* ``local`` layers (a finite receptive field): size, stride and centre of unit 0 must agree
  exactly with :func:`~hypercolumns.rf.groundtruth.gradient_rf` (compared on the input sizes the
  measurement used);
* ``global/mixed`` layers (after self-attention every unit reads the whole input): the
  gradient of the middle unit must reach every input pixel.

Each model runs in its own process with a time limit. Results go to a table on stdout and to
``docs/sweep.md``. Reproduce with::

    uv run python benchmarks/sweep_timm.py --jobs 2

Options: ``--limit N`` (the first N modules), ``--sample N --seed S`` (a random subset),
``--models a,b`` (given models), ``--timeout S`` per model, ``--out PATH``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# benchmarks/hypercolumns.py would shadow the package when this script is run by path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
ROOT = HERE.parent
SELECTION = HERE / "timm_representatives.json"
INPUT = 224

AGREE, DISAGREE = "agree", "disagree"
NOT_ANALYSED, UNMEASURED, ERROR, TIMEOUT = "not analysed", "unmeasured", "error", "timeout"
LOCAL, MIXED = "local", "global/mixed"


@dataclass
class Result:
    """The outcome for one model."""

    model: str
    module: str = ""
    params: int = 0
    status: str = ERROR
    kind: str = ""
    layer: str = ""
    layer_type: str = ""
    analysis: dict[str, Any] = field(default_factory=dict)
    gradient: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] = (INPUT, INPUT)
    in_channels: int = 3

    @property
    def analysed(self) -> bool:
        return self.status in (AGREE, DISAGREE, UNMEASURED)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _create(name: str, **kwargs: Any) -> Any:
    import timm

    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _analyse(model: Any, size: tuple[int, int], channels: int) -> tuple[list[Any], list[str]]:
    from hypercolumns.errors import GeometryWarning
    from hypercolumns.rf.layers import layers

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GeometryWarning)
        found = layers(model, size, in_channels=channels)
    notes = [str(w.message) for w in caught if issubclass(w.category, GeometryWarning)]
    return found, notes


def _build(name: str, result: Result) -> tuple[Any, list[Any], list[str]]:
    """The model and its analysis at 224x224: as built, else asked for ``img_size=224``, else
    on its own input size (models that cannot run at 224, e.g. with fixed windows)."""
    import torch

    attempts: list[tuple[dict[str, Any], tuple[int, int] | None]] = [
        ({}, (INPUT, INPUT)),
        ({"img_size": INPUT}, (INPUT, INPUT)),
        ({}, None),
    ]
    first_error: Exception | None = None
    for kwargs, size in attempts:
        try:
            torch.manual_seed(0)
            model = _create(name, **kwargs)
            cfg = getattr(model, "pretrained_cfg", None) or {}
            channels, *native = cfg.get("input_size", (3, INPUT, INPUT))
            if size is None:
                size = (int(native[0]), int(native[1]))
                if size == (INPUT, INPUT):
                    continue
            found, notes = _analyse(model, size, int(channels))
        except Exception as err:
            first_error = first_error or err
            continue
        result.kwargs, result.input_size, result.in_channels = kwargs, size, int(channels)
        return model, found, notes
    assert first_error is not None
    raise first_error


def check_model(name: str) -> Result:
    """Analyse timm model ``name`` at 224x224 and check its last spatial layer by gradients."""
    from hypercolumns.rf.groundtruth import gradient_boxes, gradient_rf, rf_mismatches

    start = time.perf_counter()
    result = Result(model=name)
    try:
        try:
            model, found, notes = _build(name, result)
        except Exception as err:
            result.status, result.reason = ERROR, "the model does not run: " + _first_line(err)
            return result
        size, channels = result.input_size, result.in_channels
        result.module = type(model).__module__.rsplit(".", 1)[-1]
        result.params = sum(p.numel() for p in model.parameters())
        # Layers without a receptive field and without a warning do not depend on the image
        # (positional encodings built from constant grids): nothing to check there.
        spatial = [la for la in found if la.rf is not None and not la.rf.is_global]
        if notes:
            result.status, result.reason = NOT_ANALYSED, notes[0]
            return result
        if not spatial:
            result.status, result.reason = NOT_ANALYSED, "no spatial layer"
            return result
        last = spatial[-1]
        rf = last.rf
        result.layer, result.layer_type = last.name, last.type
        result.kind = MIXED if rf.axes is None else LOCAL
        result.analysis = {"size": rf.size, "stride": rf.stride, "center": rf.center}
        if result.kind == MIXED:
            grid = last.layout.grid if last.layout is not None else last.shape[-2:]
            unit = (grid[0] // 2, grid[1] // 2)
            (box,) = gradient_boxes(model, last.name, size, [unit], in_channels=channels)
            whole = (0, 0, size[0] - 1, size[1] - 1)
            result.gradient = {"unit": unit, "box": box}
            result.status = AGREE if box == whole else DISAGREE
            if box != whole:
                result.reason = f"unit {unit} reads {box}, not the whole {size[0]}x{size[1]} input"
            return result
        try:
            measured = gradient_rf(model, last.name, size, in_channels=channels)
        except Exception as err:
            result.status, result.reason = UNMEASURED, _first_line(err)
            return result
        result.gradient = {
            "size": measured.size,
            "stride": measured.stride,
            "center": measured.center,
            "measured_at": measured.measured_at,
        }
        mismatches = rf_mismatches(model, last.name, measured, in_channels=channels)
        result.status = DISAGREE if mismatches else AGREE
        result.reason = "; ".join(mismatches)
    except Exception as err:
        result.status, result.reason = UNMEASURED, _first_line(err)
    finally:
        result.seconds = round(time.perf_counter() - start, 1)
    return result


# ---------------------------------------------------------------------------------------------
# Choosing the models.


def _count_params(name: str) -> int | None:
    import timm
    import torch

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
    except Exception:
        return None
    return sum(p.numel() for p in model.parameters())


def representatives(refresh: bool = False) -> dict[str, tuple[str, int]]:
    """The smallest model of each timm module, ``{module: (model, params)}`` (cached in
    ``benchmarks/timm_representatives.json`` per timm version; parameters are counted on the
    meta device)."""
    import timm

    if SELECTION.exists() and not refresh:
        cached = json.loads(SELECTION.read_text())
        if cached.get("timm") == timm.__version__:
            return {k: (v[0], v[1]) for k, v in cached["modules"].items()}
    chosen: dict[str, tuple[str, int]] = {}
    for module in timm.list_modules():
        names = timm.list_models(module=module)
        real = [n for n in names if not n.startswith("test_")] or names
        counted = [(p, n) for n in real if (p := _count_params(n)) is not None]
        if counted:
            params, name = min(counted)
            chosen[module] = (name, params)
        print(f"  {module}: {chosen.get(module, ('-', 0))[0]}", file=sys.stderr, flush=True)
    payload = {"timm": timm.__version__, "modules": chosen}
    SELECTION.write_text(json.dumps(payload, indent=1) + "\n")
    return chosen


# ---------------------------------------------------------------------------------------------
# Running.


def _run_isolated(name: str, timeout: float, threads: int) -> Result:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--one", name],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Result(model=name, status=TIMEOUT, reason=f"over {timeout:.0f} s", seconds=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return Result(**json.loads(line))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return Result(
        model=name,
        status=ERROR,
        reason=f"process exited {proc.returncode}: {tail[:300]}",
        seconds=round(time.perf_counter() - start, 1),
    )


def _fmt(pair: Any) -> str:
    if not pair:
        return ""
    a, b = pair
    text = [f"{v:g}" if isinstance(v, float) else str(v) for v in (a, b)]
    return text[0] if text[0] == text[1] else f"{text[0]},{text[1]}"


def _geometry(d: dict[str, Any]) -> str:
    if not d:
        return ""
    if "box" in d:
        return "box " + ",".join(str(v) for v in d["box"])
    return f"{_fmt(d['size'])} / {_fmt(d['stride'])} / {_fmt(d['center'])}"


def _row(r: Result) -> list[str]:
    size = tuple(r.input_size)
    note = "" if size == (INPUT, INPUT) else f" (at {size[0]}x{size[1]})"
    note += " (img_size=224)" if r.kwargs else ""
    return [
        r.module,
        r.model + note,
        f"{r.params / 1e6:.1f}M" if r.params else "",
        r.kind,
        f"`{r.layer}`" if r.layer else "",
        _geometry(r.analysis),
        _geometry(r.gradient),
        r.status,
        f"{r.seconds:.0f}",
    ]


HEADER = [
    "module",
    "model",
    "params",
    "kind",
    "last spatial layer",
    "analysis",
    "gradient",
    "status",
    "s",
]


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary(results: list[Result]) -> dict[str, int]:
    count = len(results)
    analysed = [r for r in results if r.analysed]
    return {
        "models": count,
        "analysed": len(analysed),
        "local": sum(r.kind == LOCAL for r in analysed),
        "local agree": sum(r.kind == LOCAL and r.status == AGREE for r in analysed),
        "global/mixed": sum(r.kind == MIXED for r in analysed),
        "global/mixed agree": sum(r.kind == MIXED and r.status == AGREE for r in analysed),
        "disagree": sum(r.status == DISAGREE for r in results),
        "unmeasured": sum(r.status == UNMEASURED for r in results),
        "not analysed": sum(r.status == NOT_ANALYSED for r in results),
        "error": sum(r.status == ERROR for r in results),
        "timeout": sum(r.status == TIMEOUT for r in results),
    }


def write_markdown(results: list[Result], path: Path, command: str, elapsed: float) -> None:
    import timm
    import torch

    s = summary(results)
    pct = 100.0 * s["analysed"] / max(1, s["models"])
    checked = s["local agree"] + s["global/mixed agree"]
    problems = [r for r in results if r.status != AGREE]
    lines = [
        "# Receptive fields of timm architectures: analysis against gradients",
        "",
        f"Generated by `{command}` on {dt.date.today().isoformat()} "
        f"(timm {timm.__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPU cores, {elapsed / 60:.0f} min). "
        "Reproduce with `uv run python benchmarks/sweep_timm.py --jobs 2` (about 25 minutes "
        "on 2 cores).",
        "",
        "One model per timm architecture module (`timm.list_modules()`): the smallest by "
        "parameter count (`test_*` models excluded), built with `pretrained=False`. "
        f"`hypercolumns.rf.layers` analyses it at {INPUT}x{INPUT}; the receptive field of the last "
        "spatial layer is then measured from input gradients (`hypercolumns.rf.groundtruth`):",
        "",
        "* **local**: size / stride / centre of unit 0 (y,x when they differ) must equal "
        "`gradient_rf`'s, compared on the input sizes the measurement used (tall and narrow for "
        "y, wide and short for x, long enough that no measured unit is clipped);",
        "* **global/mixed** (after self-attention every unit reads the whole image): the "
        "gradient of the middle unit must reach every input pixel.",
        "",
        "A model that does not run at 224x224 is built with `img_size=224` when it takes it, "
        "else analysed at its own input size (noted in the table). A model counts as "
        "*analysed* when the analysis raised no `GeometryWarning` (layers that do not depend on "
        "the image, such as positional encodings built from constant grids, have no receptive "
        "field and are not counted against it).",
        "",
        "## Summary",
        "",
        "| | models |",
        "|---|---|",
        f"| architectures (modules) | {s['models']} |",
        f"| analysed | {s['analysed']} ({pct:.1f}%) |",
        f"| local: agree / checked | {s['local agree']} / {s['local']} |",
        f"| global/mixed: agree / checked | {s['global/mixed agree']} / {s['global/mixed']} |",
        f"| disagree | {s['disagree']} |",
        f"| analysed but not measurable | {s['unmeasured']} |",
        f"| not analysed | {s['not analysed']} |",
        f"| model error / timeout | {s['error']} / {s['timeout']} |",
        "",
        f"Every analysed model that could be measured agrees: "
        f"**{'yes' if s['disagree'] == 0 else 'no'}** ({checked} of {s['analysed']} measured; "
        f"{s['unmeasured']} the gradient harness cannot measure, listed below).",
        "",
        "## Not agreeing, and why",
        "",
    ]
    if problems:
        for r in problems:
            lines.append(f"* `{r.model}` ({r.module or '?'}): **{r.status}**: {r.reason}")
    else:
        lines.append("None.")
    lines += ["", "## All models", "", _table([_row(r) for r in results]), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N architecture modules")
    parser.add_argument("--sample", type=int, help="a random subset of N modules")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--models", help="comma-separated timm model names (no selection)")
    parser.add_argument("--jobs", type=int, default=1, help="models checked at once")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "sweep.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--previous", type=Path, help="results JSON of an earlier run: keep its other models"
    )
    parser.add_argument("--refresh-selection", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(asdict(check_model(args.one))))
        return 0

    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        modules = dict.fromkeys(names, "")
    else:
        chosen = representatives(refresh=args.refresh_selection)
        items = sorted(chosen.items())
        if args.sample:
            items = sorted(random.Random(args.seed).sample(items, min(args.sample, len(items))))
        if args.limit:
            items = items[: args.limit]
        names = [model for _, (model, _) in items]
        modules = {model: module for module, (model, _) in items}

    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    start = time.perf_counter()
    results: list[Result] = []
    print(f"checking {len(names)} models, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(_run_isolated, n, args.timeout, threads): n for n in names}
        for k, future in enumerate(as_completed(futures), 1):
            r = future.result()
            r.module = modules.get(r.model) or r.module
            results.append(r)
            print(
                f"[{k}/{len(names)}] {r.model:32s} {r.status:13s} {r.kind:13s} "
                f"{r.seconds:6.0f}s  {r.reason[:100]}",
                flush=True,
            )
    if args.previous:
        done = {r.model for r in results}
        for item in json.loads(args.previous.read_text()):
            if item["model"] not in done:
                results.append(Result(**item))
                modules.setdefault(item["model"], item["module"])
    results.sort(key=lambda r: (modules.get(r.model) or r.module, r.model))
    elapsed = time.perf_counter() - start
    command = "uv run python benchmarks/sweep_timm.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    print()
    print(_table([_row(r) for r in results]))
    print()
    for key, value in summary(results).items():
        print(f"{key:>20s}: {value}")
    write_markdown(results, args.out, command.strip(), elapsed)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
