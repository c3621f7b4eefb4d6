"""Exact duplicates, near-duplicates and outliers of a set of images (what photo users ask of fastdup).

- **Exact duplicates**: same content. Files: same size, then same SHA-256 of the bytes (only files that share a
  size are read, as file de-duplicators do). In-memory images: SHA-256 of the pixels (with shape and dtype).
- **Near-duplicates**: pairs among each image's ``k`` nearest neighbours by pooled backbone features
  (:func:`imgclust.neighbors.nearest_neighbors`), joined into groups (connected components). Features alone: a
  pair is near when its cosine similarity is at least ``threshold``. With perceptual hashes (the 64-bit
  difference hash of a 9x8 grayscale thumbnail, :func:`perceptual_hashes`, as photo de-duplicators use): a pair
  is near when its cosine is at least :data:`DEFAULT_COMBINED_COSINE`, or when its cosine is at least
  :data:`DEFAULT_HASH_COSINE` and its hashes differ in at most :data:`DEFAULT_HASH_DISTANCE` bits. The hash
  catches what the features blur (JPEG re-encodes, resizes, brightness changes keep the hash within a few bits
  while the cosine drops); the features catch what moves the pixels (crops); the loose cosine keeps two
  unrelated flat images with equal hashes apart. Pairs that are exact duplicates of each other are left to the
  exact list. All thresholds were chosen on CIFAR-10 *train* images with planted re-encoded / resized / cropped /
  brightened copies (``benchmarks/near_duplicates.py``) for the default backbone (other backbones spread
  cosines differently). On CIFAR-10 *test* (3,000 photos + 200 planted copies) the rule with hashes gives
  precision 0.975 / recall 0.98 (features alone: 0.81 / 0.76, missing three quarters of the JPEG quality-50
  re-encodes); its five "false" pairs are near-identical photos that CIFAR-10 itself holds twice
  (``benchmarks/results/near_duplicates.json``).
- **Outliers**: images in the sparsest neighbourhoods. Density = mean cosine similarity to the ``k`` nearest
  neighbours; an image is an outlier when its robust z-score ``0.6745 (density - median) / MAD`` is below
  ``-z_threshold`` (Iglewicz & Hoaglin's modified z-score; 3.5 is their recommended cut-off). Median and MAD
  are not dragged by the outliers themselves, and a set without stragglers yields none, unlike a fixed
  bottom percentage.

All functions return plain records indexed by row (position in the feature array / item list), so a run can write
``duplicates.csv`` and ``outliers.csv`` and show thumbnails.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from stat import S_ISREG
from typing import Any, Callable, Optional, Union

import imagehash
import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .data.decode import open_regular_file
from .errors import BadImageError, ImgclustError
from .neighbors import Neighbors, nearest_neighbors

#: Perceptual hashes of the feature rows, or a function giving the hashes of the rows asked for (computed lazily).
HashSource = Union[Sequence[Optional[str]], Callable[[np.ndarray], Sequence[Optional[str]]]]

#: Features alone (no hashes): cosine similarity of pooled features at and above which two images are
#: near-duplicates (default backbone).
DEFAULT_NEAR_DUPLICATE_COSINE = 0.85
#: With perceptual hashes: cosine at and above which two neighbours are near-duplicates whatever their hashes.
DEFAULT_COMBINED_COSINE = 0.89
#: With perceptual hashes: neighbours whose hashes differ in at most this many of their 64 bits ...
DEFAULT_HASH_DISTANCE = 10
#: ... and whose cosine is at least this are near-duplicates.
DEFAULT_HASH_COSINE = 0.7
#: Side of the perceptual hash: (side+1) x side grayscale thumbnail, side x side bits.
HASH_SIDE = 8
#: Neighbours searched per image for near-duplicates (more copies of one image than this are still joined
#: through each other).
DEFAULT_NEAR_DUPLICATE_K = 5
#: Neighbours whose mean similarity is an image's density.
DEFAULT_OUTLIER_K = 10
#: Robust z-score below minus this marks an outlier (Iglewicz & Hoaglin, 1993).
DEFAULT_OUTLIER_Z = 3.5
_MAD_TO_SIGMA = 0.6745  # MAD of a normal distribution, in standard deviations
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are (near-)copies of each other.

    Attributes:
        kind: ``"exact"`` or ``"near"``.
        items: row indices, ascending (at least two).
        similarity: exact: 1.0; near: the lowest cosine similarity among the pairs that joined the group.
        digest: exact: the SHA-256 shared by the items; near: "".
    """

    kind: str
    items: tuple[int, ...]
    similarity: float
    digest: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "items": list(self.items)}


