from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hypercolumns.errors import ImageError, ImageWarning, InputSizeError
from hypercolumns.images import load_image, read_image
from hypercolumns.models import IMAGENET_MEAN, IMAGENET_STD, normalization
from tests.tiny_models import tiny


def _save(tmp_path: Path, name: str, img: Image.Image, **kw: object) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_grayscale_is_replicated_to_three_channels(tmp_path: Path) -> None:
    arr = (np.arange(12 * 10).reshape(12, 10) % 256).astype(np.uint8)
    x, prep = load_image(_save(tmp_path, "g.png", Image.fromarray(arr, "L")))
    assert x.shape == (1, 3, 12, 10)
    assert x.dtype == torch.float32
    expected = torch.from_numpy(arr / 255.0).float()
    for c in range(3):
        torch.testing.assert_close(x[0, c], expected)
    assert (prep.mode, prep.scale, prep.normalization) == ("L", 255.0, "none")


def test_one_channel_model_gets_luminance(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 3), (255, 0, 0))
    x, prep = load_image(_save(tmp_path, "red.png", img), tiny(in_chans=1))
    assert x.shape == (1, 1, 3, 4)
    assert prep.channels == 1
    torch.testing.assert_close(x, torch.full_like(x, 0.299), atol=1e-6, rtol=0)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 255
    a[4:, :, 3] = 255  # bottom half opaque red, top half transparent
    x, prep = load_image(_save(tmp_path, "rgba.png", Image.fromarray(a, "RGBA")))
    torch.testing.assert_close(x[0, :, 0, 0], torch.ones(3))
    torch.testing.assert_close(x[0, :, 7, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert prep.alpha == "composited on white"


def test_palette_with_transparency_is_composited(tmp_path: Path) -> None:
    img = Image.new("P", (5, 5), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((2, 2), 1)
    path = _save(tmp_path, "p.png", img, transparency=0)
    x, prep = load_image(path)
    torch.testing.assert_close(x[0, :, 0, 0], torch.ones(3))  # transparent black -> white
    torch.testing.assert_close(x[0, :, 2, 2], torch.tensor([0.0, 1.0, 0.0]))
    assert prep.mode == "P"


def test_palette_colours_are_kept(tmp_path: Path) -> None:
    img = Image.new("RGB", (6, 4), (10, 20, 30)).quantize(4)
    x, _ = load_image(_save(tmp_path, "q.png", img))
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


def test_16_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path, "i16.png", Image.fromarray(arr))
    assert Image.open(path).mode.startswith("I")
    x, prep = load_image(path)
    torch.testing.assert_close(x[0, 0, 0], torch.tensor([0.0, 32768 / 65535, 1.0]))
    assert prep.scale == 65535.0


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    x, prep = load_image(_save(tmp_path, "rot.jpg", img, exif=exif, quality=95))
    assert x.shape == (1, 3, 20, 10)  # upright: 20 high, 10 wide
    assert prep.exif_transposed
    assert prep.original_size == (20, 10)
    top, bottom = x[0, :, 2, 5], x[0, :, 17, 5]
    assert top[0] > 0.8 > top[2]  # the left half became the top
    assert bottom[2] > 0.8 > bottom[0]


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    full = _save(tmp_path, "full.jpg", noise).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg.*truncated"):
        load_image(cut)


def test_non_image_and_missing_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageError, match=r"notes\.txt.*not an image"):
        read_image(text)
    with pytest.raises(ImageError, match=r"nope\.png.*does not exist"):
        read_image(tmp_path / "nope.png")


def test_normalisation_comes_from_the_model(tmp_path: Path) -> None:
    import torchvision

    path = _save(tmp_path, "w.png", Image.new("RGB", (3, 3), (255, 255, 255)))
    x, prep = load_image(path, torchvision.models.squeezenet1_1())
    assert prep.normalization == "torchvision ImageNet default"
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 1, 1], expected)

    net = tiny()
    net.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                          "interpolation": "bicubic"}  # fmt: skip
    assert normalization(net).source == "timm pretrained_cfg"
    x, prep = load_image(path, net)
    torch.testing.assert_close(x, torch.full_like(x, 2.0))
    assert prep.interpolation == "bicubic"

    x, prep = load_image(path, net, mean=[0.0], std=[0.5])
    torch.testing.assert_close(x, torch.full_like(x, 2.0))
    assert (prep.normalization, prep.mean) == ("user", (0.0, 0.0, 0.0))
    with pytest.raises(ImageError, match="mean has 2 values but the model takes 3"):
        load_image(path, net, mean=[0.1, 0.2])
    with pytest.raises(ImageError, match="non-zero"):
        load_image(path, net, std=[0.0])


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_8_bit_pixels_are_the_textbook_normalisation_bit_for_bit(tmp_path: Path, mode: str) -> None:
    """8-bit pixels are scaled after being laid out as channels, and normalised in place: the
    values must stay those of the plain route, float32 ``(pixel / 255 - mean) / std``."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PyTorch warning about PIL's read-only pixels
        x, _ = load_image(_save(tmp_path, "p.png", img), channels=3, mean=[0.485, 0.456, 0.406],
                          std=[0.229, 0.224, 0.225])  # fmt: skip
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    pixels = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    plain = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    plain = (plain - torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).reshape(1, 3, 1, 1)
    assert x.is_contiguous()
    assert x.dtype == torch.float32
    assert torch.equal(x, plain)


def test_unnormalize_round_trips(tmp_path: Path) -> None:
    import torchvision

    arr = np.random.default_rng(1).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    x, prep = load_image(
        _save(tmp_path, "n.png", Image.fromarray(arr)), torchvision.models.squeezenet1_1()
    )
    torch.testing.assert_close(
        prep.unnormalize(x[0]), torch.from_numpy(arr / 255.0).float().permute(2, 0, 1)
    )


def test_resize_and_crop(tmp_path: Path) -> None:
    path = _save(tmp_path, "r.png", Image.new("RGB", (10, 12), (0, 128, 255)))
    assert load_image(path)[0].shape[-2:] == (12, 10)  # default: own size
    x, prep = load_image(path, resize="5")
    assert x.shape[-2:] == (6, 5)
    assert prep.resize == "5"
    x, _ = load_image(path, resize="4,7")
    assert x.shape[-2:] == (4, 7)
    torch.testing.assert_close(x[0, :, 2, 3], torch.tensor([0, 128, 255]) / 255.0)
    x, prep = load_image(path, resize="6", crop="center:4,5")
    assert x.shape[-2:] == (4, 5)
    assert prep.size == (4, 5)
    assert prep.original_size == (12, 10)
    x, _ = load_image(path, crop="center:8")
    assert x.shape[-2:] == (8, 8)
    with pytest.raises(InputSizeError, match=r"crop 20x20 is larger than the image \(12x10\)"):
        load_image(path, crop="center:20")
    with pytest.raises(InputSizeError, match="crop must be"):
        load_image(path, crop="top:4")
    with pytest.raises(InputSizeError, match="resize must be"):
        load_image(path, resize="big")


def test_unsupported_channel_count(tmp_path: Path) -> None:
    path = _save(tmp_path, "c.png", Image.new("RGB", (4, 4)))
    with pytest.raises(ImageError, match="takes 4 input channels"):
        load_image(path, nn.Conv2d(4, 2, 1))


def test_preprocessing_record_is_json_ready(tmp_path: Path) -> None:
    path = _save(tmp_path, "j.png", Image.new("L", (4, 4)))
    _, prep = load_image(path, resize="8")
    record = json.loads(json.dumps(prep.to_dict()))
    assert record["size"] == [8, 8]
    assert record["mode"] == "L"
    assert record["path"] == str(path)


@pytest.mark.parametrize("mean", [[float("nan")], [0.5, float("inf"), 0.5]])
def test_non_finite_mean_is_refused(tmp_path: Path, mean: list[float]) -> None:
    """L18: a NaN mean made every feature NaN without a word; std was already checked."""
    path = _save(tmp_path, "a.png", Image.new("RGB", (8, 8)))
    with pytest.raises(ImageError, match=r"mean must be finite, got \[.*nan|inf"):
        load_image(path, mean=mean)


def multi_frame(path: Path, frames: int = 3, size: tuple[int, int] = (24, 20)) -> Path:
    """An animated GIF or a multi-page TIFF (by ``path``'s suffix) of ``frames`` different
    frames of ``size`` ``(H, W)``: frame ``i`` is uniformly grey at ``40 * (i + 1)``."""
    imgs = [Image.new("RGB", (size[1], size[0]), (40 * (i + 1),) * 3) for i in range(frames)]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], **({"duration": 100, "loop": 0}
                 if path.suffix == ".gif" else {}))  # fmt: skip
    with Image.open(path) as check:
        assert check.n_frames == frames
    return path


@pytest.mark.parametrize("name", ["anim.gif", "multi.tif"])
def test_a_file_of_several_frames_gives_its_first_with_one_warning(
    tmp_path: Path, name: str
) -> None:
    """I9: the first frame was used silently; now one ImageWarning names the file and its
    frame count, and the record says how many frames the file holds."""
    path = multi_frame(tmp_path / name)
    with pytest.warns(ImageWarning) as caught:
        x, prep = load_image(path, mean=[0.0], std=[1.0])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(path) in message
    assert "3 frames" in message
    assert "only the first is used" in message
    assert prep.frames == 3
    assert prep.to_dict()["frames"] == 3
    torch.testing.assert_close(x, torch.full_like(x, 40 / 255), atol=2 / 255, rtol=0)


def test_a_single_frame_file_has_one_frame_and_no_warning(tmp_path: Path) -> None:
    path = _save(tmp_path, "one.gif", Image.new("RGB", (8, 8), (10, 20, 30)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, prep = load_image(path)
    assert prep.frames == 1


@pytest.mark.filterwarnings("ignore::hypercolumns.errors.ImageWarning")
def test_image_notes_are_the_decoding_threads_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding runs in a thread beside the model. It kept an image's warnings with
    ``warnings.catch_warnings(record=True)``, which holds for the whole process: a warning
    raised meanwhile by another thread went into the decoded image's record (and was lost to
    its own caller). Here a GIF loaded in this thread while a PNG decodes in another."""
    import threading

    from hypercolumns.images import image_notes
    from hypercolumns.pipeline import decoding
    from hypercolumns.pipeline.sources import Source

    gif = multi_frame(tmp_path / "anim.gif")
    png = _save(tmp_path, "still.png", Image.new("RGB", (8, 8), (10, 20, 30)))
    inside, go_on = threading.Event(), threading.Event()
    real = decoding._load

    def load(source: Source, options: decoding.DecodeOptions) -> tuple[torch.Tensor, Any]:
        out = real(source, options)
        inside.set()
        go_on.wait(10)
        return out

    monkeypatch.setattr(decoding, "_load", load)
    options = decoding.DecodeOptions(3, (0.0,) * 3, (1.0,) * 3, "bilinear", "none")
    results: list[decoding.Decoded] = []
    thread = threading.Thread(
        target=lambda: results.append(decoding.decode(Source("still.png", png), options))
    )
    thread.start()
    assert inside.wait(10)
    load_image(gif)  # warns here, in this thread
    go_on.set()
    thread.join(10)
    assert results[0].error is None
    assert "warnings" not in results[0].record
    with image_notes() as notes:
        load_image(gif)
    assert len(notes) == 1
    assert "3 frames" in notes[0]
