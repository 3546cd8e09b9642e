from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_rgba
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from hypercolumns.cli import app
from hypercolumns.errors import GeometryWarning, HypercolumnsError, InputSizeError
from hypercolumns.rf.layers import layers
from hypercolumns.viz import draw
from hypercolumns.viz.draw import Cell, ConvSpec, conv_arithmetic
from tests.cli.test_cli import assert_one_line_error, run
from tests.conftest import TINY
from tests.tiny_models import tiny

IN, PAD, ZERO = Cell.INPUT, Cell.PADDING, Cell.ZERO


def torch_support(spec: ConvSpec, n: int) -> torch.Tensor | None:
    """``(O, O, n, n)``: the inputs each output's gradient reaches (weights one, PyTorch);
    ``None`` when PyTorch refuses, or gives an empty output (it does either, by backend).

    One backward pass: a batch with one copy of the input per output cell, and the loss the
    sum over the batch of each copy's own output cell.
    """
    weight = torch.ones(1, 1, spec.kernel, spec.kernel, dtype=torch.float32)
    kwargs = {"stride": spec.stride, "padding": spec.padding, "dilation": spec.dilation}
    conv = F.conv2d
    if spec.transposed:
        kwargs["output_padding"] = spec.output_padding
        conv = F.conv_transpose2d
    probe = torch.rand(1, 1, n, n, dtype=torch.float32)
    try:
        o = conv(probe, weight, **kwargs).shape[-1]
    except RuntimeError:
        return None
    if o == 0:
        return None
    x = probe.repeat(o * o, 1, 1, 1).requires_grad_()
    y = conv(x, weight, **kwargs)[:, 0].reshape(o * o, o * o)
    y.diagonal().sum().backward()
    assert x.grad is not None
    return (x.grad[:, 0] != 0).reshape(o, o, n, n)


def drawn_support(spec: ConvSpec, n: int) -> torch.Tensor:
    arith = conv_arithmetic(spec, n)
    o = arith.output_size
    out = torch.zeros(o, o, n, n, dtype=torch.bool)
    for i, j in itertools.product(range(o), range(o)):
        for y, x in arith.inputs(i, j):
            out[i, j, y, x] = True
    return out


def settings(transposed: bool) -> list[ConvSpec]:
    specs = []
    for k, s, p, d in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (1, 2)):
        for op in range(max(s, d)) if transposed else (0,):
            specs.append(ConvSpec(k, s, p, d, transposed=transposed, output_padding=op))
    return specs


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_cells_read_are_the_support_of_pytorch_gradients(transposed: bool) -> None:
    checked = refused = 0
    for spec in settings(transposed):
        for n in (1, 2, 3, 5):
            expected = torch_support(spec, n)
            if expected is None:  # the output would be empty
                with pytest.raises(InputSizeError, match="output size would be"):
                    conv_arithmetic(spec, n)
                refused += 1
                continue
            got = drawn_support(spec, n)
            assert got.shape == expected.shape, (spec, n)  # output size is PyTorch's
            assert torch.equal(got, expected), (spec, n)
            checked += 1
    assert checked > 200
    assert refused > 10  # the grid includes empty outputs, so the refusal is tested too


def test_classic_examples_by_hand() -> None:
    # Dumoulin & Visin, padding 1, stride 2 on 5x5: a 3x3 output
    a = conv_arithmetic(ConvSpec(3, stride=2, padding=1), 5)
    assert a.output_size == 3
    assert a.cells == (PAD, IN, IN, IN, IN, IN, PAD)
    assert a.inputs(0, 0) == {(y, x) for y in (0, 1) for x in (0, 1)}
    assert a.footprint(0, 0)[:3] == [(0, 0), (0, 1), (0, 2)]
    # dilation 2 on 7x7: taps 2 apart
    a = conv_arithmetic(ConvSpec(3, dilation=2), 7)
    assert a.output_size == 3
    assert a.reads(0) == (0, 2, 4)
    # transposed, stride 2, no padding, 2x2 -> 5x5: one zero inserted, padded by 2
    a = conv_arithmetic(ConvSpec(3, stride=2, transposed=True), 2)
    assert a.output_size == 5
    assert a.cells == (PAD, PAD, IN, ZERO, IN, PAD, PAD)
    assert a.pad == (2, 2)
    assert a.inputs(0, 0) == {(0, 0)}
    assert a.inputs(1, 1) == {(0, 0)}
    assert a.inputs(2, 2) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # output padding pads the bottom/right only
    a = conv_arithmetic(ConvSpec(3, stride=2, padding=1, transposed=True, output_padding=1), 3)
    assert (a.output_size, a.pad) == (6, (1, 2))
    assert a.cells == (PAD, IN, ZERO, IN, ZERO, IN, PAD, PAD)
    # padding larger than dilation*(kernel-1): the zero-inserted input is cropped
    a = conv_arithmetic(ConvSpec(3, stride=2, padding=3, transposed=True), 4)
    assert (a.output_size, a.pad) == (3, (-1, -1))
    assert a.cells == (IN, ZERO, IN, ZERO, IN, ZERO, IN)
    assert a.reads(0) == (1,)  # grid 1..3 (z 1..3): only input 1


