"""Building :class:`~imgclust.train.protocol.TrainInputs` for a dataset of images from a feature source.

The feature stage computes and caches the arrays (:mod:`imgclust.features.views`); this module only decides
which arrays a training form needs and wraps them.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch

from ..augment import BatchAugment
from ..data.base import ImageDataset
from ..errors import ImgclustError
from ..features.source import FeatureSource
from ..features.views import decode_all, extract_clean, extract_views
from .protocol import ArrayLike, SplitEncoder, TrainInputs

__all__ = ["check_view_count", "prepare_inputs"]


def check_view_count(n_views: int, head_mode: bool) -> None:
    """``n_views=0`` (the clean features alone) exists in head mode only: fine-tuning needs augmented views."""
    if n_views < (0 if head_mode else 1):
        raise ImgclustError(f"n_views={n_views} is not possible {'in head mode' if head_mode else 'here'}",
                            "use n_views >= 1 (fine-tuning needs augmented views), or n_views=0 in head mode "
                            "(trainable_blocks=0)")


def prepare_inputs(dataset: ImageDataset, source: FeatureSource, *, n_trainable_blocks: int = 0, n_views: int = 4,
                   augment: BatchAugment | Sequence[BatchAugment] | None = None,
                   device: str | torch.device | None = None, on_the_fly: bool | None = None, seed: int = 0,
                   labels: np.ndarray | None = None, reference_features: ArrayLike | None = None,
                   neighbors: np.ndarray | None = None, cache_dtype: str = "float32") -> TrainInputs:
    """:class:`TrainInputs` for a dataset of images (every image must decode; pass ``dataset.subset(valid)``).

    * ``n_trainable_blocks == 0`` (head mode): V cached views of the source's features (view v augmented by
      ``augment[v % len]``), plus the clean features; with V = 0 the clean features alone (both step views
      are the clean feature).
    * ``n_trainable_blocks > 0`` and not ``on_the_fly`` (fine-tuning on a CPU): the first backbone is split
      into ``(trunk, tail)``; the feature cache stores the trunk activations of V augmented views and of the
      clean images (``encoder_id="trunk-n"``), and only the tail + head run per step.
    * ``n_trainable_blocks > 0`` and ``on_the_fly`` (default when training on CUDA): images decoded once into
      a uint8 (N, 3, S, S) tensor; each step augments on the device and runs frozen trunk + trainable tail.

    Args:
        dataset: an :class:`~imgclust.data.base.ImageDataset` whose rows all decode.
        source: the backbone(s) and extraction settings.
        n_trainable_blocks: blocks of the first backbone to fine-tune (0 = frozen backbone, head mode).
        n_views: V, augmented views cached (cached forms); 0 only in head mode.
        augment: augmentation(s); default ``BatchAugment("simclr")``.
        device: where training runs (default: the source's device); decides ``on_the_fly``'s default.
        on_the_fly: images form instead of cached trunk activations (default: ``device`` is CUDA).
        seed: seeds the cached views' augmentation.
        labels: (N,) true classes for the log.
        reference_features: (N, D) clean features if already computed (else extracted).
        neighbors: (N, k) precomputed neighbours.
        cache_dtype: stored dtype of cached trunk activations (``"float16"`` halves the disk/RAM).
    """
    check_view_count(n_views, head_mode=n_trainable_blocks == 0)
    device = torch.device(device) if device is not None else source.torch_device
    augments = [BatchAugment("simclr")] if augment is None else (
        [augment] if isinstance(augment, BatchAugment) else list(augment))
    if on_the_fly is None:
        on_the_fly = device.type == "cuda" and n_trainable_blocks > 0
    if reference_features is None:
        reference_features = extract_clean(source, dataset)
    common = dict(labels=labels, reference_features=reference_features, neighbors=neighbors)
    if n_trainable_blocks == 0 and n_views == 0:
        return TrainInputs.from_features(reference_features, labels=labels, neighbors=neighbors)
    if n_trainable_blocks == 0 and not on_the_fly:
        views = extract_views(source, dataset, augments, n_views, seed)
        return TrainInputs(views=views, clean=reference_features, feature_dim=int(reference_features.shape[1]),
                           **common)
    backbone = source.backbone(0)
    trunk, tail = backbone.split(int(n_trainable_blocks))
    # Train a copy of the tail: the backbone object (shared with feature extraction and its cache, keyed by
    # the weights file) must keep its pretrained weights.
    tail = copy.deepcopy(tail)
    if not on_the_fly:
        trunk_id = dict(encoder=trunk, encoder_id=f"trunk-{int(n_trainable_blocks)}", dtype=cache_dtype)
        views = extract_views(source, dataset, augments, n_views, seed, **trunk_id)
        clean = extract_clean(source, dataset, **trunk_id)
        for p in trunk.parameters():
            p.requires_grad_(False)
        return TrainInputs(views=views, clean=clean, encoder=SplitEncoder(None, tail),
                           feature_dim=int(backbone.feature_dim), **common)
    return TrainInputs(images=decode_all(source, dataset), augment=augments,
                       normalize=_normalizer(backbone.preprocess.mean, backbone.preprocess.std),
                       encoder=SplitEncoder(trunk, tail), feature_dim=int(backbone.feature_dim), **common)


def _normalizer(mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    def normalize(x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - m) / s

    return normalize
