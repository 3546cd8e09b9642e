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
from hypercolumns.features.linear import LayerMaps, LinearMap, layer_maps, linear_map
from hypercolumns.features.maps import FeatureExtractor, feature_maps
from hypercolumns.features.pca import PCA, fit_pca
from hypercolumns.images import Preprocessing, load_image
from hypercolumns.io.store import open_store
from hypercolumns.models import load_model
from hypercolumns.probes.kmeans import KMeans, fit_kmeans
from hypercolumns.probes.pca_image import PCAImage, fit_pca_image
from hypercolumns.probes.probe import Probe, fit_probe, load_probe
from hypercolumns.probes.similarity import Correspondence, correspond, similarity
from hypercolumns.rf.erf import ERF, erf
from hypercolumns.rf.geometry import ReceptiveField
from hypercolumns.rf.layers import Layer, layers, select

__all__ = [
    "ERF",
    "PCA",
    "Correspondence",
    "FeatureExtractor",
    "GeometryWarning",
    "HypercolumnExtractor",
    "Hypercolumns",
    "HypercolumnsError",
    "ImageError",
    "ImageWarning",
    "InputSizeError",
    "KMeans",
    "Layer",
    "LayerMaps",
    "LayerNotFoundError",
    "LinearMap",
    "MeasurementError",
    "ModelError",
    "OptionError",
    "OutputTooLargeError",
    "PCAImage",
    "Preprocessing",
    "Probe",
    "ReceptiveField",
    "StoreError",
    "WeightsError",
    "__version__",
    "correspond",
    "erf",
    "feature_maps",
    "fit_kmeans",
    "fit_pca",
    "fit_pca_image",
    "fit_probe",
    "hypercolumns",
    "layer_maps",
    "layers",
    "linear_map",
    "load_image",
    "load_model",
    "load_probe",
    "open_store",
    "select",
    "similarity",
]
