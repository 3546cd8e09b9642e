"""Pixel probes: a per-pixel head (classification or regression) learnt from hypercolumns at
sampled pixels, predicted densely where the layers live.

:func:`fit_probe` samples hypercolumns (stratified by class, seeded; or reads them from a
sparse store), fits per-layer standardisation on them and trains a head
(:mod:`~hypercolumns.probes.heads`). :class:`Probe` predicts dense ``(B, K, H, W)`` outputs: a
linear head, with the standardisation folded in, goes through
:class:`~hypercolumns.features.linear.LinearMapper` (each block applied at its layer's own
resolution, only the ``K`` outputs resampled); an MLP is not linear, so it reads explicit
hypercolumns a band of rows at a time. A probe records the model spec, the resolved layers
(names and channels), the alignment, the standardisation, the class names, the
preprocessing and a digest of the weights it was fitted with; it refuses other layers or
other weights. ``save`` / :func:`load_probe` use one ``.safetensors`` file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hypercolumns._atomic import staged
from hypercolumns._version import __version__
from hypercolumns.errors import (
    LayerNotFoundError,
    ModelError,
    OptionError,
    WeightsError,
)
from hypercolumns.features.align import Align, check_align
from hypercolumns.features.linear import LinearMap, LinearMapper
from hypercolumns.io.metadata import describe_weights
from hypercolumns.io.store import SparseStore, open_store
from hypercolumns.models import load_model, normalization, weights_digest
from hypercolumns.probes.colour import colour_target, grey_input
from hypercolumns.probes.heads import HEADS, Head, fit_head
from hypercolumns.probes.metrics import Confusion, SquaredError
from hypercolumns.probes.samples import (
    Example,
    Images,
    Standardizer,
    Targets,
    examples,
    sample,
    stream_examples,
)
from hypercolumns.rf.layers import LayerSpec

__all__ = ["FORMAT", "Probe", "build_model", "fit_probe", "load_probe"]

FORMAT = "hypercolumns-probe"
FORMAT_VERSION = 1
_KEY = "hypercolumns_probe"
_TASKS = ("classify", "regress")
_PREP = ("resize", "crop", "mean", "std")
_BAND_BYTES = 256 * 2**20  # explicit hypercolumns of one band of rows (MLP heads)

Progress = Callable[[int, int], None] | None


def build_model(
    spec: str,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    seed: int | None = 0,
) -> nn.Module:
    """``load_model(spec, ...)`` in eval mode, its random weights (neither ``weights`` nor
    ``pretrained``) drawn with ``seed``, as stores and probes record them; the global random
    state is left as found."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = load_model(spec, pretrained=pretrained, weights=weights, **dict(model_kwargs or {}))
    return net.eval()


