"""The baseline: spherical k-means on L2-normalised features (cosine geometry, unit-norm centres).

Backends:

- ``"faiss"`` (used by ``"auto"`` when faiss is importable): ``faiss.Kmeans(spherical=True)``, which renormalises
  the centres after every update and assigns by inner product, i.e. true spherical k-means. Random
  initialisation (faiss's default), iterations until the objective stops changing or ``max_iter``.
  ``max_points_per_centroid`` is raised to N: faiss's default of 256 would silently train on a random subset of
  256·K points (2,560 for K=10).
- ``"sklearn"``: ``sklearn.cluster.KMeans`` (k-means++ init) on the unit vectors, i.e. Euclidean k-means on the
  sphere, whose centres are then renormalised. On unit vectors this is close to, not identical with, spherical
  k-means.

Whatever the backend, the returned labels are the argmax-cosine assignment to the returned unit centres, so
:func:`predict` on the training features reproduces them exactly.

Scale: past ``approximate_above`` rows (default 100,000) the centres are trained on a random sample of
``max(approximate_above, 256·K)`` rows — faiss's own recipe for large sets; 256 points per centre place it to
well under a percent of the objective — and then every row is assigned to them exactly, block by block, so a
memory-mapped feature cache is never loaded whole. The fit reports how many rows trained the centres.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans

from ..errors import ImgclustError
from ..neighbors import APPROXIMATE_ABOVE, load_faiss, normalize_block, normalize_features
from .base import Assignment, ClusterModel, FitContext, FitResult
from .options import OptionSet, options_from_signature
from .registry import register_method

BACKENDS = ("auto", "faiss", "sklearn")

# Softmax temperature turning cosine similarities to the K centres into a confidence. Deep features put most
# cosines to the centres within a few tenths of each other; with 0.05 a margin of 0.1 over the runner-up gives
# ≈0.88 (two competing centres) and a margin of 0.2 gives ≈0.98, so the score spreads over (1/K, 1) instead of
# being ≈1/K everywhere (as T=1 would give).
CONFIDENCE_TEMPERATURE = 0.05

# Rows per block in predict(): bounds the (rows, K) similarity block and the float32 copy of the input.
_PREDICT_BLOCK = 65536
# Training rows per centre past approximate_above (faiss's max_points_per_centroid default).
_POINTS_PER_CENTER = 256
# faiss k-means runs in blocks of this many iterations until the objective gains less than the tolerance.
_CONVERGENCE_BLOCK = 10
_CONVERGENCE_TOL = 1e-5


@dataclass
class KMeansResult:
    """A fitted spherical k-means.

    Attributes:
        labels: (N,) int64 cluster of each row, ``0..K-1``.
        centers: (K, D) float32 unit-norm centres.
        distances: (N,) float32 cosine distance ``1 - cos`` of each row to its own centre, in [0, 2].
        confidence: (N,) float32 softmax probability of the assigned cluster over the K cosine similarities
            divided by ``CONFIDENCE_TEMPERATURE`` (0.05); in [1/K, 1].
        inertia: sum of ``distances`` (the spherical k-means objective, lower is better; it picks the best of
            the ``n_init`` runs).
        n_iter: iterations of the kept run.
        backend: ``"faiss"`` or ``"sklearn"``.
        training_rows: rows the centres were trained on (all N, or a random sample past ``approximate_above``).
    """

    labels: np.ndarray
    centers: np.ndarray
    distances: np.ndarray
    confidence: np.ndarray
    inertia: float
    n_iter: int
    backend: str
    training_rows: int


def _assign(features: np.ndarray, centers: np.ndarray, temperature: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest centre by cosine for the rows of ``features`` (N, D; normalised block by block) and unit
    ``centers`` (K, D)."""
    n = features.shape[0]
    labels = np.empty(n, dtype=np.int64)
    distances = np.empty(n, dtype=np.float32)
    confidence = np.empty(n, dtype=np.float32)
    for start in range(0, n, _PREDICT_BLOCK):
        sims = normalize_block(features, start, min(start + _PREDICT_BLOCK, n)) @ centers.T
        best = sims.argmax(axis=1)
        top = np.take_along_axis(sims, best[:, None], axis=1)
        labels[start:start + _PREDICT_BLOCK] = best
        distances[start:start + _PREDICT_BLOCK] = np.clip(1.0 - top[:, 0], 0.0, 2.0)
        # softmax(sims / T)[best] = 1 / sum_j exp((sims_j - sims_best) / T); float64 keeps it exact near 1.
        confidence[start:start + _PREDICT_BLOCK] = 1.0 / np.exp((sims - top).astype(np.float64) / temperature).sum(1)
    return labels, distances, confidence


