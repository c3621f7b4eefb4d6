"""Clustering metrics against ground-truth labels. Labels are used here only for reporting, never for fitting.

Conventions (the field's standard, see docs): ACC is the best one-to-one cluster→class matching found by the
Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the class×cluster count matrix; NMI is
``sklearn.metrics.normalized_mutual_info_score`` with its default *arithmetic* normaliser (scikit-learn ≥ 0.22;
papers from before 2020 used the geometric mean, so their NMI is not strictly comparable); ARI and AMI are the
scikit-learn scores.

Label conventions: cluster labels are ints ``0..K-1``; true labels are class indices ``0..C-1``, and ``-1`` marks a
sample whose class is unknown. Unknown samples are left out of every label-based number (ACC, NMI, ARI, AMI, the
confusion matrix, the mapping) but still counted in ``cluster_sizes``, which describe the clustering itself.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

from .errors import ImgclustError

UNKNOWN_LABEL = -1


def _as_labels(values: Any, what: str) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array, or raise ImgclustError naming ``what``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ImgclustError(f"{what} must be a 1-D array of ints; got shape {array.shape}.",
                            fix=f"pass one {what} entry per sample, e.g. `np.ravel(...)`.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        # Float arrays holding whole numbers (e.g. read back from CSV) are fine; anything else is a mistake.
        if not (np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array))
                and np.all(array == np.round(array))):
            raise ImgclustError(f"{what} must be integers; got dtype {array.dtype}.",
                                fix=f"convert {what} to int class/cluster indices.")
    return array.astype(np.int64)


def _clusters(y_pred: Any, n_clusters: int | None) -> tuple[np.ndarray, int]:
    """Check cluster labels; return them as int64 and the number of clusters K."""
    y_pred = _as_labels(y_pred, "y_pred")
    if y_pred.size == 0:
        raise ImgclustError("no samples to evaluate (empty label arrays).", fix="evaluate at least one sample.")
    if y_pred.min() < 0:
        raise ImgclustError(f"y_pred contains {int(y_pred.min())}; cluster labels must be 0..K-1.",
                            fix="drop unassigned (noise) samples before evaluating, or give them their own cluster.")
    k = int(y_pred.max()) + 1 if n_clusters is None else int(n_clusters)
    if y_pred.max() >= k:
        raise ImgclustError(f"y_pred contains cluster {int(y_pred.max())} but n_clusters is {k}.",
                            fix="pass the number of clusters the method was run with.")
    return y_pred, k


def _validated(y_true: Any, y_pred: Any, n_clusters: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Check a (true, predicted) label pair; return both as int64 arrays and the number of clusters K."""
    y_true = _as_labels(y_true, "y_true")
    y_pred = _as_labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ImgclustError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}.",
                            fix="pass the true labels and the cluster labels of the same samples, in the same order.")
    y_pred, k = _clusters(y_pred, n_clusters)
    if y_true.min() < UNKNOWN_LABEL:
        raise ImgclustError(f"y_true contains {int(y_true.min())}; class labels must be >= 0, or -1 for unknown.",
                            fix="map classes to indices 0..C-1 and unknown samples to -1.")
    return y_true, y_pred, k


