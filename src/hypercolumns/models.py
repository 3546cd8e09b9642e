"""Build models from short specs, load local weights safely, and read what a model expects.

Specs:

* ``timm:NAME``: ``timm.create_model(NAME, pretrained=..., **kwargs)``
* ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=..., **kwargs)``
* ``package.module:factory``: an importable callable
* ``path/to/file.py:factory``: a callable defined in a Python file

What a model expects of its input (the role of timm's ``resolve_data_config``) is read here and
nowhere else: :func:`input_channels`, :func:`normalization`, :func:`default_input_size`. timm
models carry it in ``model.pretrained_cfg``; torchvision classification models take the ImageNet
mean and std that all their weights use; other models get mean 0, std 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import pickle
import re
import socket
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from hypercolumns.errors import ModelError, WeightsError, closest

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalization",
    "default_input_size",
    "input_channels",
    "load_model",
    "load_weights",
    "model_file",
    "normalization",
    "weights_digest",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

FORMS = ("timm:NAME", "torchvision:NAME", "package.module:factory", "path/to/file.py:factory")
_NETWORK_ERRORS = (
    "URLError",
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "HTTPError",
    "gaierror",
    "MaxRetryError",
    "NewConnectionError",
    "socket.timeout",
    "TimeoutError",
)


def load_model(
    spec: str,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model named by ``spec``, in eval mode.

    Args:
        spec: ``"timm:NAME"``, ``"torchvision:NAME"``, ``"package.module:factory"`` or
            ``"path/to/file.py:factory"``.
        pretrained: Download the library's pretrained weights (timm and torchvision specs).
        weights: A local state dict (``.safetensors``, ``.pt`` or ``.pth``) to load; read with
            ``weights_only=True``, so it cannot run code.
        **kwargs: Passed to the factory (e.g. ``num_classes=10``, ``output_stride=8``).

    Raises:
        ModelError: Unknown spec or name (with the closest names), a factory that fails, or
            pretrained weights that cannot be downloaded.
        WeightsError: The weights file cannot be read or does not fit the model.
    """
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise ModelError(_unknown_spec(spec))
    if kind == "timm":
        model = _timm(name, pretrained, kwargs)
    elif kind == "torchvision":
        model = _torchvision(name, pretrained, kwargs)
    else:
        if pretrained:
            raise ModelError(
                f"pretrained=True works with timm: and torchvision: specs only; "
                f"for {spec!r} pass weights=FILE (--weights FILE)"
            )
        factory = _factory(kind, name)
        try:
            model = _call(spec, factory, kwargs)
        except ModelError:
            raise
        except Exception as err:
            raise ModelError(f"building {spec!r}{_with(kwargs)} failed: {_reason(err)}") from err
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def _unknown_spec(spec: str) -> str:
    hint = ""
    if spec and ":" not in spec:
        names = [f"timm:{n}" for n in closest(spec, _timm_names(), 3)]
        names += [f"torchvision:{n}" for n in closest(spec, _torchvision_names(), 3)]
        hint = f"; did you mean {', '.join(names)}?" if names else ""
    return f"cannot read model spec {spec!r}: use one of {', '.join(FORMS)}{hint}"


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def _with(kwargs: Mapping[str, Any]) -> str:
    return f" with arguments {dict(kwargs)}" if kwargs else ""


