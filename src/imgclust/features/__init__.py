"""Feature stage: run a backbone (or part of it) over a dataset, cached on disk with a manifest.

:class:`FeatureSource` bundles the backbone(s) and every extraction setting; :class:`Encoding` names the kind of
model input (backbone features, trunk activations, pixels).
"""

from .cache import FeatureCache, FeatureSet, cache_key
from .encoding import Encoding
from .extract import PRECISIONS, decode_images, extract_features, iter_decoded, resolve_precision
from .source import BackboneSpec, EncodedFeatures, FeatureSource, combine_spaces, resolve_device

__all__ = ["PRECISIONS", "BackboneSpec", "EncodedFeatures", "Encoding", "FeatureCache", "FeatureSet",
           "FeatureSource", "cache_key", "combine_spaces", "decode_images", "extract_features", "iter_decoded",
           "resolve_device", "resolve_precision"]
