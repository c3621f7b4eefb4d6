"""Backbone stage: pretrained feature extractors with their preprocessing.

``create_backbone(name, weights, pooling)`` returns a :class:`Backbone` (an ``nn.Module``) mapping normalised images
(N,3,S,S) to pooled features (N,D); ``Backbone.preprocess`` turns PIL images into uint8 (3,S,S) tensors and
``Backbone.normalize`` scales them; ``Backbone.split(n)`` gives a frozen trunk and a trainable tail.
"""

from .base import RANDOM_WEIGHTS, Backbone, Preprocess
from .registry import (DEFAULT_BACKBONE, POOLINGS, TIMM_ALIASES, available_backbones, check_backbone_name,
                       check_pooling, create_backbone)
from .weights import file_sha256, load_state_dict

__all__ = [
    "DEFAULT_BACKBONE",
    "POOLINGS",
    "RANDOM_WEIGHTS",
    "TIMM_ALIASES",
    "Backbone",
    "Preprocess",
    "available_backbones",
    "check_backbone_name",
    "check_pooling",
    "create_backbone",
    "file_sha256",
    "load_state_dict",
]