def _reason(err: BaseException) -> str:
    """``Type: first line of the message``, saying so when there is no message."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else "(no message)"
    return f"{type(err).__name__}: {first[:300]}"


def _call(spec: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise ModelError(f"cannot build {spec!r} with arguments {dict(kwargs)}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _pretrained_error(spec: str, err: Exception) -> ModelError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelError(
        f"cannot download pretrained weights for {spec!r} (no model hub reachable: "
        f"{textwrap.shorten(reason, 160, placeholder=' ...')}); pass a local state dict with "
        "weights=FILE (--weights FILE)"
    )


def _is_network_error(err: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names = {c.__name__ for c in type(e).__mro__}
        if names & set(_NETWORK_ERRORS) or isinstance(e, ConnectionError | TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    return False


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline_unless_reachable(pretrained: bool) -> Iterator[None]:
    """Put huggingface_hub in offline mode (cached weights only) when its endpoint cannot be
    reached within seconds: its own retries would take about a minute and print 20 lines."""
    if not pretrained:
        yield
        return
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE or _reachable(host):
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _timm(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    spec = f"timm:{name}"
    if not timm.is_model(name):
        near = closest(name, _timm_names())
        raise ModelError(
            f"timm has no model {name!r}"
            + (f"; closest: {', '.join(near)}" if near else "")
            + " (see timm.list_models())"
        )
    try:
        with _hub_offline_unless_reachable(pretrained):
            return _call(
                spec, lambda **kw: timm.create_model(name, pretrained=pretrained, **kw), kwargs
            )
    except ModelError:
        raise
    except Exception as err:
        if pretrained and _is_network_error(err):
            raise _pretrained_error(spec, err) from err
        if pretrained and isinstance(err, RuntimeError | OSError):
            raise _pretrained_error(spec, err) from err
        raise ModelError(f"timm could not build {name!r}{_with(kwargs)}: {_reason(err)}") from err


def _torchvision(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    spec = f"torchvision:{name}"
    names = _torchvision_names()
    if name not in names:
        near = closest(name, names)
        raise ModelError(
            f"torchvision has no model {name!r}"
            + (f"; closest: {', '.join(near)}" if near else "")
            + " (see torchvision.models.list_models())"
        )
    weights = "DEFAULT" if pretrained else None
    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters and not pretrained:
        kwargs = {"weights_backbone": None, **kwargs}  # random means random: no backbone download
    try:
        return _call(
            spec, lambda **kw: torchvision.models.get_model(name, weights=weights, **kw), kwargs
        )
    except ModelError:
        raise
    except Exception as err:
        if pretrained and (_is_network_error(err) or isinstance(err, OSError)):
            raise _pretrained_error(spec, err) from err
        raise ModelError(
            f"torchvision could not build {name!r}{_with(kwargs)}: {_reason(err)}"
        ) from err


def model_file(spec: str) -> str | None:
    """The Python file a ``path/to/file.py:factory`` spec names (as written), else ``None``."""
    module, sep, _ = spec.partition(":")
    if sep and (module.endswith(".py") or "/" in module or "\\" in module):
        return module
    return None


def _factory(module: str, attr: str) -> Callable[..., Any]:
    spec = f"{module}:{attr}"
    if model_file(spec) is not None:
        path = Path(module)
        if not path.is_file():
            raise ModelError(f"no such file {str(path)!r} in model spec {spec!r}")
        mod_name = f"_hypercolumns_user_{abs(hash(path.resolve()))}"
        loader = importlib.util.spec_from_file_location(mod_name, path)
        if loader is None or loader.loader is None:
            raise ModelError(f"cannot import {str(path)!r} as Python (model spec {spec!r})")
        mod = importlib.util.module_from_spec(loader)
        sys.modules[mod_name] = mod
        try:
            loader.loader.exec_module(mod)
        except Exception as err:
            sys.modules.pop(mod_name, None)
            raise ModelError(
                f"importing {str(path)!r} failed: {type(err).__name__}: {err}"
            ) from err
    else:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            raise ModelError(
                f"cannot import module {module!r} of model spec {spec!r}: {err}; "
                f"accepted forms: {', '.join(FORMS)}"
            ) from err
    factory = getattr(mod, attr, None)
    if not callable(factory):
        near = closest(attr, [n for n in dir(mod) if not n.startswith("_")])
        raise ModelError(
            f"{module!r} has no callable {attr!r}"
            + (f"; closest: {', '.join(near)}" if near else "")
        )
    return factory  # type: ignore[no-any-return]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _refused(path: Path, err: Exception) -> str:
    """Why a checkpoint was not loaded: it holds Python objects, which only unpickling (that
    is, running code from the file) could rebuild; and how to turn it into plain tensors."""
    found = re.findall(r"GLOBAL ([\w.]+)", str(err))
    objects = f" ({', '.join(dict.fromkeys(found))})" if found else ""
    return (
        f"cannot read weights file {str(path)!r}: it holds Python objects{objects} besides "
        "tensors, and was not unpickled because that could run code from the file. If you "
        'trust it, convert it once to plain tensors: python -c "import torch; from '
        "safetensors.torch import save_file; sd = torch.load('FILE', weights_only=False); "
        "save_file({k: v.contiguous() for k, v in sd.items()}, 'FILE.safetensors')\" "
        "(take sd['state_dict'] if it is a training checkpoint)"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        elif suffix in (".pt", ".pth", ".bin", ".ckpt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"weights file {str(path)!r}: expected .safetensors, .pt or .pth")
    except WeightsError:
        raise
    except pickle.UnpicklingError as err:
        raise WeightsError(_refused(path, err)) from err
    except Exception as err:
        first = _ANSI.sub("", str(err)).strip().splitlines()
        reason = first[0][:300] if first else type(err).__name__
        what = " (truncated, or not a PyTorch checkpoint?)" if suffix != ".safetensors" else ""
        raise WeightsError(f"cannot read weights file {str(path)!r}{what}: {reason}") from err
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def _listing(label: str, keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{label} ({len(keys)}): {', '.join(keys[:limit])}{more}"


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``model``, strictly.

    Raises:
        WeightsError: The file cannot be read, or its keys or shapes do not match; the message
            lists missing, unexpected and mis-shaped keys.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = [
            _listing(label, keys)
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped (file vs model)", misshaped),
            )
            if keys
        ]
        raise WeightsError(f"weights {str(path)!r} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        warnings.warn(
            f"weights {str(path)!r} hold NaN or infinite values: "
            f"{_listing('tensors', bad)}; features computed with them will not be finite",
            RuntimeWarning,
            stacklevel=2,
        )


# -- what a model expects ----------------------------------------------------------------------


@dataclass(frozen=True)
class Normalization:
    """How a model expects its input to be normalised.

    Attributes:
        mean: Per-channel mean subtracted from ``[0, 1]`` pixel values.
        std: Per-channel divisor.
        interpolation: Resampling filter for resizing: ``bilinear``, ``bicubic`` or ``nearest``.
        source: Where the numbers come from: ``timm pretrained_cfg``, ``torchvision ImageNet
            default``, ``none`` or ``user``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    source: str = "none"