@dataclass(frozen=True)
class Outlier:
    """One image in a sparse neighbourhood.

    Attributes:
        item: row index.
        density: mean cosine similarity to its k nearest neighbours.
        z: robust z-score of the density (negative: sparser than typical).
    """

    item: int
    density: float
    z: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_digests(paths: Sequence[str | os.PathLike]) -> list[str | None]:
    """SHA-256 of each file that shares its size with another file; None for the rest and for unreadable files.

    A file with a unique size cannot have an exact duplicate, so it is never read.
    """
    sizes: list[int | None] = []
    for p in paths:
        try:
            info = os.stat(p)
        except OSError:
            sizes.append(None)
            continue
        sizes.append(info.st_size if S_ISREG(info.st_mode) else None)  # never a pipe or device: reading blocks
    count = defaultdict(int)
    for s in sizes:
        count[s] += 1
    digests: list[str | None] = []
    for p, s in zip(paths, sizes, strict=True):
        digests.append(_file_sha256(p) if s is not None and count[s] > 1 else None)
    return digests


def _file_sha256(path: str | os.PathLike) -> str | None:
    digest = hashlib.sha256()
    try:
        with open_regular_file(path) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def array_digests(images: np.ndarray) -> list[str]:
    """SHA-256 of each image's pixels (its row of ``images``, with shape and dtype), e.g. for a uint8 (N,H,W,C)."""
    images = np.asarray(images)
    header = f"{images.shape[1:]}{images.dtype}".encode()
    return [hashlib.sha256(header + np.ascontiguousarray(row).tobytes()).hexdigest() for row in images]


def dataset_digests(dataset: Any) -> list[str | None]:
    """Content digests of an image dataset's items: pixels for in-memory arrays, file bytes for files.

    Args:
        dataset: an :class:`imgclust.data.ImageDataset`: an array dataset (``images`` attribute), a subset of one
            (``parent`` and ``indices``), or one whose ``items`` are file paths.
    """
    if hasattr(dataset, "parent") and hasattr(dataset, "indices"):
        parent = dataset_digests(dataset.parent)
        return [parent[i] for i in np.asarray(dataset.indices)]
    if isinstance(getattr(dataset, "images", None), np.ndarray):
        return list(array_digests(dataset.images))
    return file_digests(list(dataset.items))


