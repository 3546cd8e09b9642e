"""Feature maps: equal to a plain forward, early exit, in-place safety, ViT tokens, hygiene."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import InputSizeError, LayerNotFoundError, ModelError


class Boom(nn.Module):
    """Raises when it runs on real tensors (the layer analysis runs it on meta tensors)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_meta:
            raise RuntimeError("boom: this module should not have run")
        return x


class SneakyInplace(nn.Module):
    """Changes its input in place, but only on real tensors (the meta probe cannot see it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_meta:
            x.mul_(2)
        return x


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
    )


def hooked_forward(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """A plain full forward, cloning every hooked output: the reference."""
    out: dict[str, torch.Tensor] = {}

    def keep(name: str, output: torch.Tensor) -> None:  # returns None: the output stays as it is
        out.setdefault(name, output.clone())

    handles = [
        model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: keep(n, o)) for n in names
    ]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return out


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_equal_to_a_plain_forward_with_hooks(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 80)
    names = ["layer1", "layer3.0.conv2", "avgpool", "fc", "relu"]
    got = hc.feature_maps(resnet, x, names)
    ref = hooked_forward(resnet, x, names)
    assert list(got) == names
    for n in names:
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=0)
        assert not got[n].requires_grad


def test_as_maps_shapes(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    got = hc.feature_maps(resnet, x, ["layer2", "avgpool", "fc"], as_maps=True)
    assert got["layer2"].shape == (2, 128, 8, 8)
    assert got["avgpool"].shape == (2, 512)
    assert got["fc"].shape == (2, 1000)


def test_indices_and_notes_layers(vgg: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    got = hc.feature_maps(vgg, x, [3, 8])
    assert list(got) == ["features.3", "features.8"]
    assert got["features.8"].shape == (1, 128, 16, 16)
    assert list(hc.feature_maps(vgg, x, "3,-1")) == ["features.3", "classifier.6"]


def test_early_exit_equals_full_run_and_really_stops() -> None:
    model = nn.Sequential(*tiny_cnn(), Boom()).eval()
    x = torch.randn(2, 3, 16, 16)
    got = hc.feature_maps(model, x, ["2", "5"])
    with pytest.raises(RuntimeError, match="boom"):
        model(x)  # the full model cannot run: feature_maps stopped before Boom
    reference = tiny_cnn().eval()
    ref = hooked_forward(reference, x, ["2", "5"])
    torch.testing.assert_close(got["2"], ref["2"], rtol=0, atol=0)
    torch.testing.assert_close(got["5"], ref["5"], rtol=0, atol=0)


def test_order_of_request_does_not_matter_for_early_exit() -> None:
    model = nn.Sequential(*tiny_cnn(), Boom()).eval()
    x = torch.randn(1, 3, 16, 16)
    got = hc.feature_maps(model, x, ["5", "0"])
    assert list(got) == ["5", "0"]


def test_inplace_relu_does_not_change_captured_conv_output(vgg: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        conv = vgg.features[:3](x)  # features.2 is a conv, features.3 an in-place ReLU
    assert conv.min() < 0
    got = hc.feature_maps(vgg, x, ["features.2", "features.8"])
    torch.testing.assert_close(got["features.2"], conv, rtol=0, atol=0)
    alone = hc.feature_maps(vgg, x, ["features.2"])  # the last layer: no clone needed
    torch.testing.assert_close(alone["features.2"], conv, rtol=0, atol=0)


def test_extractor_plans_clones_only_where_needed(vgg: nn.Module) -> None:
    ext = hc.FeatureExtractor(vgg, ["features.2", "features.3", "features.8"], 32)
    assert ext._clone == {"features.2"}


def test_inplace_change_the_meta_probe_misses_is_caught() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SneakyInplace(), nn.Conv2d(4, 4, 3)).eval()
    x = torch.randn(1, 3, 12, 12)
    ext = hc.FeatureExtractor(model, ["0", "2"], 12)
    assert ext._clone == set()
    got = ext(x)
    with torch.no_grad():
        conv = model[0](x)
    torch.testing.assert_close(got["0"], conv, rtol=0, atol=0)
    assert ext._clone == {"0"}


def test_stream_hands_over_fresh_values_in_run_order_and_stops_early() -> None:
    model = nn.Sequential(*tiny_cnn(), Boom()).eval()
    x = torch.randn(2, 3, 16, 16)
    ext = hc.FeatureExtractor(model, ["5", "0", "3"], 16)
    seen: list[tuple[str, torch.Tensor]] = []
    ext.stream(x, lambda layer, value: seen.append((layer.name, value.clone())))
    assert [name for name, _ in seen] == ["0", "3", "5"]  # as they run; Boom never runs
    ref = hooked_forward(tiny_cnn().eval(), x, ["0", "3", "5"])  # "0" before its in-place ReLU
    for name, value in seen:
        torch.testing.assert_close(value, ref[name], rtol=0, atol=0)
    assert seen[0][1].min() < 0


class Flattened(nn.Module):
    """Flattens its input with ``view`` and back: a channels-last tensor does not allow it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1).view(x.shape)


def test_stream_runs_channels_last_on_a_cpu_when_asked() -> None:
    model = tiny_cnn().eval()
    x = torch.randn(2, 3, 16, 16)
    ext = hc.FeatureExtractor(model, ["0", "3", "5"], 16)
    ref = hooked_forward(tiny_cnn().eval(), x, ["0", "3", "5"])
    for channels_last in (True, False):
        seen: dict[str, torch.Tensor] = {}
        keep = seen.setdefault  # clone() keeps the layout
        ext.stream(
            x, lambda layer, v, keep=keep: keep(layer.name, v.clone()), channels_last=channels_last
        )
        assert list(seen) == ["0", "3", "5"]
        for name, value in seen.items():
            assert value.is_contiguous(memory_format=torch.channels_last) == channels_last
            assert value.is_contiguous() != channels_last
            # other kernels, equal values but for rounding
            torch.testing.assert_close(value, ref[name], rtol=1e-5, atol=1e-6)
    assert x.is_contiguous()  # the caller's input is left as it was


