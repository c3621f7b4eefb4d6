"""Feature stage: run a backbone (or part of it) over a dataset, cached on disk with a manifest."""

from .cache import FeatureCache, FeatureSet, cache_key
from .extract import decode_images, extract_features, iter_decoded

__all__ = ["FeatureCache", "FeatureSet", "cache_key", "decode_images", "extract_features", "iter_decoded"]
