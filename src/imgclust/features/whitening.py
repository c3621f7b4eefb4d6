"""Augmentation-invariant whitening of backbone features.

Directions along which an image's features move when it is cropped, flipped or recoloured carry little class
information, yet k-means and the neighbour graphs of the layout methods weigh them like any other. Within-class
covariance normalisation (WCCN; Hatch, Kajarekar & Stolcke 2006), with each image as its own class and its
augmented views as the class's samples, divides them down: with ``S_w`` the covariance of the views around their
image's mean, the features become ``(x - mean) (S_w + shrinkage * tr(S_w)/d * I)^(-1/2)``, L2-normalised. No K and
no label is involved; ``S_w`` needs the views of a few thousand images, whatever the data set's size.

One :class:`Whitening` per representation space (several backbones: each space whitened, L2-normalised and
concatenated, as :func:`~imgclust.features.source.combine_spaces` combines them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..augment import BatchAugment
from ..data.base import ImageDataset
from .source import FeatureSource
from .views import extract_views

__all__ = ["WHITENINGS", "Whitening", "fit_whitening", "sample_rows", "whiten"]

#: ``whitening`` values: ``auto`` (``augment`` for methods that cluster the clean features alone, ``none`` for the
#: ones that train on views of their own), ``augment`` or ``none``.
WHITENINGS = ("auto", "augment", "none")
#: Augmented views per sampled image, images sampled to estimate ``S_w``, and the shrinkage towards the identity
#: (a multiple of ``S_w``'s mean eigenvalue): docs/whitening.md says how they were chosen.
N_VIEWS = 4
MAX_ROWS = 1000
SHRINKAGE = 10.0
#: The sample and its views do not follow the run's seed: they are a property of the images, like their features,
#: so every run on the same images (another seed, another method) reuses the cached views.
SEED = 0


@dataclass
class Whitening:
    """The fitted transform of one space: ``unit((unit(x) - mean) @ matrix)``."""

    mean: np.ndarray
    matrix: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, clean: np.ndarray, views: Sequence[np.ndarray],
            shrinkage: float = SHRINKAGE) -> "Whitening":
        """Fit on every row's ``features`` (the mean) and a sample's ``clean`` features with their ``views``
        (``S_w``: each view and the clean row around their mean).

        Args:
            features: (N, d) features of all rows.
            clean: (n, d) features of the sampled rows.
            views: ``V`` arrays (n, d), the sampled rows' augmented views.
            shrinkage: added to ``S_w``'s eigenvalues, as a multiple of their mean.
        """
        samples = np.stack([_unit(clean), *(_unit(v) for v in views)]).astype(np.float64)
        spread = (samples - samples.mean(axis=0, keepdims=True)).reshape(-1, samples.shape[-1])
        within = spread.T @ spread / len(spread)
        eigenvalues, eigenvectors = np.linalg.eigh(within)
        floor = shrinkage * float(np.trace(within)) / within.shape[0]
        matrix = (eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + floor)) @ eigenvectors.T
        mean = _unit(np.asarray(features, dtype=np.float64)).mean(axis=0)
        return cls(mean=mean.astype(np.float32), matrix=matrix.astype(np.float32))

    def apply(self, features: np.ndarray) -> np.ndarray:
        """The whitened, L2-normalised rows of ``features`` (N, d)."""
        return _unit((_unit(np.asarray(features, dtype=np.float32)) - self.mean) @ self.matrix)

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays to save under ``prefix`` (see :meth:`from_state`)."""
        return {f"{prefix}.mean": self.mean, f"{prefix}.matrix": self.matrix}

    @classmethod
    def from_state(cls, tensors: dict[str, Any], prefix: str) -> "Whitening":
        return cls(mean=np.asarray(tensors[f"{prefix}.mean"], dtype=np.float32),
                   matrix=np.asarray(tensors[f"{prefix}.matrix"], dtype=np.float32))


def fit_whitening(source: FeatureSource, dataset: ImageDataset, features: np.ndarray,
                  spaces: Sequence[tuple[int, int]], seed: int = SEED, n_views: int = N_VIEWS,
                  max_rows: int = MAX_ROWS) -> list[Whitening]:
    """One :class:`Whitening` per space of ``features`` (the clean features of every row of ``dataset``), from
    ``n_views`` SimCLR views of at most ``max_rows`` rows sampled with ``seed`` (the views are cached like any
    features)."""
    rows = sample_rows(len(dataset), seed, max_rows)
    views = extract_views(source, dataset.subset(rows), BatchAugment("simclr"), n_views, seed)
    return [Whitening.fit(features[:, a:b], features[rows, a:b], [v[:, a:b] for v in views])
            for a, b in spaces]


def sample_rows(n: int, seed: int = SEED, max_rows: int = MAX_ROWS) -> np.ndarray:
    """The sorted rows of ``n`` whose views ``fit_whitening`` extracts: all of them, or ``max_rows`` drawn with
    ``seed``."""
    return np.sort(np.random.default_rng(seed).choice(n, min(max_rows, n), replace=False))


def whiten(features: np.ndarray, spaces: Sequence[tuple[int, int]], whitenings: Sequence[Whitening]
           ) -> np.ndarray:
    """Each space of ``features`` whitened (and so L2-normalised), side by side in the same columns."""
    if len(whitenings) != len(spaces):
        raise ValueError(f"{len(whitenings)} whitenings for {len(spaces)} spaces")
    return np.concatenate([w.apply(features[:, a:b]) for w, (a, b) in zip(whitenings, spaces)], axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