def _labelled(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop samples whose true label is unknown (-1); raise if none is left."""
    keep = y_true != UNKNOWN_LABEL
    if not keep.any():
        raise ImgclustError("every sample has the unknown label -1, so there is nothing to score against.",
                            fix="evaluate on a labelled dataset (class sub-folders, or a labels file).")
    return y_true[keep], y_pred[keep]


def contingency(y_true: Any, y_pred: Any, n_classes: int | None = None,
                n_clusters: int | None = None) -> np.ndarray:
    """Count matrix of true class against cluster, over the samples with a known class.

    Args:
        y_true: (N,) class indices ``0..C-1``, ``-1`` for unknown (left out).
        y_pred: (N,) cluster indices ``0..K-1``.
        n_classes: C; default ``max(y_true) + 1``. Classes absent from ``y_true`` give zero rows.
        n_clusters: K; default ``max(y_pred) + 1``. Empty clusters give zero columns.

    Returns:
        (C, K) int64 matrix; entry ``[c, k]`` counts samples of class ``c`` put in cluster ``k``.
    """
    y_true, y_pred, k = _validated(y_true, y_pred, n_clusters)
    y_true, y_pred = _labelled(y_true, y_pred)
    c = int(y_true.max()) + 1 if n_classes is None else int(n_classes)
    if y_true.max() >= c:
        raise ImgclustError(f"y_true contains class {int(y_true.max())} but n_classes is {c}.",
                            fix="pass the full number of classes (e.g. len(class_names)).")
    counts = np.zeros((c, k), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def hungarian_mapping(y_true: Any, y_pred: Any, n_clusters: int | None = None) -> dict[int, int]:
    """Best one-to-one cluster→class assignment (the one ACC is computed with).

    When K > C, ``K - C`` clusters stay unmatched and are absent from the dict; when K < C some classes get no
    cluster. Matched pairs may have zero overlap (e.g. an empty cluster), as the matching is one-to-one.

    Args:
        y_true: (N,) class indices, ``-1`` for unknown (left out).
        y_pred: (N,) cluster indices ``0..K-1``.
        n_clusters: K; default ``max(y_pred) + 1``.

    Returns:
        ``{cluster: class}`` as plain Python ints, sorted by cluster.
    """
    classes, clusters = linear_sum_assignment(contingency(y_true, y_pred, n_clusters=n_clusters), maximize=True)
    return {int(k): int(c) for k, c in sorted(zip(clusters, classes))}


def cluster_accuracy(y_true: Any, y_pred: Any) -> float:
    """Hungarian ACC: fraction of labelled samples whose cluster is matched one-to-one to their class.

    Works for any K and C: with K > C, samples in unmatched clusters count as wrong (see
    :func:`overclustering_accuracy` for the many-to-one score).

    Args:
        y_true: (N,) class indices, ``-1`` for unknown (left out).
        y_pred: (N,) cluster indices ``0..K-1``.

    Returns:
        ACC in [0, 1].
    """
    counts = contingency(y_true, y_pred)
    classes, clusters = linear_sum_assignment(counts, maximize=True)
    return float(counts[classes, clusters].sum() / counts.sum())


def overclustering_accuracy(y_true: Any, y_pred: Any) -> float:
    """Majority ACC: every cluster is mapped to its most frequent class (many clusters may share a class).

    This is the usual score when K > C (over-clustering); it is always >= :func:`cluster_accuracy`, and equal to
    it when each class's best cluster is distinct.

    Args:
        y_true: (N,) class indices, ``-1`` for unknown (left out).
        y_pred: (N,) cluster indices ``0..K-1``.

    Returns:
        Majority ACC in [0, 1].
    """
    counts = contingency(y_true, y_pred)
    return float(counts.max(axis=0).sum() / counts.sum())


def cluster_sizes(y_pred: Any, n_clusters: int | None = None) -> np.ndarray:
    """Number of samples in each cluster, empty clusters included.

    Args:
        y_pred: (N,) cluster indices ``0..K-1``.
        n_clusters: K; default ``max(y_pred) + 1``.

    Returns:
        (K,) int64 counts.
    """
    y_pred, k = _clusters(y_pred, n_clusters)
    return np.bincount(y_pred, minlength=k).astype(np.int64)


def evaluate(y_true: Any, y_pred: Any, n_clusters: int | None = None,
             class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """All reported metrics of one clustering, as JSON-ready plain Python values.

    Samples whose true label is -1 (unknown) are left out of every label-based metric and counted in
    ``n_unlabeled``; they still count in ``cluster_sizes``.

    Args:
        y_true: (N,) class indices ``0..C-1``, ``-1`` for unknown.
        y_pred: (N,) cluster indices ``0..K-1``.
        n_clusters: K (so empty clusters show up); default ``max(y_pred) + 1``.
        class_names: names of classes ``0..C-1``; sets C (classes absent from ``y_true`` get zero rows).

    Returns:
        A dict with keys:

        - ``acc``: Hungarian one-to-one accuracy; ``acc_majority``: each cluster → its majority class (>= acc).
        - ``nmi`` (arithmetic normaliser), ``ari``, ``ami``: scikit-learn scores.
        - ``n_samples`` (labelled samples scored), ``n_unlabeled``, ``n_classes`` (C), ``n_clusters`` (K).
        - ``cluster_sizes``: K ints over all N samples.
        - ``mapping``: ``{cluster: class}`` Hungarian match (unmatched clusters absent).
        - ``confusion``: C×K list of lists, rows = true classes in class order, columns = clusters in the order
          ``confusion_clusters``: first the cluster matched to class 0, 1, … (classes without a match skipped),
          then the unmatched clusters by id. So the diagonal holds the matched counts.
        - ``confusion_clusters``: the cluster id of each confusion column.
        - ``class_names``: the given names, or None.
    """
    y_true, y_pred, k = _validated(y_true, y_pred, n_clusters)
    known_true, known_pred = _labelled(y_true, y_pred)
    c = int(known_true.max()) + 1
    if class_names is not None:
        if len(class_names) < c:
            raise ImgclustError(f"y_true has class {c - 1} but only {len(class_names)} class names were given.",
                                fix="pass one name per class index.")
        c = len(class_names)
    counts = contingency(known_true, known_pred, n_classes=c, n_clusters=k)
    classes, clusters = linear_sum_assignment(counts, maximize=True)
    matched = dict(zip(classes.tolist(), clusters.tolist()))  # class -> cluster
    order = [matched[i] for i in range(c) if i in matched]
    order += sorted(set(range(k)) - set(order))
    n = int(counts.sum())
    return {
        "acc": float(counts[classes, clusters].sum() / n),
        "acc_majority": float(counts.max(axis=0).sum() / n),
        "nmi": float(normalized_mutual_info_score(known_true, known_pred, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(known_true, known_pred)),
        "ami": float(adjusted_mutual_info_score(known_true, known_pred, average_method="arithmetic")),
        "n_samples": n,
        "n_unlabeled": int(y_true.size - n),
        "n_classes": c,
        "n_clusters": k,
        "cluster_sizes": np.bincount(y_pred, minlength=k).tolist(),
        "mapping": {int(j): int(i) for j, i in sorted(zip(clusters.tolist(), classes.tolist()))},
        "confusion": counts[:, order].tolist(),
        "confusion_clusters": [int(j) for j in order],
        "class_names": None if class_names is None else list(class_names),
    }
