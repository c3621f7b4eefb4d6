"""Feature stage: run a backbone (or part of it) over a dataset, cached on disk with a manifest."""

from .cache import FeatureCache, FeatureSet, cache_key
from .extract import PRECISIONS, decode_images, extract_features, iter_decoded, resolve_precision

__all__ = ["PRECISIONS", "FeatureCache", "FeatureSet", "cache_key", "decode_images", "extract_features", "iter_decoded",
           "resolve_precision"]
