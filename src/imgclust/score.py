"""A label-free quality score for a partition: how well a linear classifier learns it (TURTLE's generalisation
score, Gadetsky, Jiang & Brbić, ICML 2024), chance-corrected so partitions with different K compare.

A partition that follows the data's semantic structure can be learnt from part of the images and predicted on
the rest by a linear classifier; an arbitrary one cannot. The score is computed from the final partition alone
(no labels, nothing the method logged), so it rates any method's output the same way:

1. per representation space (a column range of the features; one space by default), the rows are
   L2-normalised, centred and projected to ``pca_dim`` principal components (fitted on the scored rows, without
   the partition: no label leaks across folds);
2. a linear classifier is trained on ``n_folds - 1`` folds of the partition and predicts the held-out fold
   (stratified folds, seeded); every row gets one held-out prediction. By default it is a least-squares
   (ridge) classifier on one-hot targets: on the development sets it picked the more accurate of k-means', TURTLE's
   and ICBPL's partitions almost always, where a logistic regression favoured TURTLE's (whose objective is the
   logistic separability itself) even where ICBPL's was better (``benchmarks/score_validation.py``);
3. Cohen's kappa of the held-out predictions against the partition, ``(p_o - p_e) / (1 - p_e)``: 0 for a
   partition no better learnt than chance (a random relabelling, at any K), 1 for one learnt perfectly. Raw
   accuracy is not comparable across K (fewer, larger clusters are easier to predict), which kappa corrects.

The score of several spaces is the mean of their kappas (TURTLE averages its score over spaces). Past
``max_samples`` rows a seeded random subsample is scored, which bounds the cost (a few seconds for any N).

Degenerate partitions get a defined score instead of an error: a single cluster, or clusters of one row each,
score 0 (nothing to learn), and a cluster too small to appear in every training fold simply counts as
mispredicted where it is held out.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.metrics import cohen_kappa_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from .errors import ImgclustError

CLASSIFIERS = ("logistic", "ridge", "knn")
DEFAULT_CLASSIFIER = "ridge"


@dataclass(frozen=True)
class PartitionScore:
    """The score of one partition.

    Attributes:
        kappa: the score: mean over spaces of Cohen's kappa of the cross-validated predictions against the
            partition; 1 = learnt perfectly, 0 = chance (or a single cluster), below 0 = worse than chance.
        per_space: kappa of each space.
        accuracy: mean over spaces of the raw cross-validated accuracy (not comparable across K).
        n_clusters: clusters present in the scored rows.
        n_samples: rows scored (all of them, or the random subsample).
        n_folds: folds of the cross-validation.
        note: why the score is degenerate (``None`` when it is not).
    """

    kappa: float
    per_space: tuple[float, ...]
    accuracy: float
    n_clusters: int
    n_samples: int
    n_folds: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for run.json and the report)."""
        out = asdict(self)
        out["per_space"] = list(self.per_space)
        return out