def test_a_model_that_cannot_take_channels_last_streams_its_input_as_given() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Flattened(), nn.Conv2d(4, 5, 3)).eval()
    x = torch.randn(1, 3, 12, 12)
    ext = hc.FeatureExtractor(model, ["0", "2"], 12)
    ref = hooked_forward(model, x, ["0", "2"])
    runs = []
    model[0].register_forward_pre_hook(lambda m, args: runs.append(args[0].is_contiguous()))
    for _ in range(2):
        seen: dict[str, torch.Tensor] = {}
        keep = seen.update  # the retry's values replace those of the failed run
        ext.stream(x, lambda layer, v, keep=keep: keep({layer.name: v.clone()}), channels_last=True)
        for name in ("0", "2"):
            assert seen[name].is_contiguous()
            torch.testing.assert_close(seen[name], ref[name], rtol=0, atol=0)
    assert runs == [False, True, True]  # tried channels-last once, then as given
    sparse = hc.hypercolumns(model, x, ["0", "2"], points=20)  # the route sparse columns take
    assert sparse.features.shape == (1, 20, 9)


def test_extractor_reused_for_batches(resnet: nn.Module) -> None:
    ext = hc.FeatureExtractor(resnet, ["layer1", "layer2"], (32, 48))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 48)
        got = ext(x, as_maps=True)
        ref = hooked_forward(resnet, x, ["layer1", "layer2"])
        torch.testing.assert_close(got["layer2"], ref["layer2"], rtol=0, atol=0)


@pytest.fixture(scope="module")
def deit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64)


def test_vit_token_maps_and_class_token(deit: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    got = hc.feature_maps(deit, x, ["blocks.1", "blocks.1:cls"], as_maps=True)
    raw = hooked_forward(deit, x, ["blocks.1"])["blocks.1"]  # (B, 2 + 16, 192)
    assert raw.shape == (2, 18, 192)
    patches = raw[:, 2:].transpose(1, 2).reshape(2, 192, 4, 4)  # class + distillation dropped
    torch.testing.assert_close(got["blocks.1"], patches, rtol=0, atol=0)
    torch.testing.assert_close(got["blocks.1:cls"], raw[:, 0], rtol=0, atol=0)
    raw_got = hc.feature_maps(deit, x, ["blocks.1", "blocks.1:cls"])
    assert raw_got["blocks.1"].shape == (2, 18, 192)
    assert raw_got["blocks.1:cls"].shape == (2, 192)


def test_class_token_of_glob(deit: nn.Module) -> None:
    got = hc.feature_maps(deit, torch.randn(1, 3, 64, 64), "blocks.1?:cls")
    assert list(got) == ["blocks.10:cls", "blocks.11:cls"]


def test_class_token_of_a_cnn_layer_is_an_error(resnet: nn.Module) -> None:
    with pytest.raises(LayerNotFoundError, match=r"'layer1' has no class token"):
        hc.feature_maps(resnet, torch.randn(1, 3, 32, 32), "layer1:cls")


def test_model_left_as_found() -> None:
    model = nn.Sequential(*tiny_cnn(), Boom())
    model.train()
    model[3].eval()
    flags = [m.training for m in model.modules()]
    hc.feature_maps(model, torch.randn(2, 3, 16, 16), ["3", "5"])
    assert [m.training for m in model.modules()] == flags
    assert all_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_model_left_as_found_on_error() -> None:
    model = nn.Sequential(*tiny_cnn(), Boom(), nn.Identity())
    model.train()
    flags = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        hc.feature_maps(model, torch.randn(1, 3, 16, 16), ["7"])
    assert [m.training for m in model.modules()] == flags
    assert all_hooks(model) == 0


def test_unknown_layer_lists_closest(resnet: nn.Module) -> None:
    with pytest.raises(LayerNotFoundError, match=r"no layer named 'layer5'.*closest: layer"):
        hc.feature_maps(resnet, torch.randn(1, 3, 32, 32), "layer5")


def test_layer_given_twice(resnet: nn.Module) -> None:
    with pytest.raises(LayerNotFoundError, match="given twice"):
        hc.feature_maps(resnet, torch.randn(1, 3, 32, 32), ["layer1", "layer1"])


def test_no_layers(resnet: nn.Module) -> None:
    with pytest.raises(LayerNotFoundError, match="no layers given"):
        hc.feature_maps(resnet, torch.randn(1, 3, 32, 32), [])


def test_bad_input_shape(resnet: nn.Module) -> None:
    with pytest.raises(InputSizeError, match=r"expected images of shape \(B, C, H, W\)"):
        hc.feature_maps(resnet, torch.randn(3, 32, 32), "layer1")
    ext = hc.FeatureExtractor(resnet, "layer1", 32)
    with pytest.raises(InputSizeError, match=r"shape \(B, 3, 32, 32\), got \(1, 3, 48, 48\)"):
        ext(torch.randn(1, 3, 48, 48))


def test_layer_that_does_not_run() -> None:
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.extra = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.extra(y) if x.is_meta else y

    with pytest.raises(ModelError, match=r"layers \['extra'\] did not produce a tensor"):
        hc.feature_maps(Skips(), torch.randn(1, 3, 8, 8), ["conv", "extra"])
