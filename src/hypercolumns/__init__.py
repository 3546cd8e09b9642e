"""hypercolumns: where a convolutional network looks and what it sees at every pixel.

Exact receptive fields for every layer of any PyTorch model, effective receptive fields,
feature maps of arbitrary layers, and hypercolumns (per-pixel stacks of layer activations).
"""

from hypercolumns._version import __version__
from hypercolumns.errors import (
    GeometryWarning,
    HypercolumnsError,
    ImageError,
    ImageWarning,
    InputSizeError,
    LayerNotFoundError,
    MeasurementError,
    ModelError,
    OptionError,
    OutputTooLargeError,
    StoreError,
    WeightsError,
)
from hypercolumns.features.columns import HypercolumnExtractor, Hypercolumns, hypercolumns
from hypercolumns.features.maps import FeatureExtractor, feature_maps
from hypercolumns.features.pca import PCA, fit_pca
from hypercolumns.images import Preprocessing, load_image
from hypercolumns.io.store import open_store
from hypercolumns.models import load_model
from hypercolumns.rf.erf import ERF, erf
from hypercolumns.rf.geometry import ReceptiveField
from hypercolumns.rf.layers import Layer, layers, select

__all__ = [
    "ERF",
    "PCA",
    "FeatureExtractor",
    "GeometryWarning",
    "HypercolumnExtractor",
    "Hypercolumns",
    "HypercolumnsError",
    "ImageError",
    "ImageWarning",
    "InputSizeError",
    "Layer",
    "LayerNotFoundError",
    "MeasurementError",
    "ModelError",
    "OptionError",
    "OutputTooLargeError",
    "Preprocessing",
    "ReceptiveField",
    "StoreError",
    "WeightsError",
    "__version__",
    "erf",
    "feature_maps",
    "fit_pca",
    "hypercolumns",
    "layers",
    "load_image",
    "load_model",
    "open_store",
    "select",
]