def test_formula_and_description() -> None:
    spec = ConvSpec(3, stride=2, padding=1)
    assert spec.formula(5).endswith("\u230a4 / 2\u230b + 1 = 3")
    assert spec.describe() == "convolution: kernel 3, stride 2, padding 1"
    spec = ConvSpec(3, 2, 1, 2, transposed=True, output_padding=1)
    assert spec.formula(3).endswith("= 4 \u2212 2 + 4 + 1 + 1 = 8")
    assert "transposed convolution" in spec.describe()
    assert "dilation 2, output padding 1" in spec.describe()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel": 0}, "kernel must be an integer of at least 1, got 0"),
        ({"kernel": 3, "stride": 0}, "stride must be an integer of at least 1, got 0"),
        ({"kernel": 3, "dilation": -1}, "dilation must be .* at least 1, got -1"),
        ({"kernel": 3, "padding": -1}, "padding must be .* at least 0, got -1"),
        ({"kernel": True}, "kernel must be an integer"),
        ({"kernel": 3, "output_padding": 1}, "applies only to a transposed convolution"),
        (
            {"kernel": 3, "stride": 2, "transposed": True, "output_padding": 2},
            r"output padding 2 must be smaller than the stride \(2\) or the dilation \(1\)",
        ),
    ],
)
def test_bad_settings(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(HypercolumnsError, match=match):
        ConvSpec(**kwargs)


def test_empty_outputs_say_the_size_and_why() -> None:
    with pytest.raises(InputSizeError, match=r"output size would be 0: kernel 5 .* spans 5"):
        ConvSpec(5).output_size(4)
    with pytest.raises(InputSizeError, match=r"output size would be -3: .* padding 3 crops"):
        ConvSpec(3, padding=3, transposed=True).output_size(1)
    with pytest.raises(HypercolumnsError, match=r"input size must be .* at least 1, got 0"):
        ConvSpec(3).output_size(0)


def _faces(collection: object) -> np.ndarray:
    return np.asarray(collection.get_facecolor())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "n", "unit"),
    [
        (ConvSpec(3, stride=2, padding=1), 5, (0, 1)),
        (ConvSpec(2, dilation=2), 5, (2, 0)),
        (ConvSpec(3, stride=2, padding=1, transposed=True, output_padding=1), 3, (2, 3)),
    ],
)
def test_diagram_highlights_the_cells_read(spec: ConvSpec, n: int, unit: tuple[int, int]) -> None:
    arith = conv_arithmetic(spec, n)
    fig = draw.conv_diagram(spec, n, unit=unit)
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == (3 if spec.transposed else 2)
    side, o = len(arith.cells), arith.output_size
    read = np.all(_faces(panels[-2].collections[0]) == to_rgba(draw._READ), axis=1)
    expected = np.zeros((side, side), dtype=bool)
    for gy, gx in arith.footprint(*unit):
        expected[gy, gx] = arith.cells[gy] is IN and arith.cells[gx] is IN
    assert np.array_equal(read.reshape(side, side), expected)
    lit = np.all(_faces(panels[-1].collections[0]) == to_rgba(draw._UNIT), axis=1)
    assert np.flatnonzero(lit).tolist() == [unit[0] * o + unit[1]]
    if spec.transposed:  # the input panel lights the same input cells
        src = np.all(_faces(panels[0].collections[0]) == to_rgba(draw._READ), axis=1)
        assert {divmod(int(k), n) for k in np.flatnonzero(src)} == arith.inputs(*unit)
    assert f"output cell ({unit[0]}, {unit[1]}) reads" in fig.get_suptitle()


