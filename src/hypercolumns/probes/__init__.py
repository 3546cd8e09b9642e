"""Hypercolumns put to work: pixel probes, k-means clusters, PCA images, similarity and
correspondence, each built on the per-layer linear maps of :mod:`hypercolumns.features.linear`.
"""

from hypercolumns.probes.kmeans import KMeans, fit_kmeans
from hypercolumns.probes.pca_image import PCAImage, fit_pca_image

__all__ = ["KMeans", "PCAImage", "fit_kmeans", "fit_pca_image"]
