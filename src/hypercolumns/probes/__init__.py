"""Hypercolumns put to work: pixel probes, k-means clusters, PCA images, similarity and
correspondence, each built on the per-layer linear maps of :mod:`hypercolumns.features.linear`.
"""