def test_diagram_limits() -> None:
    with pytest.raises(HypercolumnsError, match=r"output cell \(3, 0\) is outside the 3x3"):
        draw.conv_diagram(ConvSpec(3), 5, unit=(3, 0))
    with pytest.raises(HypercolumnsError, match=f"at most {draw.MAX_CELLS} are drawn"):
        draw.conv_diagram(ConvSpec(3), draw.MAX_CELLS + 1)
    with pytest.raises(HypercolumnsError, match="441 frames"):
        draw.conv_animation(ConvSpec(3, padding=1), 21)


def test_gif_has_one_frame_per_output_cell(tmp_path: Path) -> None:
    spec = ConvSpec(2, stride=3, transposed=True)
    calls: list[tuple[int, int]] = []
    out = draw.save(draw.conv_animation(spec, 1), tmp_path / "t.gif", dpi=30,
                    progress=lambda k, n: calls.append((k, n)))  # fmt: skip
    with Image.open(out) as im:
        assert im.format == "GIF"
        assert im.n_frames == 4  # 2x2 output cells
        assert im.info["duration"] == 500
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_save_checks_the_extension(tmp_path: Path) -> None:
    fig = draw.conv_diagram(ConvSpec(3), 4)
    with pytest.raises(HypercolumnsError, match="is a GIF, which holds an animation"):
        draw.save(fig, tmp_path / "x.gif")
    with pytest.raises(HypercolumnsError, match=r"use a \.png, \.pdf, \.svg file name"):
        draw.save(fig, tmp_path / "x.jpg")
    with pytest.raises(HypercolumnsError, match="an animation is written as a GIF"):
        draw.check_path(tmp_path / "x.png", animated=True)
    assert list(tmp_path.iterdir()) == []


# --- receptive-field growth ---------------------------------------------------------------


def _labels(fig: object) -> list[str]:
    ax = fig.axes[0]  # type: ignore[attr-defined]
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_growth_of_a_tiny_model() -> None:
    found = layers(tiny(), 16)
    fig = draw.growth(found, 16)
    ax = fig.axes[0]
    labels = _labels(fig)
    rf_line = next(line for line in ax.lines if line.get_label() == "receptive field")
    assert list(rf_line.get_xdata()) == [0, 1, 2, 3, 4]
    assert list(rf_line.get_ydata()) == [3, 3, 4, 8, 8]
    stride_line = next(line for line in ax.lines if line.get_label() == "stride")
    assert list(stride_line.get_ydata()) == [1, 1, 2, 2, 2]
    down = next(line for line in ax.lines if line.get_label().startswith("stride grows"))
    assert list(down.get_xdata()) == [2]  # the max pool
    assert "global, whole input: layers 5\u20137" in labels
    assert "input size 16" in labels
    assert ax.get_yscale() == "log"
    assert len(ax.get_xticklabels()) == 8
    assert "2 MaxPool2d" in [t.get_text() for t in ax.get_xticklabels()]


