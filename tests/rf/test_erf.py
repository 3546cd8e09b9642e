from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import HypercolumnsError, ImageError, InputSizeError, LayerNotFoundError
from hypercolumns.rf.erf import area_ratio, mass_radius, moments
from tests.tiny_models import tiny


def ones_stack(n: int, kernel: tuple[int, int], channels: int = 2) -> nn.Sequential:
    """n stacked convolutions, all weights one, no bias, no nonlinearity, 'same' padding."""
    convs = []
    for k in range(n):
        conv = nn.Conv2d(1 if k == 0 else channels, channels, kernel, padding="same", bias=False)
        nn.init.ones_(conv.weight)
        convs.append(conv)
    return nn.Sequential(*convs)


def assert_inside(inner: tuple[float, ...], outer: tuple[float, ...]) -> None:
    """``inner`` and ``outer`` are boxes ``(y0, x0, y1, x1)``; ``inner`` lies in ``outer``."""
    lows = [a >= b for a, b in zip(inner[:2], outer[:2], strict=True)]
    highs = [a <= b for a, b in zip(inner[2:], outer[2:], strict=True)]
    assert all(lows + highs), (inner, outer)


def support(m: torch.Tensor) -> tuple[int, int, int, int]:
    """First and last row and column ``(y0, x0, y1, x1)`` where the map is non-zero."""
    nz = torch.nonzero(m > 0)
    (y0, x0), (y1, x1) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
    return y0, x0, y1, x1


@pytest.mark.parametrize(
    ("n", "kernel"),
    [
        (1, (3, 3)),
        (2, (3, 3)),
        (4, (3, 3)),
        (3, (5, 5)),
        (2, (7, 7)),
        (3, (3, 5)),
        (2, (1, 7)),
    ],
)
def test_std_of_stacked_ones_convs_is_that_of_an_n_fold_box(
    n: int, kernel: tuple[int, int]
) -> None:
    model = ones_stack(n, kernel)
    size = (n * (kernel[0] - 1) + 7, n * (kernel[1] - 1) + 5)
    e = hc.erf(model, -1, size, samples=2, batch_size=2)
    expected = tuple(math.sqrt(n * (k * k - 1) / 12) for k in kernel)
    assert e.std == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert e.centroid == pytest.approx(e.rf_center, abs=1e-12)
    assert e.rf_size == tuple(n * (k - 1) + 1 for k in kernel)
    assert support(e.map) == e.rf_box  # a linear, positive net reaches its whole rf
    assert float(e.map.sum()) == pytest.approx(1.0, abs=1e-12)
    assert e.map.dtype == torch.float64
    assert e.map.shape == size


def test_ones_stack_map_is_the_product_of_binomial_like_profiles() -> None:
    # two 3x3 box convolutions: per axis the profile is [1, 2, 3, 2, 1] / 9
    e = hc.erf(ones_stack(2, (3, 3), channels=1), -1, 9, samples=1)
    profile = torch.tensor([1, 2, 3, 2, 1], dtype=torch.float64) / 9
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[2:7, 2:7] = profile[:, None] * profile[None, :]
    torch.testing.assert_close(e.map, expected, rtol=0, atol=1e-15)
    assert e.scale == pytest.approx(81.0)  # the raw gradient sums to 9 * 9


def test_moments_of_a_hand_made_map() -> None:
    m = torch.zeros(5, 7)
    m[1, 2], m[3, 6] = 1.0, 3.0  # three quarters at (3, 6)
    (cy, cx), (sy, sx) = moments(m)
    assert (cy, cx) == pytest.approx((2.5, 5.0))
    assert (sy, sx) == pytest.approx((math.sqrt(0.75), math.sqrt(0.25 * 9 + 0.75 * 1)))


def test_mass_radius_on_rings() -> None:
    m = torch.zeros(5, 5, dtype=torch.float64)
    m[1:4, 1:4] = 0.3 / 8  # ring at distance 1 holds 30 %
    m[2, 2] = 0.5  # the centre holds 50 %
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = 0.2 / 16  # ring at distance 2 holds 20 %
    assert float(m.sum()) == pytest.approx(1.0)
    radii = mass_radius(m, (2.0, 2.0), (20, 50, 80, 90, 99))
    assert radii == {20: 0.0, 50: 0.0, 80: 1.0, 90: 2.0, 99: 2.0}


def test_mass_radius_between_pixels_and_at_the_border() -> None:
    uniform = torch.ones(4, 4)
    # centre between pixels: the 2x2 middle (half-width 0.5) holds a quarter
    assert mass_radius(uniform, (1.5, 1.5), (20, 25, 30)) == {20: 0.5, 25: 0.5, 30: 1.5}
    # centre on the corner pixel: squares reach past the image; only pixels inside count
    corner = mass_radius(torch.ones(3, 3), (0.0, 0.0), (10, 20, 50, 100))
    assert corner == {10: 0.0, 20: 1.0, 50: 2.0, 100: 2.0}


