"""Hypercolumns put to work: pixel probes, k-means clusters, PCA images, similarity and
correspondence, each built on the per-layer linear maps of :mod:`hypercolumns.features.linear`.

Pixel probes: :func:`fit_probe` learns a per-pixel head (:mod:`.heads`) from hypercolumns at
sampled pixels (:mod:`.samples`); the :class:`Probe` predicts densely, is scored
(:mod:`.metrics`), saved and read back (:func:`load_probe`). :func:`skimage_features` gives
scikit-image's ``TrainableSegmenter`` hypercolumns (:mod:`.scikit`). Similarity and
correspondence are in :mod:`.similarity` (``hc.similarity`` is not re-exported here, where
``similarity`` names its module).
"""

from hypercolumns.probes.heads import Head, fit_head
from hypercolumns.probes.kmeans import KMeans, fit_kmeans
from hypercolumns.probes.pca_image import PCAImage, fit_pca_image
from hypercolumns.probes.probe import Probe, build_model, fit_probe, load_probe
from hypercolumns.probes.samples import (
    Example,
    ExampleStream,
    Samples,
    Standardizer,
    examples,
    sample,
    stream_examples,
)
from hypercolumns.probes.scikit import skimage_features
from hypercolumns.probes.similarity import Correspondence, correspond

__all__ = [
    "Correspondence",
    "Example",
    "ExampleStream",
    "Head",
    "KMeans",
    "PCAImage",
    "Probe",
    "Samples",
    "Standardizer",
    "build_model",
    "correspond",
    "examples",
    "fit_head",
    "fit_kmeans",
    "fit_pca_image",
    "fit_probe",
    "load_probe",
    "sample",
    "skimage_features",
    "stream_examples",
]