def partition_score(features: np.ndarray, labels: np.ndarray, spaces: Sequence[tuple[int, int]] | None = None,
                    n_folds: int = 5, seed: int = 0, max_samples: int = 5000, pca_dim: int = 128,
                    classifier: str = DEFAULT_CLASSIFIER, regularization: float = 1.0, n_neighbors: int = 10
                    ) -> PartitionScore:
    """Label-free quality of the partition ``labels`` of ``features`` (see the module docstring).

    Args:
        features: (N, D) features the partition was made on (memory-mapped is fine; only the scored rows are read).
        labels: (N,) cluster of each row (any integers; rows need not be sorted by cluster).
        spaces: column ranges ``(start, stop)`` of the representation spaces in ``features`` (e.g. one per
            backbone); ``None`` = all columns as one space.
        n_folds: folds of the cross-validation (at least 2).
        seed: seed of the subsample, the folds and the PCA: the score is a deterministic function of it.
        max_samples: rows scored at most (a seeded random subsample past it).
        pca_dim: principal components kept per space (fewer when the space or the sample is smaller).
        classifier: ``"ridge"`` (least squares on one-hot targets, penalty ``regularization``; the default),
            ``"logistic"`` (multinomial logistic regression, inverse regularisation ``regularization``) or
            ``"knn"`` (majority vote of the ``n_neighbors`` nearest training rows by cosine: a partition that
            follows the data's neighbourhoods rather than one a linear model draws).
        regularization: the classifier's ``C`` (logistic) or ``alpha`` (ridge); unused by ``"knn"``.
        n_neighbors: neighbours that vote (``"knn"`` only).

    Returns:
        :class:`PartitionScore`.

    Raises:
        ImgclustError: mismatched shapes, NaN/inf features, bad settings or column ranges.
    """
    x, y = _checked(features, labels)
    if classifier not in CLASSIFIERS:
        raise ImgclustError(f"unknown score classifier {classifier!r}.", fix=f"use one of {', '.join(CLASSIFIERS)}.")
    for name, value, low in (("n_folds", n_folds, 2), ("max_samples", max_samples, 2), ("pca_dim", pca_dim, 1),
                             ("n_neighbors", n_neighbors, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ImgclustError(f"{name} must be an integer >= {low}; got {value!r}.", fix=f"use {name} >= {low}.")
    ranges = _spaces(spaces, x.shape[1])

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(y), size=max_samples, replace=False)) if len(y) > max_samples else None
    y = y if rows is None else y[rows]
    _, y = np.unique(y, return_inverse=True)
    n_clusters = int(y.max()) + 1
    n, largest = len(y), int(np.bincount(y).max())
    folds = min(int(n_folds), largest)  # stratified folds need one cluster with a row in every fold
    if n_clusters < 2 or largest < 2:
        return PartitionScore(0.0, tuple(0.0 for _ in ranges), 1.0 if n_clusters < 2 else 0.0, n_clusters, n,
                              folds, note="one cluster: nothing to learn" if n_clusters < 2
                              else "every cluster has one row: nothing to learn")
    with warnings.catch_warnings():
        # A cluster smaller than n_folds is expected (it is then mispredicted where held out: a low score).
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), y))
    kappas, accuracies = [], []
    # One BLAS thread: the matrices are small (at most max_samples x D), and on a busy machine several threads
    # spin-wait for each other (10x slower measured on the shared 2-core machine).
    with threadpool_limits(1):
        for start, stop in ranges:
            z = _project(x, rows, start, stop, pca_dim, seed)
            predicted = np.empty(n, dtype=np.int64)
            for train, test in splits:
                predicted[test] = _fit_predict(z[train], y[train], z[test], classifier, regularization, n_neighbors)
            kappas.append(float(cohen_kappa_score(y, predicted)))
            accuracies.append(float((predicted == y).mean()))
    smallest = int(np.bincount(y).min())
    note = f"smallest cluster has {smallest} row(s), fewer than the {folds} folds" if smallest < folds else None
    return PartitionScore(float(np.mean(kappas)), tuple(kappas), float(np.mean(accuracies)), n_clusters, n, folds,
                          note=note)


def _checked(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ImgclustError(f"features must be a 2-D (N, D) array with N >= 2; got shape {tuple(x.shape)}.",
                            fix="pass one feature row per image.")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ImgclustError(f"labels must be (N,) = ({x.shape[0]},) integers; got shape {y.shape}, dtype {y.dtype}.",
                            fix="pass the cluster index of every feature row.")
    return x, y


def _spaces(spaces: Sequence[tuple[int, int]] | None, dim: int) -> list[tuple[int, int]]:
    if spaces is None:
        return [(0, dim)]
    ranges = [(int(a), int(b)) for a, b in spaces]
    if not ranges or any(not 0 <= a < b <= dim for a, b in ranges):
        raise ImgclustError(f"representation spaces {ranges} are not column ranges within the {dim} feature columns.",
                            fix="pass (start, stop) pairs with 0 <= start < stop <= D, one per space.")
    return ranges


def _project(x: np.ndarray, rows: np.ndarray | None, start: int, stop: int, pca_dim: int, seed: int) -> np.ndarray:
    """The scored rows of one space, L2-normalised, centred and reduced to at most ``pca_dim`` components."""
    z = np.array(x[:, start:stop] if rows is None else x[rows, start:stop], dtype=np.float32)  # a copy
    if not np.isfinite(z).all():
        raise ImgclustError("features contain NaN or inf values.", fix="re-extract the features; check the inputs.")
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    z -= z.mean(axis=0)
    components = min(pca_dim, z.shape[1], z.shape[0] - 1)
    if components < z.shape[1]:
        z = PCA(components, svd_solver="randomized", random_state=seed).fit_transform(z)
    return z


def _fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classifier: str,
                 regularization: float, n_neighbors: int) -> np.ndarray:
    present = np.unique(train_y)
    if len(present) == 1:  # a fold holding out every other cluster: only one class to predict
        return np.full(len(test_x), present[0], dtype=np.int64)
    if classifier == "knn":
        model = KNeighborsClassifier(n_neighbors=min(n_neighbors, len(train_x)), metric="cosine")
    elif classifier == "ridge":
        model = RidgeClassifier(alpha=regularization)
    else:
        model = LogisticRegression(C=regularization, max_iter=200)
    with warnings.catch_warnings():
        # A few hundred lbfgs steps are enough to rank partitions; full convergence is not the point.
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        return model.fit(train_x, train_y).predict(test_x).astype(np.int64)