def test_growth_marks_dilation_axes_and_unknown_layers() -> None:
    class Flip(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flip(-1)

    net = nn.Sequential(
        nn.Conv2d(3, 4, (3, 5), stride=(1, 2)),
        nn.Conv2d(4, 4, 3, dilation=2),
        nn.ConvTranspose2d(4, 4, 3, stride=2),
        Flip(),
        nn.Conv2d(4, 4, 3),
    )
    with pytest.warns(GeometryWarning, match="flip"):
        found = layers(net, (20, 24))
    fig = draw.growth(found, (20, 24), model=net)
    labels = _labels(fig)
    expected = [
        "receptive field (y)",
        "receptive field (x)",
        "stride (y)",
        "stride (x)",
        "dilated convolution",
        "stride shrinks (upsampling)",
        "units differ in extent (largest shown)",
        "unknown receptive field: layers 3\u20134",
        "input height 20 (y)",
        "input width 24 (x)",
    ]
    for label in expected:
        assert label in labels
    dilated = next(line for line in fig.axes[0].lines if line.get_label() == "dilated convolution")
    assert list(dilated.get_xdata()) == [1]
    assert "dilated convolution" not in _labels(draw.growth(found))  # needs the model


def test_growth_without_spatial_layers() -> None:
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    found = layers(net, 8, in_channels=3)
    with pytest.raises(HypercolumnsError, match="of 3 leaf layers 3 are global and 0 unknown"):
        draw.growth(found)
    with pytest.raises(HypercolumnsError, match="no layers"):
        draw.growth([])


# --- command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["draw"], ["conv", "growth"]), (["draw", "conv"], ["--transposed", "--animate", "Example"]),
     (["draw", "growth"], ["--input-size", "--model-kwargs", "Example"])],
)  # fmt: skip
def test_help(args: list[str], expected: list[str]) -> None:
    res = CliRunner().invoke(app, [*args, "--help"])
    assert res.exit_code == 0
    for text in expected:
        assert text in res.output


def test_cli_draws_png_pdf_and_gif(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, pdf, gif = tmp_path / "s.png", tmp_path / "d.pdf", tmp_path / "t.gif"
    code, out, _ = run(["draw", "conv", "-k", "3", "--stride", "2", "--padding", "1",
                        "--out", str(png)], capsys)  # fmt: skip
    assert code == 0
    assert f"wrote {png}" in out
    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG"
    code, _, _ = run(["draw", "conv", "--kernel", "3", "--dilation", "2", "--input", "7",
                      "--unit", "0,2", "-o", str(pdf)], capsys)  # fmt: skip
    assert code == 0
    assert pdf.read_bytes().startswith(b"%PDF")
    code, out, _ = run(["draw", "conv", "-k", "3", "-S", "2", "-p", "1", "--transposed",
                        "--output-padding", "1", "--input", "1", "--animate", "--fps", "4",
                        "-o", str(gif)], capsys)  # fmt: skip
    assert code == 0
    assert "(4 frames)" in out
    with Image.open(gif) as im:
        assert im.n_frames == 4  # (1-1)*2 - 2 + 2 + 1 + 1 = 2: a 2x2 output
        assert im.info["duration"] == 250


def test_cli_growth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["draw", "growth", TINY, "--input-size", "16", "-o",
                        str(tmp_path / "g.png")], capsys)  # fmt: skip
    assert code == 0
    assert "wrote" in out
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG"
        assert im.size[0] > 500


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["conv", "--kernel", "0"], "kernel must be an integer of at least 1, got 0"),
        (["conv", "--stride", "-1"], "stride must be an integer of at least 1, got -1"),
        (["conv", "-k", "5", "-d", "2", "--input", "4"], "output size would be -4"),
        (["conv", "--transposed", "-p", "4", "--input", "1"], "output size would be -5"),
        (["conv", "--output-padding", "1"], "only to a transposed convolution"),
        (["conv", "-o", "x.jpg"], "use a .png, .pdf, .svg file name"),
        (["conv", "-o", "x.gif"], "is a GIF"),
        (["conv", "--animate", "-o", "x.png"], "an animation is written as a GIF"),
        (["conv", "--animate", "--unit", "0,0"], "--unit picks one output cell"),
        (["conv", "--unit", "1"], "--unit expects I,J"),
        (["conv", "--animate", "--fps", "0"], "--fps must be at least 1, got 0"),
        (["growth", TINY, "-s", "16", "-o", "g.gif"], "is a GIF"),
    ],
)
def test_cli_errors(
    args: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["draw", *args], capsys)
    assert_one_line_error(code, err, match)
    assert list(tmp_path.iterdir()) == []


def test_cli_growth_of_a_model_without_spatial_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "pooled.py"
    source.write_text(
        "from torch import nn\n\n"
        "def pooled():\n"
        "    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))\n"
    )
    code, _, err = run(["draw", "growth", f"{source}:pooled", "-s", "8", "--in-channels", "3",
                        "-o", str(tmp_path / "g.png")], capsys)  # fmt: skip
    assert_one_line_error(code, err, "no layer has a spatial receptive field to plot")
    assert not (tmp_path / "g.png").exists()
