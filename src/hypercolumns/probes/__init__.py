"""Hypercolumns put to work: pixel probes, k-means clusters, PCA images, similarity and
correspondence, each built on the per-layer linear maps of :mod:`hypercolumns.features.linear`.

``hc.similarity`` is not re-exported here, where ``similarity`` names its module.
"""

from hypercolumns.probes.similarity import Correspondence, correspond

__all__ = ["Correspondence", "correspond"]