def _cfg(model: nn.Module | None) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg if isinstance(cfg, dict) else {}


def normalization(model: nn.Module | None) -> Normalization:
    """The normalisation ``model`` was trained with (see the module docstring for the rules)."""
    cfg = _cfg(model)
    if cfg.get("mean") is not None and cfg.get("std") is not None:
        interp = str(cfg.get("interpolation") or "bilinear")
        return Normalization(
            tuple(float(v) for v in cfg["mean"]),
            tuple(float(v) for v in cfg["std"]),
            interp if interp in INTERPOLATIONS else "bilinear",
            "timm pretrained_cfg",
        )
    if model is not None and type(model).__module__.startswith("torchvision."):
        return Normalization(
            IMAGENET_MEAN, IMAGENET_STD, "bilinear", "torchvision ImageNet default"
        )
    return Normalization((0.0,), (1.0,), "bilinear", "none")


def input_channels(model: nn.Module) -> int:
    """Input channels the model expects: from its timm config, else its first 2-D convolution.

    Raises:
        ModelError: Neither says (no config and no 2-D convolution).
    """
    size = _cfg(model).get("input_size")
    if isinstance(size, tuple | list):
        return int(size[0])
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            return int(module.in_channels)
    raise ModelError(
        f"{type(model).__name__} has no 2-D convolution, so it does not look like an image "
        "model; if it takes (B, N, H, W) images, pass in_channels=N (--in-channels N)"
    )


def default_input_size(model: nn.Module) -> tuple[int, int]:
    """``(H, W)`` the model was trained at: its timm config's, else 224x224."""
    size = _cfg(model).get("input_size")
    if isinstance(size, tuple | list):
        return int(size[1]), int(size[2])
    return 224, 224


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