def predict(features: np.ndarray | torch.Tensor, centers: np.ndarray | torch.Tensor,
            temperature: float = CONFIDENCE_TEMPERATURE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign rows (e.g. features of new images) to the nearest of fitted centres by cosine similarity.

    Args:
        features: (N, D) features; L2-normalised inside.
        centers: (K, D) centres, e.g. ``KMeansResult.centers`` (renormalised inside, so any scale works).
        temperature: softmax temperature of the confidence (see ``CONFIDENCE_TEMPERATURE``).

    Returns:
        ``(labels (N,) int64, distances (N,) float32 = 1 - cos, confidence (N,) float32)``, as in
        :class:`KMeansResult`.

    Raises:
        ImgclustError: bad feature values, or a feature dimension that differs from the centres'.
    """
    if temperature <= 0:
        raise ImgclustError(f"temperature must be > 0; got {temperature}.", fix="use e.g. 0.05.")
    c = normalize_features(centers)
    x = _as_rows(features)
    if x.shape[1] != c.shape[1]:
        raise ImgclustError(f"features have {x.shape[1]} dimensions but the centres have {c.shape[1]}.",
                            fix="use features from the same backbone (and layer) the model was fitted on.")
    return _assign(x, c, temperature)


def _as_rows(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """A (N, D) host array view of ``features`` (no copy for numpy input, memory-mapped included)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ImgclustError(f"features must be a non-empty 2-D (N, D) array; got shape {tuple(x.shape)}.",
                            fix="pass one feature row per image.")
    return x


def mean_directions(unit_rows: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """(K, D) float32 unit mean direction of each cluster's unit rows, summed in float64 (the spherical k-means
    centres of a given partition; zero for an empty cluster)."""
    sums = np.zeros((n_clusters, unit_rows.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, unit_rows)
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _check_k(x: np.ndarray, n_clusters: int) -> None:
    """Raise ImgclustError unless 2 <= K <= number of distinct (normalised) rows."""
    n = x.shape[0]
    if not isinstance(n_clusters, (int, np.integer)) or isinstance(n_clusters, bool) or n_clusters < 2:
        raise ImgclustError(f"n_clusters must be an integer >= 2; got {n_clusters!r}.", fix="use K = 2 or more.")
    if n_clusters > n:
        raise ImgclustError(f"cannot make K={n_clusters} clusters from N={n} samples.",
                            fix=f"use K <= {n}, or add images.")
    # K > distinct points would force empty or duplicated clusters, which mean nothing: refuse rather than warn.
    # Rows are compared as raw bytes after normalisation (so positive multiples of a row count once).
    distinct = np.unique(x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()).size
    if distinct == 1:
        raise ImgclustError(f"cannot make K={n_clusters} clusters: all N={n} samples have the same feature "
                            "direction (identical images?).", fix="add images that differ from each other.")
    if n_clusters > distinct:
        raise ImgclustError(f"cannot make K={n_clusters} clusters: the N={n} samples have only {distinct} distinct "
                            "feature directions (duplicate images?).",
                            fix=f"use K <= {distinct}, or remove duplicate images.")


def _run_seeds(seed: int, n_init: int) -> list[int]:
    """Independent 31-bit seeds for the n_init runs (not seed, seed+1, … which would overlap across seeds)."""
    return [int(s) & 0x7FFFFFFF for s in np.random.SeedSequence(seed).generate_state(n_init)]


def _faiss_kmeans(faiss: ModuleType, x: np.ndarray, k: int, seed: int, n_init: int, max_iter: int
                  ) -> tuple[np.ndarray, int]:
    """Best of n_init faiss spherical k-means runs by inertia; returns (unit centres (K, D), iterations)."""
    best: tuple[float, np.ndarray, int] | None = None
    # One faiss run per seed (nredo=1) instead of nredo=n_init: we pick the best by the same inertia we report
    # and know the kept run's iteration count.
    for run_seed in _run_seeds(seed, n_init):
        centers, n_iter = _faiss_run(faiss, x, k, run_seed, max_iter)
        inertia = float((1.0 - (x @ centers.T).max(axis=1)).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centers, n_iter)
    assert best is not None
    return best[1], best[2]


def _faiss_run(faiss: ModuleType, x: np.ndarray, k: int, seed: int, max_iter: int) -> tuple[np.ndarray, int]:
    """One faiss run, stopped once converged: faiss itself always runs all ``niter`` iterations, so it is run
    ``_CONVERGENCE_BLOCK`` iterations at a time from the previous centres until the objective improves by less
    than ``_CONVERGENCE_TOL`` (relative) over a block, or ``max_iter`` is reached."""
    n, d = x.shape
    centers: np.ndarray | None = None
    previous: float | None = None
    done = 0
    while done < max_iter:
        step = min(_CONVERGENCE_BLOCK, max_iter - done)
        km = faiss.Kmeans(d, k, niter=step, nredo=1, seed=seed, spherical=True,
                          max_points_per_centroid=n,  # train on all N points (default 256·K subsample)
                          min_points_per_centroid=1)  # K <= N is checked; silences faiss's small-data warning
        objective = float(km.train(x, init_centroids=centers))  # summed cosine to the centres: higher is better
        centers = km.centroids
        done += step
        if previous is not None and objective - previous <= _CONVERGENCE_TOL * abs(previous):
            break
        previous = objective
    assert centers is not None
    return normalize_features(centers), done


def _sklearn_kmeans(x: np.ndarray, k: int, seed: int, n_init: int, max_iter: int) -> tuple[np.ndarray, int]:
    """scikit-learn KMeans on the unit rows; returns (renormalised centres (K, D), iterations)."""
    km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(x)
    return normalize_features(km.cluster_centers_), int(km.n_iter_)


def kmeans(features: np.ndarray | torch.Tensor, n_clusters: int, seed: int = 0, n_init: int = 10,
           max_iter: int = 300, backend: str = "auto", approximate_above: int | None = APPROXIMATE_ABOVE
           ) -> KMeansResult:
    """Spherical k-means: K unit-norm centres maximising the summed cosine of each row to its centre.

    Deterministic for a given seed, backend and library version.

    Args:
        features: (N, D) float array (memory-mapped is fine) or tensor; L2-normalised inside (a copy).
        n_clusters: K, from 2 to the number of distinct feature directions.
        seed: seed of the initialisations.
        n_init: independent runs; the one with the lowest inertia is kept.
        max_iter: iteration cap per run (runs stop earlier once converged).
        backend: ``"auto"`` (faiss if installed, else scikit-learn), ``"faiss"`` or ``"sklearn"``.
        approximate_above: past this many rows, train the centres on a random sample of
            ``max(approximate_above, 256·K)`` rows, then assign all rows (``None``: always train on all rows).

    Returns:
        :class:`KMeansResult`.

    Raises:
        ImgclustError: K < 2, K > N, K > distinct rows, NaN/inf or all-zero rows (counted), bad settings,
            faiss requested but not installed.
    """
    if backend not in BACKENDS:
        raise ImgclustError(f"unknown k-means backend {backend!r}.", fix=f"use one of {', '.join(BACKENDS)}.")
    settings = (("n_clusters", n_clusters, 2, 10), ("n_init", n_init, 1, 10), ("max_iter", max_iter, 1, 300),
                ("seed", seed, 0, 0))
    for name, value, low, example in settings:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ImgclustError(f"{name} must be an integer >= {low}; got {value!r}.", fix=f"use e.g. {name}={example}.")
    if approximate_above is not None and (not isinstance(approximate_above, (int, np.integer))
                                          or approximate_above < 1):
        raise ImgclustError(f"approximate_above must be a positive integer or None; got {approximate_above!r}.",
                            fix="use e.g. approximate_above=100000 (or null on the command line for never).")
    rows = _as_rows(features)
    n = rows.shape[0]
    if approximate_above is not None and n > approximate_above:
        sample_size = min(n, max(approximate_above, _POINTS_PER_CENTER * int(n_clusters)))
        sample = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
        x = normalize_features(rows[sample])
    else:
        x = normalize_features(rows)
    _check_k(x, n_clusters)
    faiss = load_faiss() if backend != "sklearn" else None
    if backend == "faiss" and faiss is None:
        raise ImgclustError("k-means backend 'faiss' was requested but faiss is not installed.",
                            fix="pip install faiss-cpu, or use backend='sklearn'.")
    if faiss is not None:
        centers, n_iter = _faiss_kmeans(faiss, x, int(n_clusters), seed, n_init, max_iter)
    else:
        centers, n_iter = _sklearn_kmeans(x, int(n_clusters), seed, n_init, max_iter)
    labels, distances, confidence = _assign(rows, centers, CONFIDENCE_TEMPERATURE)
    return KMeansResult(labels=labels, centers=centers, distances=distances, confidence=confidence,
                        inertia=float(distances.astype(np.float64).sum()), n_iter=n_iter,
                        backend="faiss" if faiss is not None else "sklearn", training_rows=int(x.shape[0]))


class KMeansModel(ClusterModel):
    """Fitted k-means as a :class:`ClusterModel`: assigns backbone features to the nearest unit centre.

    Args:
        centers: (K, D) float32 unit-norm centres.
        temperature: softmax temperature of the confidence.
    """

    method = "kmeans"
    input_encoder = "backbone"

    def __init__(self, centers: np.ndarray, temperature: float = CONFIDENCE_TEMPERATURE):
        self.centers = np.asarray(centers, dtype=np.float32)
        self.temperature = float(temperature)

    def assign(self, inputs: np.ndarray, device: torch.device | str = "cpu") -> Assignment:
        """Assign (N, D) backbone features; a (N, K) matmul, so it runs on the CPU whatever ``device`` says."""
        labels, distances, confidence = predict(inputs, self.centers, self.temperature)
        return Assignment(labels=labels, confidence=confidence, distance=distances)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"centers": torch.from_numpy(self.centers)}

    def config(self) -> dict[str, Any]:
        return {"n_clusters": int(self.centers.shape[0]), "feature_dim": int(self.centers.shape[1]),
                "temperature": self.temperature}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "KMeansModel":
        centers = tensors.get("centers")
        expected = (config.get("n_clusters"), config.get("feature_dim"))
        if centers is None or tuple(centers.shape) != expected:
            raise ImgclustError(f"saved k-means model is inconsistent: centres "
                                f"{None if centers is None else tuple(centers.shape)}, config says {expected}.",
                                fix="re-run the clustering; the model files were modified or mixed up.")
        return cls(centers.float().numpy(), config.get("temperature", CONFIDENCE_TEMPERATURE))


KMEANS_OPTIONS = OptionSet("k-means", options_from_signature("method", kmeans, exclude=("features", "n_clusters",
                                                                                       "seed")))


@register_method("kmeans", model=KMeansModel, options=KMEANS_OPTIONS,
                 summary="spherical k-means on L2-normalised backbone features (the baseline)")
def fit_kmeans(context: FitContext) -> FitResult:
    """Registry entry point: k-means on ``context.features``; options: :func:`kmeans`'s n_init, max_iter,
    backend, approximate_above."""
    opts = KMEANS_OPTIONS.resolve(context.options)
    result = kmeans(context.features, context.n_clusters, seed=context.seed, **opts["method"])
    return FitResult(
        model=KMeansModel(result.centers),
        assignment=Assignment(labels=result.labels, confidence=result.confidence, distance=result.distances),
        info={"backend": result.backend, "n_iter": result.n_iter, "inertia": result.inertia,
              "training_rows": result.training_rows,
              "confidence_temperature": CONFIDENCE_TEMPERATURE},
    )
