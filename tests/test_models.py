"""Model specs, local weights and pretrained downloads (up to the download: no network here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hypercolumns as hc
from hypercolumns.errors import ModelError, WeightsError

TINY = str(Path(__file__).parent / "tiny_models.py")


def test_timm_and_torchvision_specs_with_kwargs() -> None:
    model = hc.load_model("timm:resnet18", num_classes=7)
    assert model.fc.out_features == 7
    assert not model.training
    model = hc.load_model("torchvision:resnet18", num_classes=5)
    assert model.fc.out_features == 5


def test_file_and_module_specs() -> None:
    model = hc.load_model(f"{TINY}:tiny", classes=5)
    assert model[-1].out_features == 5
    model = hc.load_model("torchvision.models:alexnet", num_classes=4)
    assert model.classifier[-1].out_features == 4


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("resnet50", r"use one of timm:NAME.*did you mean .*timm:resnet50"),
        ("timm:resnet5O", r"timm has no model 'resnet5O'; closest: .*resnet50"),
        ("torchvision:vgg61", r"torchvision has no model 'vgg61'; closest: .*vgg16"),
        ("no_such_pkg.models:net", "cannot import module 'no_such_pkg.models'"),
        (f"{TINY}:tiyn", r"has no callable 'tiyn'; closest: tiny"),
        (f"{TINY}:not_a_model", "returned str, not a torch.nn.Module"),
        ("missing/file.py:net", "no such file"),
        ("timm:", "cannot read model spec"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        hc.load_model(spec)


def test_bad_factory_arguments() -> None:
    with pytest.raises(ModelError, match=r"cannot build .* with arguments"):
        hc.load_model(f"{TINY}:tiny", widht=3)


def test_pretrained_only_for_hub_specs() -> None:
    with pytest.raises(ModelError, match="pass weights=FILE"):
        hc.load_model(f"{TINY}:tiny", pretrained=True)


@pytest.mark.slow
def test_pretrained_without_a_hub_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    # Fail at once instead of retrying for a minute; the environment variable is read on import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(
        ModelError,
        match=r"cannot download pretrained weights for 'timm:resnet18'"
        r".*--weights FILE",
    ):
        hc.load_model("timm:resnet18", pretrained=True)


def test_pretrained_torchvision_without_a_hub_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError, match=r"cannot download .*'torchvision:resnet18'.*--weights"):
        hc.load_model("torchvision:resnet18", pretrained=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    source = hc.load_model(f"{TINY}:tiny")
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = hc.load_model(f"{TINY}:tiny", weights=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_weights_that_do_not_fit_list_the_keys(tmp_path: Path) -> None:
    state = hc.load_model(f"{TINY}:tiny").state_dict()
    state.pop("0.bias")
    state["extra.weight"] = torch.zeros(1)
    state["3.weight"] = torch.zeros(1, 2, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(
        WeightsError,
        match=r"missing \(1\): 0\.bias; unexpected \(1\): "
        r"extra\.weight; mis-shaped .*3\.weight",
    ):
        hc.load_model(f"{TINY}:tiny", weights=path)


def test_weights_never_unpickle_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "obj": Path("x")}, path)
    with pytest.raises(WeightsError, match="cannot read weights file"):
        hc.load_model(f"{TINY}:tiny", weights=path)


def test_unreadable_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        hc.load_model(f"{TINY}:tiny", weights=tmp_path / "none.pt")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        hc.load_model(f"{TINY}:tiny", weights=junk)
    other = tmp_path / "w.npz"
    other.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"expected \.safetensors, \.pt or \.pth"):
        hc.load_model(f"{TINY}:tiny", weights=other)


def test_a_failing_factory_names_the_spec() -> None:
    """M6 / M12: the factory's own error, with the spec and the arguments it was given."""
    with pytest.raises(ModelError, match=r"building '.*tiny_models\.py:tiny' with arguments "
                       r"\{'classes': -3\} failed: RuntimeError: .*negative"):  # fmt: skip
        hc.load_model(f"{TINY}:tiny", classes=-3)


def test_a_factory_failing_without_a_message_says_so() -> None:
    """M11: timm rejects output_stride=7 with a bare assertion; the reason is never empty."""
    with pytest.raises(
        ModelError,
        match=r"timm could not build 'resnet18' with arguments \{'output_stride': 7\}: "
        r"AssertionError: \(no message\)",
    ):
        hc.load_model("timm:resnet18", output_stride=7)


def test_pretrained_timm_fails_fast_when_no_hub_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """M14: an unreachable hub (here a closed port on this machine) means cached weights only,
    at once, instead of huggingface_hub's minute of retries and 20 log lines."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelError, match=r"cannot download pretrained weights for 'timm:resnet18'"):
        hc.load_model("timm:resnet18", pretrained=True)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored


def test_a_long_hub_error_is_shortened_between_words() -> None:
    """M14's line cut the hub's text mid-word ("try aga")."""
    from hypercolumns.models import _pretrained_error

    hub = "We couldn't connect to 'https://huggingface.co' to load the files, " * 4 + "try again"
    message = str(_pretrained_error("timm:resnet18", OSError(hub)))
    reason = message.split("(no model hub reachable: ")[1].split(" ...)")[0]
    assert hub.startswith(reason)
    assert hub[len(reason)] == " "  # a whole word last
    assert message.endswith("; pass a local state dict with weights=FILE (--weights FILE)")


def test_a_checkpoint_with_objects_is_refused_in_our_words(tmp_path: Path) -> None:
    """W2: say that the file holds Python objects, was not unpickled, and how to convert it;
    never PyTorch's advice to pass weights_only=False."""
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "obj": Path("x")}, path)
    with pytest.raises(WeightsError) as info:
        hc.load_model(f"{TINY}:tiny", weights=path)
    text = str(info.value)
    assert "holds Python objects (pathlib.PosixPath)" in text
    assert "was not unpickled" in text
    assert "FILE.safetensors" in text
    assert "\x1b[" not in text
    assert "Re-running" not in text


def test_a_truncated_checkpoint_says_so(tmp_path: Path) -> None:
    """W7."""
    path = tmp_path / "w.pt"
    torch.save(hc.load_model(f"{TINY}:tiny").state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WeightsError, match=r"truncated, or not a PyTorch checkpoint"):
        hc.load_model(f"{TINY}:tiny", weights=path)


def test_non_finite_weights_are_loaded_with_a_warning(tmp_path: Path) -> None:
    """W8: NaN weights are the user's to keep, but never silently."""
    state = hc.load_model(f"{TINY}:tiny").state_dict()
    state["0.weight"] = torch.full_like(state["0.weight"], float("nan"))
    path = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.warns(RuntimeWarning, match=r"NaN or infinite values: tensors \(1\): 0\.weight"):
        hc.load_model(f"{TINY}:tiny", weights=path)