def exact_duplicates(digests: Sequence[str | None]) -> list[DuplicateGroup]:
    """Groups of rows with the same digest (None: never a duplicate), ordered by their first row."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(digests):
        if d is not None:
            rows[d].append(i)
    groups = [DuplicateGroup("exact", tuple(r), 1.0, d) for d, r in rows.items() if len(r) > 1]
    return sorted(groups, key=lambda g: g.items[0])


def perceptual_hashes(dataset: Any, rows: Sequence[int] | np.ndarray | None = None) -> list[str | None]:
    """Difference hash (64 bits, 16 hex digits) of each image, read back with ``dataset.load``.

    Args:
        dataset: an :class:`imgclust.data.ImageDataset`.
        rows: the dataset row of each feature row (a feature set's ``valid_indices``); None: every row.

    Returns:
        One hash per entry of ``rows``; None for an image that can no longer be read.
    """
    rows = range(len(dataset)) if rows is None else rows
    hashes: list[str | None] = []
    for row in rows:
        try:
            hashes.append(str(imagehash.dhash(dataset.load(int(row)), hash_size=HASH_SIDE)))
        except BadImageError:
            hashes.append(None)
    return hashes


def _hash_bits(hashes: Sequence[str | None], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) uint64 hashes and (N,) bool "has a hash", checked against the N feature rows."""
    if len(hashes) != n:
        raise ImgclustError(f"{len(hashes)} perceptual hashes for {n} feature rows",
                            fix="pass perceptual_hashes(dataset, feature_set.valid_indices): one per feature row")
    try:
        bits = np.asarray([int(h, 16) if h is not None else 0 for h in hashes], dtype=np.uint64)
    except (TypeError, ValueError, OverflowError):
        raise ImgclustError("perceptual hashes must be 64-bit hex strings (or None)",
                            fix="compute them with imgclust.duplicates.perceptual_hashes") from None
    return bits, np.asarray([h is not None for h in hashes])


def _near_rule(threshold: float, with_hashes: bool) -> str:
    """The near-duplicate rule in words, for the report."""
    rule = f"neighbours with cosine >= {threshold}"
    if with_hashes:
        rule += (f", or cosine >= {DEFAULT_HASH_COSINE} and difference hashes at most {DEFAULT_HASH_DISTANCE} "
                 f"of {HASH_SIDE * HASH_SIDE} bits apart")
    return rule


def near_duplicates(features: np.ndarray | torch.Tensor, threshold: float | None = None,
                    k: int = DEFAULT_NEAR_DUPLICATE_K, digests: Sequence[str | None] | None = None,
                    hashes: HashSource | None = None, **neighbor_options: Any) -> list[DuplicateGroup]:
    """Groups of images whose features (and perceptual hashes, when given) are nearly the same (module docstring).

    Args:
        features: (N, D) pooled features (raw; normalised inside).
        threshold: cosine similarity at and above which two neighbours are near-duplicates whatever their
            hashes; None: :data:`DEFAULT_NEAR_DUPLICATE_COSINE` without hashes, :data:`DEFAULT_COMBINED_COSINE`
            with them.
        k: neighbours searched per image (capped at N-1).
        digests: content digests of the rows (:func:`dataset_digests`); pairs of exact copies are left out.
        hashes: perceptual hashes of the rows (:func:`perceptual_hashes`), or None (features only).
        neighbor_options: passed to :func:`imgclust.neighbors.nearest_neighbors` (``backend``, ``device``...).

    Returns:
        Groups ordered by their first row; each group's similarity is the lowest cosine among its joining pairs.
    """
    threshold = _checked_threshold(threshold, hashes is not None)
    n = int(features.shape[0])
    if n < 2:
        return []
    return near_duplicates_from_neighbors(nearest_neighbors(features, min(k, n - 1), **neighbor_options),
                                          threshold, digests, hashes)


def _checked_threshold(threshold: float | None, with_hashes: bool) -> float:
    if threshold is None:
        return DEFAULT_COMBINED_COSINE if with_hashes else DEFAULT_NEAR_DUPLICATE_COSINE
    if not -1 <= threshold <= 1:
        raise ImgclustError(f"near-duplicate threshold must be a cosine similarity in [-1, 1]; got {threshold}",
                            fix=f"use e.g. {DEFAULT_NEAR_DUPLICATE_COSINE}")
    return float(threshold)


def near_duplicates_from_neighbors(found: Neighbors, threshold: float, digests: Sequence[str | None] | None = None,
                                   hashes: HashSource | None = None,
                                   hash_distance: int = DEFAULT_HASH_DISTANCE,
                                   hash_cosine: float = DEFAULT_HASH_COSINE) -> list[DuplicateGroup]:
    """:func:`near_duplicates` on neighbours already searched (one search can serve many thresholds).

    Args:
        found: each row's nearest other rows and their cosine similarities.
        threshold: cosine at and above which a neighbour pair is near whatever the hashes.
        digests, hashes: as in :func:`near_duplicates`.
        hash_distance, hash_cosine: with hashes, a pair is also near when its hashes differ in at most
            ``hash_distance`` bits and its cosine is at least ``hash_cosine``.
    """
    n = found.indices.shape[0]
    anchors = np.repeat(np.arange(n), found.indices.shape[1])
    others = found.indices.ravel()
    sims = found.similarities.ravel()
    keep = sims >= threshold
    if callable(hashes):
        # only rows in a pair the hashes can still decide are hashed: decoding every image again is the cost
        undecided = np.unique(np.concatenate([anchors, others])[np.tile((sims >= hash_cosine) & ~keep, 2)])
        computed = dict(zip(undecided.tolist(), hashes(undecided)))
        hashes = [computed.get(row) for row in range(n)]
    if hashes is not None:
        bits, has_hash = _hash_bits(hashes, n)
        distance = np.bitwise_count(bits[anchors] ^ bits[others])
        keep |= (sims >= hash_cosine) & (distance <= hash_distance) & has_hash[anchors] & has_hash[others]
    if digests is not None:
        digest_array = np.asarray([d if d is not None else f"\0{i}" for i, d in enumerate(digests)], dtype=object)
        keep &= digest_array[anchors] != digest_array[others]
    anchors, others, sims = anchors[keep], others[keep], sims[keep]
    if anchors.size == 0:
        return []
    graph = coo_matrix((np.ones(anchors.size), (anchors, others)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    lowest: dict[int, float] = {}
    for a, s in zip(component[anchors], sims):
        lowest[int(a)] = min(lowest.get(int(a), 1.0), float(s))
    members: dict[int, list[int]] = defaultdict(list)
    for row in np.unique(np.concatenate([anchors, others])):
        members[int(component[row])].append(int(row))
    groups = [DuplicateGroup("near", tuple(rows), round(lowest[c], 4)) for c, rows in members.items()]
    return sorted(groups, key=lambda g: g.items[0])


def neighbor_density(features: np.ndarray | torch.Tensor, k: int = DEFAULT_OUTLIER_K, **neighbor_options: Any
                     ) -> np.ndarray:
    """(N,) mean cosine similarity of each row to its k nearest other rows (k capped at N-1)."""
    n = int(features.shape[0])
    if n < 2:
        raise ImgclustError(f"outliers need at least 2 images; got {n}", fix="add more images")
    found = nearest_neighbors(features, min(k, n - 1), **neighbor_options)
    return found.similarities.mean(axis=1)


def robust_z(values: np.ndarray) -> np.ndarray:
    """Iglewicz & Hoaglin's modified z-score, 0.6745 (x - median) / MAD; zeros when MAD is 0."""
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    if mad == 0:
        return np.zeros_like(values)
    return _MAD_TO_SIGMA * (values - median) / mad


def outliers(features: np.ndarray | torch.Tensor, k: int = DEFAULT_OUTLIER_K, z_threshold: float = DEFAULT_OUTLIER_Z,
             **neighbor_options: Any) -> list[Outlier]:
    """Images whose neighbourhood density is abnormally low (module docstring), sparsest first.

    Args:
        features: (N, D) pooled features.
        k: neighbours whose mean similarity is the density.
        z_threshold: an outlier has robust z-score < -z_threshold.
        neighbor_options: passed to :func:`imgclust.neighbors.nearest_neighbors`.
    """
    if z_threshold <= 0:
        raise ImgclustError(f"outlier z_threshold must be > 0; got {z_threshold}", fix=f"use e.g. {DEFAULT_OUTLIER_Z}")
    return _outliers_of(neighbor_density(features, k, **neighbor_options), z_threshold)


def _outliers_of(density: np.ndarray, z_threshold: float) -> list[Outlier]:
    z = robust_z(density)
    rows = np.flatnonzero(z < -z_threshold)
    rows = rows[np.argsort(density[rows], kind="stable")]
    return [Outlier(int(i), round(float(density[i]), 4), round(float(z[i]), 3)) for i in rows]


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`find_duplicates_and_outliers` found (row indices into the features / items)."""

    exact: list[DuplicateGroup]
    near: list[DuplicateGroup]
    outliers: list[Outlier]
    near_duplicate_threshold: float
    outlier_rule: str
    near_duplicate_rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"exact": [g.to_dict() for g in self.exact], "near": [g.to_dict() for g in self.near],
                "outliers": [o.to_dict() for o in self.outliers],
                "near_duplicate_threshold": self.near_duplicate_threshold,
                "near_duplicate_rule": self.near_duplicate_rule, "outlier_rule": self.outlier_rule}


def find_duplicates_and_outliers(features: np.ndarray | torch.Tensor, digests: Sequence[str | None] | None = None,
                                 threshold: float | None = None, outlier_k: int = DEFAULT_OUTLIER_K,
                                 outlier_z: float = DEFAULT_OUTLIER_Z, hashes: HashSource | None = None,
                                 **neighbor_options: Any) -> DuplicateReport:
    """Exact duplicates (when ``digests`` are given), near-duplicates and outliers of one set of images.

    Args:
        features: (N, D) pooled features of the images, row i = item i.
        digests: content digests of the same rows (:func:`dataset_digests`), or None (embeddings: no exact list).
        threshold: near-duplicate cosine threshold (see :func:`near_duplicates`); None: the default for
            features alone or with hashes.
        outlier_k, outlier_z: see :func:`outliers`.
        hashes: perceptual hashes of the same rows (:func:`perceptual_hashes`); or a function of an array of
            rows returning their hashes, called once for only the rows whose pairs the hashes decide (cosine
            between ``hash_cosine`` and ``threshold``: far fewer images decoded again); or None (embeddings:
            features only, which misses most JPEG re-encodes; module docstring).
        neighbor_options: passed to :func:`imgclust.neighbors.nearest_neighbors`.
    """
    n = int(features.shape[0])
    if digests is not None and len(digests) != n:
        raise ImgclustError(f"{len(digests)} digests for {n} feature rows",
                            fix="pass the digests of the same images as the features, in the same order")
    if hashes is not None and not callable(hashes):
        _hash_bits(hashes, n)  # checks the count and format before the search
    threshold = _checked_threshold(threshold, hashes is not None)
    if outlier_z <= 0:
        raise ImgclustError(f"outlier_z must be > 0; got {outlier_z}", fix=f"use e.g. {DEFAULT_OUTLIER_Z}")
    near, found_outliers = [], []
    if n > 1:  # one neighbour search serves both lists
        near_k, outlier_k = min(DEFAULT_NEAR_DUPLICATE_K, n - 1), min(outlier_k, n - 1)
        found = nearest_neighbors(features, max(near_k, outlier_k), **neighbor_options)
        near = near_duplicates_from_neighbors(
            Neighbors(found.indices[:, :near_k], found.similarities[:, :near_k]), threshold, digests, hashes)
        found_outliers = _outliers_of(found.similarities[:, :outlier_k].mean(axis=1), outlier_z)
    return DuplicateReport(
        exact=exact_duplicates(digests) if digests is not None else [],
        near=near,
        outliers=found_outliers,
        near_duplicate_threshold=threshold,
        near_duplicate_rule=_near_rule(threshold, hashes is not None),
        outlier_rule=f"robust z-score of the mean cosine to the {outlier_k} nearest neighbours < -{outlier_z}")


def duplicate_rows(groups: Sequence[DuplicateGroup], items: Sequence[str]) -> list[dict[str, Any]]:
    """One CSV row per image of each group: ``group`` (1-based), ``kind``, ``similarity``, ``item``.

    Args:
        groups: exact and/or near groups.
        items: the item (path) of each feature row.
    """
    return [{"group": g, "kind": group.kind, "similarity": group.similarity, "item": items[i]}
            for g, group in enumerate(groups, start=1) for i in group.items]


def outlier_rows(found: Sequence[Outlier], items: Sequence[str]) -> list[dict[str, Any]]:
    """One CSV row per outlier, sparsest first: ``rank`` (1-based), ``item``, ``density``, ``z``."""
    return [{"rank": r, "item": items[o.item], "density": o.density, "z": o.z}
            for r, o in enumerate(found, start=1)]
