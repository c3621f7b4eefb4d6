"""Training inputs from a feature source: cached augmented views, clean inputs, all images decoded.

Training runs on rows that all decode (the estimator passes ``dataset.subset(valid)``): a row that does not
is an error here, not a skipped file.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import distributed
from ..backbones.base import Preprocess
from ..data.base import ImageDataset
from ..errors import ImgclustError
from .extract import decode_images
from .source import FeatureSource, combine_spaces

__all__ = ["decode_all", "extract_clean", "extract_views"]

#: A batched augmentation ``augment(x in [0, 1] (B,3,S,S), generator) -> x`` with an ``augment_id`` attribute
#: (:class:`imgclust.augment.BatchAugment`).
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def extract_views(source: FeatureSource, dataset: ImageDataset, augments: Augment | Sequence[Augment],
                  n_views: int, seed: int, *, encoder: torch.nn.Module | None = None, encoder_id: str = "backbone",
                  dtype: str = "float32") -> list[np.ndarray]:
    """``n_views`` augmented views of every row, each computed once and cached: view ``v`` is
    ``augments[v % len(augments)]`` seeded from ``(seed, v)``.

    Without ``encoder``: the source's features (one backbone: its features; several: the L2-normalised spaces
    concatenated, as :meth:`FeatureSource.encode`). With ``encoder`` (e.g. a trunk of the first backbone): its
    outputs, on the first backbone's preprocessing.

    Raises:
        ImgclustError: a row did not decode.
    """
    augments = [augments] if callable(augments) else list(augments)
    if not augments and n_views > 0:
        raise ValueError("augmented views need at least one augmentation")
    return [_all_rows(dataset, f"view {v}", source, encoder, encoder_id, dtype,
                      augment=augments[v % len(augments)], view=v, seed=seed) for v in range(n_views)]


def extract_clean(source: FeatureSource, dataset: ImageDataset, *, encoder: torch.nn.Module | None = None,
                  encoder_id: str = "backbone", dtype: str = "float32") -> np.ndarray:
    """The un-augmented inputs of every row (see :func:`extract_views` for ``encoder``), cached.

    Raises:
        ImgclustError: a row did not decode.
    """
    return _all_rows(dataset, "clean inputs", source, encoder, encoder_id, dtype)


def decode_all(source_or_preprocess: FeatureSource | Preprocess, dataset: ImageDataset, *,
               num_workers: int | None = None, progress: bool | None = None) -> torch.Tensor:
    """Every image of ``dataset`` as one uint8 (N, 3, S, S) tensor, preprocessed by the source's first backbone
    (or by the given :class:`~imgclust.backbones.base.Preprocess`). ``num_workers``/``progress`` default to the
    source's settings.

    Raises:
        ImgclustError: an image did not decode.
    """
    if isinstance(source_or_preprocess, FeatureSource):
        source = source_or_preprocess
        source.prepare_decoding(dataset)
        preprocess = source.backbone().preprocess
        num_workers = source.num_workers if num_workers is None else num_workers
        progress = source.progress if progress is None else progress
    else:
        preprocess = source_or_preprocess
    progress = (True if progress is None else progress) and distributed.is_main_process()
    images, _, bad = decode_images(dataset, preprocess, num_workers=num_workers, progress=progress)
    _refuse_undecodable(bad, len(dataset), "images")
    return images


def _all_rows(dataset: ImageDataset, what: str, source: FeatureSource, encoder: torch.nn.Module | None,
              encoder_id: str, dtype: str, **view: Any) -> np.ndarray:
    """One view of every row: the encoder's outputs, or the source's combined spaces."""
    if encoder is not None:
        sets = [source.extract(dataset, encoder=encoder, encoder_id=encoder_id, dtype=dtype, **view)]
    else:
        sets = [source.extract(dataset, index=i, dtype=dtype, **view) for i in range(source.n_spaces)]
    features, _, skipped = combine_spaces(sets)
    _refuse_undecodable(skipped, len(dataset), what)
    return features


def _refuse_undecodable(bad: list[dict[str, Any]], n: int, what: str) -> None:
    if bad:
        raise ImgclustError(f"{what}: {len(bad)} of {n} training image(s) could not be decoded, e.g. "
                            f"{bad[0]['item']}: {bad[0]['reason']}",
                            "train on the rows that decoded: pass dataset.subset(valid_indices) (the estimator "
                            "does this)")