def _fingerprint(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Cheap identity of the weights' storage and version counters (in-place updates bump
    them), so the digest is computed again only when they may have changed."""
    return tuple((t.data_ptr(), t._version) for t in model.state_dict().values())


class Probe:
    """A pixel probe: a head on standardised hypercolumns of a model's layers.

    Made by :func:`fit_probe` or :func:`load_probe`; use :meth:`predict`, :meth:`segment`,
    :meth:`evaluate`, :meth:`save`.

    Attributes:
        head: The trained :class:`~hypercolumns.probes.heads.Head`.
        standardizer: Per-channel ``mean`` and ``std`` of the samples.
        meta: What the probe records (see :meth:`save`).
    """

    def __init__(
        self,
        head: Head,
        standardizer: Standardizer,
        meta: dict[str, Any],
        model: nn.Module | None = None,
    ) -> None:
        self.head = head
        self.standardizer = standardizer
        self.meta = meta
        self._model: nn.Module | None = None
        self._mappers: dict[tuple[int, ...], LinearMapper] = {}
        self._map: LinearMap | None = None
        self._verified: tuple[tuple[int, int], ...] | None = None
        if model is not None:
            self.attach(model)

    # -- what it is ------------------------------------------------------------------------------

    @property
    def task(self) -> str:
        """``"classify"`` or ``"regress"``."""
        return str(self.meta["task"])

    @property
    def classes(self) -> list[str]:
        """Class names in label order (classification), or the names of the regressed
        channels."""
        return list(self.meta["classes"])

    @property
    def layers(self) -> list[str]:
        """The resolved layer names, in channel order."""
        return [rec["name"] for rec in self.meta["layers"]]

    @property
    def slices(self) -> dict[str, slice]:
        """Layer name to its channels in the hypercolumn."""
        out, start = {}, 0
        for rec in self.meta["layers"]:
            out[rec["name"]] = slice(start, start + int(rec["channels"]))
            start += int(rec["channels"])
        return out

    @property
    def outputs(self) -> int:
        """``K``: classes or regressed channels."""
        return self.head.outputs

    @property
    def model(self) -> nn.Module:
        """The model the probe reads (attached by :func:`fit_probe`, :func:`load_probe` or
        :meth:`attach`)."""
        if self._model is None:
            raise ModelError("this probe has no model: pass one to load_probe(path, model=...)")
        return self._model

    def __repr__(self) -> str:
        return (
            f"Probe(task={self.task!r}, head={self.head.kind!r}, outputs={self.outputs}, "
            f"layers={self.layers}, model={self.meta['model']!r})"
        )

    # -- the model -------------------------------------------------------------------------------

    def _describe(self) -> str:
        return ", ".join(f"{r['name']} ({r['channels']} ch)" for r in self.meta["layers"])

    def attach(self, model: nn.Module) -> None:
        """Use ``model``: refused when its layers (names or channel counts) differ from those
        the probe was fitted on. Its weights are checked against the recorded digest before the
        first prediction."""
        size = tuple(self.meta["input_size"])
        try:
            mapper = LinearMapper(
                model, self.layers, size, in_channels=int(self.meta["in_channels"]),
                align=self.meta["align"],
            )  # fmt: skip
        except LayerNotFoundError as err:
            raise LayerNotFoundError(
                f"this probe was fitted on {self.meta['model']} layers {self._describe()}; the "
                f"model given does not have them ({err})"
            ) from err
        got = {layer.name: layer.channels for layer in mapper.layers}
        want = {r["name"]: int(r["channels"]) for r in self.meta["layers"]}
        if got != want:
            diff = ", ".join(
                f"{name}: {want[name]} ch, the model's {got.get(name, 'missing')}"
                for name in want
                if got.get(name) != want[name]
            )
            raise LayerNotFoundError(
                f"this probe was fitted on {self.meta['model']} layers {self._describe()}; the "
                f"model given differs ({diff or 'other layers'}): a probe file from another "
                "model or layer set"
            )
        self._model = model
        self._mappers = {(int(self.meta["in_channels"]), *size): mapper}
        self._verified = None

    def _check_weights(self) -> None:
        model = self.model
        fp = _fingerprint(model)
        if fp == self._verified:
            return
        digest = weights_digest(model)
        if digest != self.meta["weights_sha256"]:
            raise WeightsError(
                f"this probe was fitted with other weights of {self.meta['model']} "
                f"({self.meta['weights']}, sha256 {self.meta['weights_sha256'][:12]}); the "
                f"model's are sha256 {digest[:12]}: load the weights it was fitted with"
            )
        self._verified = fp

    def _mapper(self, x: torch.Tensor) -> LinearMapper:
        key = tuple(int(v) for v in x.shape[1:])
        if key not in self._mappers:
            self._mappers[key] = LinearMapper(
                self.model, self.layers, key[1:], in_channels=key[0], align=self.meta["align"]
            )
        return self._mappers[key]

    def linear_map(self) -> LinearMap:
        """The linear head with the standardisation folded in, one block per layer."""
        if self.head.kind != "linear":
            raise OptionError(f"a {self.head.kind} head is not a linear map of hypercolumns")
        if self._map is None:
            st = self.standardizer
            self._map = LinearMap.split(
                self.head.tensors["weight"], self.slices, self.head.tensors["bias"],
                mean=st.mean, std=st.std,
            )  # fmt: skip
        return self._map

    # -- using it --------------------------------------------------------------------------------

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x)
            raise OptionError(f"expected float images (B, C, H, W), got {got}")
        x = x if x.dim() == 4 else x[None]
        channels = int(self.meta["in_channels"])
        if x.shape[1] != channels:
            raise OptionError(
                f"this probe's model takes {channels} input channels, the images have {x.shape[1]}"
            )
        device = next(iter(self.model.parameters()), torch.empty(0)).device
        return x.to(device)

    def predict(self, x: torch.Tensor, *, rows: int | None = None) -> torch.Tensor:
        """Dense logits (classification) or values (regression) of model inputs ``x``
        ``(B, C, H, W)`` (a colorization probe takes the grey images), ``(B, K, H, W)``.

        Args:
            x: Model inputs, preprocessed as for fitting.
            rows: Linear heads: one image computed a band of this many rows at a time, for
                images too large to run whole.

        Raises:
            WeightsError: The model's weights are not those the probe was fitted with.
        """
        x = self._inputs(x)
        self._check_weights()
        mapper = self._mapper(x)
        with torch.no_grad():
            if self.head.kind == "linear":
                return mapper(x, self.linear_map(), rows=rows)
            return self._predict_explicit(mapper, x)

    def _predict_explicit(self, mapper: LinearMapper, x: torch.Tensor) -> torch.Tensor:
        """A non-linear head on explicit hypercolumns, a band of rows at a time."""
        maps = mapper.maps(x)
        bsz, (height, width) = x.shape[0], mapper.input_size
        rows = max(1, _BAND_BYTES // max(1, bsz * width * mapper.channels * 4 * 3))
        out = torch.empty(bsz, self.outputs, height, width, device=x.device)
        xs = torch.arange(width, dtype=torch.float64)
        for r0 in range(0, height, rows):
            ys = torch.arange(r0, min(height, r0 + rows), dtype=torch.float64)
            grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
            cols = maps.columns(grid.expand(bsz, -1, -1))
            if self.meta.get("normalize") == "l2":
                cols = cols / cols.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            z = self.standardizer(cols)
            band = self.head(z).view(bsz, len(ys), width, self.outputs).permute(0, 3, 1, 2)
            out[:, :, r0 : r0 + len(ys)] = band
        return out

    def segment(self, x: torch.Tensor, *, rows: int | None = None) -> torch.Tensor:
        """Labels ``(B, H, W)`` int64 of model inputs ``x`` ``(B, C, H, W)``."""
        if self.task != "classify":
            raise OptionError("segment() labels pixels: this probe regresses values, use predict()")
        return self.predict(x, rows=rows).argmax(1)

    def evaluate(
        self,
        images: Images,
        targets: Targets = None,
        *,
        progress: Progress = None,
    ) -> dict[str, Any]:
        """Scores on images with their targets (as :func:`fit_probe` takes them; a
        colorization probe takes colour images and no targets).

        Returns:
            Classification: ``pixel_accuracy``, ``per_class_iou`` (name to IoU, ``None`` for a
            class absent from targets and predictions), ``miou`` (the mean over the classes
            present in the targets or the predictions), ``pixels``, ``images``. Regression:
            ``rmse``, ``psnr`` (dB, peak 1: values in ``[0, 1]``), ``values``, ``images``.
            Pixels labelled ``ignore_index`` are not counted.
        """
        prep = self.meta["preprocessing"]
        items = stream_examples(
            self.model, images, targets, resize=prep["resize"], crop=prep["crop"]
        )  # one image at a time in memory, however many are scored
        ignore = int(self.meta["ignore_index"])
        score: Confusion | SquaredError
        score = Confusion(self.classes) if self.task == "classify" else SquaredError(1.0)
        for i, ex in enumerate(items):
            if self.meta.get("colorize"):
                ex = _colorized(self.model, ex)
            if ex.target is None:
                raise OptionError(f"{ex.name} has no target to evaluate against")
            if isinstance(score, Confusion):
                _check_labels(ex, self.outputs, self.classes, ignore)
                score.add(ex.target, self.segment(ex.image)[0], ex.target != ignore)
            else:
                _check_values(ex, self.outputs, "this probe's")
                score.add(ex.target, self.predict(ex.image)[0])
            if progress is not None:
                progress(i + 1, len(items))
        return score.scores()

    # -- saving ----------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the probe as one ``.safetensors`` file, atomically: the head's tensors,
        ``standardizer.mean`` / ``.std``, and :attr:`meta` as JSON under the header key
        ``hypercolumns_probe`` (model spec and kwargs, weights in words and their SHA-256,
        layers with their channels, align, class names, preprocessing, task, head, package
        version)."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise OptionError(f"a probe is saved as NAME.safetensors, got {str(path)!r}")
        tensors = {f"head.{k}": v.contiguous().cpu() for k, v in self.head.tensors.items()}
        tensors["standardizer.mean"] = self.standardizer.mean.contiguous().cpu()
        tensors["standardizer.std"] = self.standardizer.std.contiguous().cpu()
        with staged(path) as (tmp,):
            save_file(tensors, str(tmp), metadata={_KEY: json.dumps(self.meta)})
        return path


def load_probe(path: str | Path, model: nn.Module | None = None) -> Probe:
    """Read a probe written by :meth:`Probe.save`.

    Args:
        path: The ``.safetensors`` file.
        model: The model to use; by default built from the probe's record (its spec, kwargs,
            and its weights: the seeded random ones, the file, or the pretrained ones).

    Raises:
        OptionError: Not a probe file.
        LayerNotFoundError: ``model``'s layers (names or channel counts) differ from the
            probe's.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise OptionError(f"cannot read probe {str(path)!r}: {err}") from err
    if _KEY not in header:
        raise OptionError(f"{str(path)!r} is not a probe file (no {_KEY!r} metadata)")
    meta = json.loads(header[_KEY])
    if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise OptionError(
            f"{str(path)!r} is a probe of format {meta.get('format')} "
            f"{meta.get('format_version')}; this version reads {FORMAT} {FORMAT_VERSION}"
        )
    head = Head(
        meta["head"], {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    )
    st = Standardizer(tensors["standardizer.mean"], tensors["standardizer.std"])
    if model is None:
        model = _model_of(meta, str(path))
    return Probe(head, st, meta, model)


def _model_of(meta: Mapping[str, Any], where: str) -> nn.Module:
    spec = meta.get("model")
    if not spec or meta.get("weights") == "as given":
        raise ModelError(
            f"{where} was fitted on a model given as an object ({spec}, weights as given): "
            "pass it, with the same weights, as model="
        )
    return build_model(
        spec, model_kwargs=meta.get("model_kwargs"), weights=meta.get("weights_file"),
        pretrained=bool(meta.get("pretrained")), seed=meta.get("weights_seed"),
    )  # fmt: skip


# -- fitting -------------------------------------------------------------------------------------


def _check_labels(ex: Example, k: int | None, names: Sequence[str], ignore: int) -> None:
    assert ex.target is not None
    if ex.target.dim() != 2 or ex.target.is_floating_point():
        raise OptionError(
            f"the target of {ex.name} must be (H, W) int labels for classification, got "
            f"{ex.target.dtype} {tuple(ex.target.shape)}"
        )
    outside = ex.target < 0 if k is None else (ex.target < 0) | (ex.target >= k)
    bad = ex.target[(ex.target != ignore) & outside]
    if bad.numel() and k is None:
        raise OptionError(
            f"{ex.name} has label {int(bad[0])}: labels are 0 and up, or ignore_index={ignore}"
        )
    if bad.numel():
        assert k is not None
        listing = ", ".join(f"{i}: {n}" for i, n in enumerate(names[:8]))
        more = ", ..." if len(names) > 8 else ""
        raise OptionError(
            f"{ex.name} has label {int(bad[0])}, outside the {k} classes ({listing}{more}) "
            f"and not ignore_index={ignore}"
        )


def _check_values(ex: Example, k: int | None, whose: str) -> None:
    assert ex.target is not None
    if ex.target.dim() != 3 or not ex.target.is_floating_point():
        raise OptionError(
            f"the target of {ex.name} must be (K, H, W) float values for regression, got "
            f"{ex.target.dtype} {tuple(ex.target.shape)}"
        )
    if k is not None and ex.target.shape[0] != k:
        raise OptionError(
            f"the regression target of {ex.name} has {ex.target.shape[0]} channels, {whose} {k}"
        )


def _colorized(model: nn.Module, ex: Example) -> Example:
    """``ex`` as a colorization example: the grey input, its colours the target."""
    if ex.image.shape[1] != 3:
        raise OptionError(
            f"colorization needs colour (3-channel) inputs, {ex.name} has {ex.image.shape[1]}"
        )
    norm = normalization(model)
    return Example(
        ex.name,
        grey_input(ex.image, norm.mean, norm.std),
        colour_target(ex.image, norm.mean, norm.std),
    )


def _weights_record(
    model: nn.Module | str,
    model_kwargs: Mapping[str, Any] | None,
    weights: str | Path | None,
    pretrained: bool,
    weights_seed: int,
) -> tuple[nn.Module, dict[str, Any]]:
    if isinstance(model, str):
        net = build_model(
            model, model_kwargs=model_kwargs, weights=weights, pretrained=pretrained,
            seed=weights_seed,
        )  # fmt: skip
        random = weights is None and not pretrained
        seeded = weights_seed if random else None
        return net, {
            "model": model,
            "model_kwargs": dict(model_kwargs or {}),
            "weights": describe_weights(model, weights, pretrained, seeded),
            "weights_seed": weights_seed if random else None,
            "weights_file": None if weights is None else str(weights),
            "pretrained": pretrained,
        }
    if not isinstance(model, nn.Module):
        raise OptionError(f"model must be an nn.Module or a spec string, got {type(model)}")
    return model, {
        "model": f"{type(model).__module__}:{type(model).__name__}",
        "model_kwargs": {},
        "weights": "as given",
        "weights_seed": None,
        "weights_file": None,
        "pretrained": False,
    }


_RANDOM = re.compile(r"random \(seed (\d+)\)")


def _store_model(config: Mapping[str, Any]) -> dict[str, Any]:
    """How the store's model was built, from its configuration."""
    run, words = config["run"], str(config.get("weights"))
    seed = _RANDOM.fullmatch(words)
    return {
        "model": run["model"],
        "model_kwargs": dict(run.get("model_kwargs") or {}),
        "weights": words,
        "weights_seed": int(seed[1]) if seed else None,
        "weights_file": None if seed or words.startswith("pretrained") else words,
        "pretrained": words.startswith("pretrained"),
    }


def _from_store(
    store: SparseStore,
    model: nn.Module | str | None,
    layers: LayerSpec | None,
    ignore_index: int,
    progress: Progress,
) -> tuple[nn.Module, dict[str, Any], torch.Tensor, torch.Tensor, list[str], dict[str, Any]]:
    """The samples of a sparse store with labels, and the model that made them."""
    where = str(store.path)
    run = store.config["run"]
    if not run.get("labels"):
        raise OptionError(
            f"store {where!r} has no labels: write it from a CSV list with a mask column "
            "(hypercolumns extract list.csv --points N --out NAME.parquet)"
        )
    names = list(run["layers"])
    if layers is not None:
        given = [layers] if isinstance(layers, str | int) else list(layers)
        if [str(v) for v in given] != names:
            raise OptionError(
                f"store {where!r} holds layers {names}; leave layers unset or give those, got "
                f"{given}"
            )
    record = _store_model(store.config)
    if model is None or isinstance(model, str):
        if isinstance(model, str) and model != record["model"]:
            raise OptionError(f"store {where!r} was written by {record['model']}, not {model}")
        net = build_model(
            record["model"], model_kwargs=record["model_kwargs"],
            weights=record["weights_file"], pretrained=record["pretrained"],
            seed=record["weights_seed"],
        )  # fmt: skip
    else:
        net = model
        record["model"] = f"{type(model).__module__}:{type(model).__name__}"
    if weights_digest(net) != run["weights_sha256"]:
        raise WeightsError(
            f"store {where!r} was written with other weights ({store.config.get('weights')}, "
            f"sha256 {run['weights_sha256'][:12]}) than the model given"
        )
    feats, labels = [], []
    keys = list(store)
    if not keys:
        raise OptionError(f"store {where!r} holds no images")
    for i, key in enumerate(keys):
        entry = store[key]
        assert entry.labels is not None
        keep = torch.from_numpy(entry.labels.astype("int64"))
        valid = (keep != ignore_index) & (keep >= 0)
        feats.append(torch.from_numpy(np.array(entry.features, np.float32))[valid])
        labels.append(keep[valid])
        if progress is not None:
            progress(i + 1, len(keys))
    first = store.record(keys[0])
    size = first.get("preprocessing", {}).get("size") or first.get("shape", [None, 64, 64])[-2:]
    extra = {
        "input_size": [int(v) for v in size],
        "align": run["align"],
        "preprocessing": {k: run["preprocessing"].get(k) for k in _PREP},
        "images": len(keys),
    }
    return net, record, torch.cat(feats), torch.cat(labels), names, extra


def fit_probe(
    model: nn.Module | str | None,
    images: Images | SparseStore,
    targets: Targets = None,
    layers: LayerSpec | None = None,
    *,
    points: int = 1024,
    task: str = "classify",
    head: str = "linear",
    ignore_index: int = 255,
    seed: int = 0,
    align: Align = "rf",
    classes: Sequence[str] | None = None,
    normalize: str | None = None,
    colorize: bool = False,
    resize: str | int | None = None,
    crop: str | None = None,
    l2: float = 1e-4,
    hidden: int = 256,
    max_iter: int = 200,
    model_kwargs: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    weights_seed: int = 0,
    progress: Progress = None,
) -> Probe:
    """Learn a per-pixel head from hypercolumns at sampled pixels.

    Args:
        model: An ``nn.Module`` (left as found), or a spec (``"torchvision:vgg16"``) built with
            ``model_kwargs`` and ``weights`` / ``pretrained``, else random weights drawn with
            ``weights_seed`` (as stores do), so that the probe can be used again by name.
            ``None`` with a store: the store's model.
        images: As :func:`~hypercolumns.probes.samples.examples` takes them (tensors, paths, a
            CSV list with ``path`` and ``mask`` columns), or a sparse store with labels
            (``NAME.parquet`` written by ``hypercolumns extract list.csv --points N``, or an
            opened ``SparseStore``): its hypercolumns are used as they are, not recomputed.
        targets: ``(N, H, W)`` int labels (``ignore_index`` for unlabelled pixels) or
            ``(N, K, H, W)`` float values, or a sequence of ``(H, W)`` / ``(K, H, W)`` tensors
            or label-image paths; ``None`` with a CSV list's masks, a store or ``colorize``.
        layers: As for :func:`~hypercolumns.features.columns.hypercolumns`; with a store, its
            layers (leave unset).
        points: Pixels sampled per image (stratified by class, seeded).
        task: ``"classify"`` (multinomial logistic regression) or ``"regress"`` (ridge).
        head: ``"linear"``, or ``"mlp"`` (one hidden layer of ``hidden`` units; predicted on
            explicit hypercolumns in bands of rows, since it is not linear).
        ignore_index: Label of unlabelled pixels, never sampled nor scored.
        seed: Seed of the pixel sampling (image ``i`` uses ``seed + i``) and of the MLP.
        align: ``"rf"`` or ``"half-pixel"``.
        classes: Class names, in label order; labels must lie in ``[0, len(classes))``. By
            default ``"0"`` to the largest label seen.
        normalize: ``None``; ``"l2"`` (each hypercolumn scaled to unit norm) only with
            ``head="mlp"``: a linear map at the layers' resolution cannot do it exactly.
        colorize: Regression on colour images: the model sees each image's grey version and
            the targets are its own colour in ``[0, 1]`` (leave ``targets`` unset).
        resize: Applied to image files (and masks), as ``load_image`` does; recorded.
        crop: Likewise.
        l2: Weight of the L2 penalty of the head.
        hidden: Hidden units of the MLP.
        max_iter: L-BFGS iterations.
        model_kwargs: Factory keyword arguments, with a spec.
        weights: A local state dict, with a spec.
        pretrained: The library's pretrained weights, with a spec.
        weights_seed: Seed of random weights, with a spec.
        progress: ``progress(done, total)`` after each image.

    Raises:
        OptionError: Bad options; labels outside the classes; no labelled pixel; a class with
            no pixel in the samples; regression targets whose channel counts differ.
        ImageError: A mask whose size differs from its image, an unreadable file.
    """
    if task not in _TASKS:
        raise OptionError(f"task must be 'classify' or 'regress', got {task!r}")
    if head not in HEADS:
        raise OptionError(f"head must be one of {', '.join(map(repr, HEADS))}, got {head!r}")
    check_align(align)
    if normalize not in (None, "l2"):
        raise OptionError(f"normalize must be None or 'l2', got {normalize!r}")
    if normalize == "l2" and head == "linear":
        raise OptionError(
            "normalize='l2' scales each hypercolumn after sampling, which does not commute "
            "with a per-pixel linear map: use head='mlp' (explicit hypercolumns), or no "
            "normalize (per-layer standardisation is always fitted)"
        )
    if colorize and (task != "regress" or targets is not None):
        raise OptionError("colorize=True is regression with no targets: task='regress'")
    store = images if isinstance(images, SparseStore) else None
    if store is None and isinstance(images, str | Path) and str(images).endswith(".parquet"):
        opened = open_store(images)
        if not isinstance(opened, SparseStore):  # pragma: no cover - named .parquet
            raise OptionError(f"{images} is not a sparse store")
        store = opened
    if store is not None:
        if task != "classify" or targets is not None or colorize:
            raise OptionError(
                f"a store holds labels of its points: fit task='classify' with no targets, "
                f"not task={task!r}"
            )
        net, record, features, y, names, extra = _from_store(
            store, model, layers, ignore_index, progress
        )
        slices, channels_of = store.slices, {n: s.stop - s.start for n, s in store.slices.items()}
        align = extra["align"]
        in_channels = int(store.config["run"]["preprocessing"].get("channels") or 3)
        counts_images = extra["images"]
        if not y.numel():
            raise OptionError(
                f"no labelled pixel in store {str(store.path)!r}: every point is "
                f"ignore_index={ignore_index} or negative"
            )
    else:
        if model is None:
            raise OptionError("model is needed unless images is a sparse store")
        if layers is None:
            raise OptionError("layers are needed (names, indices, globs or 'all')")
        net, record = _weights_record(model, model_kwargs, weights, pretrained, weights_seed)
        assert not isinstance(images, SparseStore)
        items = examples(net, images, targets, resize=resize, crop=crop)
        if colorize:
            items = [_colorized(net, ex) for ex in items]
        missing = [ex.name for ex in items if ex.target is None]
        if missing:
            raise OptionError(f"{missing[0]} has no target (give targets, or a CSV mask column)")
        if task == "classify":
            labels_k = len(classes) if classes is not None else None
            for ex in items:
                _check_labels(ex, labels_k, classes or [], ignore_index)
        else:
            k0 = int(items[0].target.shape[0]) if items[0].target.dim() == 3 else None  # type: ignore[union-attr]
            for ex in items:
                _check_values(ex, k0, f"those of {items[0].name}")
        s = sample(
            net, items, layers, points=points, seed=seed, align=align,
            ignore_index=ignore_index, progress=progress,
        )  # fmt: skip
        assert s.targets is not None
        features, y, slices = s.features, s.targets, s.slices
        names = [layer.name for layer in s.layers]
        channels_of = {layer.name: layer.channels for layer in s.layers}
        in_channels = int(items[0].image.shape[1])
        counts_images = len(items)
        extra = {
            "input_size": [int(v) for v in items[0].image.shape[-2:]],
            "align": align,
            "preprocessing": {"resize": resize, "crop": crop},
        }
    if normalize == "l2":
        features = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if task == "classify":
        seen = int(y.max()) + 1
        k = len(classes) if classes is not None else seen
        names_k = list(classes) if classes is not None else [str(i) for i in range(k)]
        counts = torch.bincount(y, minlength=k)
        empty = [i for i in range(k) if counts[i] == 0]
        if empty:
            i = empty[0]
            raise OptionError(
                f"class {names_k[i]!r} (label {i}) has no pixel in the training samples"
                + (f" (nor do {len(empty) - 1} more)" if len(empty) > 1 else "")
                + ": label some of its pixels, or leave it out of the classes"
            )
    else:
        k = int(y.shape[1])
        names_k = ["r", "g", "b"] if colorize and k == 3 else [f"value {i}" for i in range(k)]
    st = Standardizer.fit(features)
    trained = fit_head(
        st(features), y, task=task, head=head, outputs=k, l2=l2, hidden=hidden,
        max_iter=max_iter, seed=seed,
    )  # fmt: skip
    norm = normalization(net)
    prep = dict(extra["preprocessing"])
    prep.setdefault("mean", list(norm.mean))
    prep.setdefault("std", list(norm.std))
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": task,
        "head": head,
        "classes": names_k,
        "ignore_index": ignore_index,
        "colorize": colorize,
        "normalize": normalize,
        **record,
        "weights_sha256": weights_digest(net),
        "layers": [{"name": n, "channels": int(channels_of[n])} for n in names],
        "align": extra["align"],
        "in_channels": in_channels,
        "input_size": extra["input_size"],
        "preprocessing": prep,
        "samples": int(features.shape[0]),
        "images": counts_images,
        "points": points if store is None else None,
        "seed": seed,
        "l2": l2,
        "hidden": hidden if head == "mlp" else None,
        "hypercolumns_version": __version__,
    }
    assert [slices[n] for n in names] == list(Probe(trained, st, meta).slices.values())
    return Probe(trained, st, meta, net)
