"""What a network sees: feature maps of chosen layers and hypercolumns built from them.

``maps`` captures layer outputs with only the part of the network that is needed; ``columns``
stacks them into per-pixel hypercolumns, dense or at points; ``bands`` does the same for images
too large for memory, a band of rows at a time; ``linear`` applies per-pixel linear maps of
hypercolumns at each layer's own resolution, without forming them; ``_resample`` holds the
bilinear kernels.
"""

from hypercolumns.features.columns import HypercolumnExtractor, Hypercolumns, hypercolumns
from hypercolumns.features.linear import LayerMaps, LinearMap, LinearMapper, layer_maps, linear_map
from hypercolumns.features.maps import FeatureExtractor, feature_maps
from hypercolumns.features.pca import PCA, fit_pca

__all__ = [
    "PCA",
    "FeatureExtractor",
    "HypercolumnExtractor",
    "Hypercolumns",
    "LayerMaps",
    "LinearMap",
    "LinearMapper",
    "feature_maps",
    "fit_pca",
    "hypercolumns",
    "layer_maps",
    "linear_map",
]