def _reference_radius(m: np.ndarray, cy: int, cx: int, share: float) -> int:
    """Grow a square of odd side around an integer centre until it holds ``share``."""
    total = m.sum()
    for r in range(max(m.shape)):
        window = m[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
        if window.sum() >= share * total * (1 - 1e-12):
            return r
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(4))
def test_mass_radius_agrees_with_growing_squares(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = rng.random((13, 17)) ** 4
    cy, cx = int(rng.integers(0, 13)), int(rng.integers(0, 17))
    levels = (20, 30, 50, 90, 95, 99)
    radii = mass_radius(torch.from_numpy(m), (float(cy), float(cx)), levels)
    assert radii == {t: _reference_radius(m, cy, cx, t / 100) for t in levels}


def test_area_ratio_takes_the_log_of_the_raw_map() -> None:
    raw = torch.zeros(5, 5, dtype=torch.float64)
    raw[1:4, 1:4] = 9.0  # log10(9 + 1) = 1 on the ring at distance 1
    raw[2, 2] = 999.0  # log10(999 + 1) = 3 at the centre: 3 / 11 of the rescaled total
    ratios = area_ratio(raw, (2.0, 2.0))
    assert ratios == pytest.approx({20: 1 / 25, 30: 9 / 25, 50: 9 / 25, 99: 9 / 25})
    # the same shape at another scale gives other ratios: the logarithm is not scale-free;
    # for small values it is nearly linear, and the centre holds about 999 / 1071 of the total
    small = area_ratio(raw / 1000, (2.0, 2.0))
    assert small == pytest.approx({20: 1 / 25, 30: 1 / 25, 50: 1 / 25, 99: 9 / 25})
    # clipped at the border, the area counts pixels inside the image
    corner = area_ratio(torch.ones(3, 3), (0.0, 0.0), (20, 99))
    assert corner == pytest.approx({20: 4 / 9, 99: 1.0})


def _manual_mean_gradient(model: nn.Module, x: torch.Tensor, stop: int, unit: tuple[int, int]):
    """The per-sample loop people write: one forward and backward per input."""
    total = torch.zeros(x.shape[-2:], dtype=torch.float64)
    for sample in x:
        xi = sample[None].clone().requires_grad_(True)
        out = model[: stop + 1](xi)
        out[0, :, unit[0], unit[1]].sum().backward()
        total += xi.grad.abs().sum((0, 1)).double()
    return total / len(x)


def test_batched_equals_a_per_sample_loop() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(5, 3, 12, 10)
    e = hc.erf(model, 3, (12, 10), unit=(1, 3), inputs=x, batch_size=3)
    expected = _manual_mean_gradient(model, x, 3, (1, 3))
    torch.testing.assert_close(e.raw, expected, rtol=1e-5, atol=1e-9)
    one = hc.erf(model, 3, (12, 10), unit=(1, 3), inputs=x, batch_size=1)
    torch.testing.assert_close(e.map, one.map, rtol=1e-5, atol=1e-12)
    assert e.samples == 5
    assert e.inputs == "tensor"
    assert e.inputs_text == "5 inputs"


def test_noise_does_not_depend_on_the_batch_size_and_is_seeded() -> None:
    torch.manual_seed(0)
    model = tiny()
    a = hc.erf(model, 4, 16, samples=5, batch_size=2, seed=3)
    b = hc.erf(model, 4, 16, samples=5, batch_size=5, seed=3)
    c = hc.erf(model, 4, 16, samples=5, batch_size=5, seed=4)
    torch.testing.assert_close(a.map, b.map, rtol=1e-5, atol=1e-12)
    assert not torch.allclose(a.map, c.map)
    assert a.unit == (3, 3)  # the middle of the 8x8 grid of layer 4
    assert a.inputs == "noise"


def test_progress_is_reported_per_batch() -> None:
    calls: list[tuple[int, int]] = []
    hc.erf(tiny(), 3, 8, samples=5, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_model_is_left_as_found() -> None:
    model = tiny().train()
    model[3].eval()
    model[0].weight.requires_grad_(False)
    hc.erf(model, 4, 8, samples=2)
    assert model.training
    assert not model[3].training
    assert not model[0].weight.requires_grad
    assert model[3].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def _write_images(tmp_path: Path, n: int, size: tuple[int, int] = (20, 14)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        path = tmp_path / f"img{k}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_image_inputs_are_resized_to_the_input_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny()
    paths = _write_images(tmp_path, 3)
    e = hc.erf(model, 3, (16, 12), inputs=paths, samples=2)
    assert e.samples == 2
    assert e.inputs == "images"
    assert e.inputs_text == "2 images"
    x = torch.cat([hc.load_image(p, model, resize="16,12")[0] for p in paths[:2]])
    same = hc.erf(model, 3, (16, 12), inputs=x)
    torch.testing.assert_close(e.map, same.map, rtol=1e-6, atol=1e-12)


def test_erf_support_lies_inside_the_theoretical_box() -> None:
    torch.manual_seed(0)
    model = tiny()
    for unit in [(0, 0), (3, 5), (7, 7)]:
        e = hc.erf(model, 3, 16, unit=unit, samples=4)
        assert_inside(support(e.map), e.rf_box_clipped)


@pytest.mark.slow
def test_resnet18_erf_lies_inside_its_box_and_centres_on_its_unit() -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18()
    for unit in [(0, 0), (5, 2)]:
        e = hc.erf(model, "layer1", 48, unit=unit, samples=4, batch_size=4)
        assert_inside(support(e.map), e.rf_box_clipped)
    middle = hc.erf(model, "layer1", 96, samples=8, batch_size=8)
    assert middle.rf_size == (43, 43)
    assert middle.rf_center == (44.0, 44.0)
    assert middle.centroid == pytest.approx(middle.rf_center, abs=2.0)
    assert middle.std[0] < middle.rf_size[0] / 4  # concentrated well inside the box


def test_vision_transformer_tokens() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
    e = hc.erf(model, "patch_embed", 32, unit=(1, 0), samples=2)
    assert support(e.map) == e.rf_box == (16.0, 0.0, 31.0, 15.0)  # that patch, nothing else
    after = hc.erf(model, "blocks.0", 32, unit=(1, 0), samples=2)
    assert support(after.map) == after.rf_box == (0.0, 0.0, 31.0, 31.0)  # attention: all


def test_to_dict_is_json_ready() -> None:
    import json

    e = hc.erf(tiny(), 3, 16, samples=2)
    record = json.loads(json.dumps(e.to_dict()))
    for key in ("std", "centroid", "mass_radius", "area_ratio", "rf_size", "erf_to_rf"):
        assert key in record
    assert set(record["mass_radius"]) == {"20", "30", "50", "90", "95", "99"}
    assert set(record["area_ratio"]) == {"20", "30", "50", "99"}
    assert record["rf_size"] == [8, 8]  # conv 3, pool 2 (rf 4, stride 2), conv 3: 4 + 2 * 2
    assert record["erf_to_rf"] == pytest.approx([(2 * e.mass_radius[95] + 1) / 8] * 2)
    assert "map" not in record
    assert np.asarray(e.to_dict(with_map=True)["map"]).shape == (16, 16)


def test_errors(tmp_path: Path) -> None:
    model = tiny()
    with pytest.raises(HypercolumnsError, match=r"global .* no spatial units"):
        hc.erf(model, 7, 16)
    with pytest.raises(HypercolumnsError, match=r"unit \(8, 0\) is outside .* grid is 8x8"):
        hc.erf(model, 3, 16, unit=(8, 0))
    with pytest.raises(HypercolumnsError, match="unit must be 'center' or two integers"):
        hc.erf(model, 3, 16, unit="middle")  # type: ignore[arg-type]
    with pytest.raises(HypercolumnsError, match=r"two integers \(i, j\), got \(1, 2, 3\)"):
        hc.erf(model, 3, 16, unit=(1, 2, 3))
    with pytest.raises(InputSizeError, match="too small"):
        hc.erf(model, 3, 1)
    with pytest.raises(HypercolumnsError, match="samples must be a positive integer, got 0"):
        hc.erf(model, 3, 16, samples=0)
    with pytest.raises(HypercolumnsError, match="batch_size must be a positive integer"):
        hc.erf(model, 3, 16, batch_size=0)
    with pytest.raises(LayerNotFoundError, match="no layer named"):
        hc.erf(model, "conv9", 16)
    with pytest.raises(HypercolumnsError, match="name one layer, not 2"):
        hc.erf(model, "0,3", 16)
    with pytest.raises(InputSizeError, match=r"expected inputs of shape \(N, 3, 16, 16\)"):
        hc.erf(model, 3, 16, inputs=torch.zeros(2, 3, 8, 8))
    with pytest.raises(HypercolumnsError, match="inputs must be 'noise'"):
        hc.erf(model, 3, 16, inputs="img.png")  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="no images given"):
        hc.erf(model, 3, 16, inputs=[])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"bad\.png"):
        hc.erf(model, 3, 16, inputs=[bad])


def test_a_unit_without_gradient_is_an_error() -> None:
    model = tiny()
    nn.init.zeros_(model[3].weight)
    with pytest.raises(HypercolumnsError, match="zero for every input"):
        hc.erf(model, 3, 8, samples=1)
