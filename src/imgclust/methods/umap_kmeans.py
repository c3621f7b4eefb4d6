"""k-means on a UMAP embedding of the features, read out by a linear classifier (``--method umap-kmeans``).

Why: k-means cuts the feature space into convex cells, so a class whose images spread along a curved or
elongated region gets split while two touching classes get merged. UMAP (McInnes et al. 2018, umap-learn) lays
the cosine k-nearest-neighbour graph of the rows out in a few dimensions where the graph's dense regions become
compact, and k-means there follows them (the recipe of N2D, McConville et al., ICPR 2020).

It was the library's default method in sessions 26-28 and is now the first layout of the default,
``umap-pacmap-kmeans`` (:mod:`imgclust.methods.umap_pacmap_kmeans`): on the 20 development sets
(docs/methods/umap-kmeans.md) it was above k-means on 18, by 0.026 on average and most on natural images with many
classes (CIFAR-10's 10-class development split: ACC 0.54 against k-means' 0.46), and below it by more than 0.01 on
one Fashion-MNIST subset (-0.094), where its layout split one class and merged two; on every set of the quality
table it is at least k-means' ACC minus 0.01 (+0.115 on average). The same steps on PaCMAP's layout are
``pacmap-kmeans`` (:mod:`imgclust.methods.pacmap_kmeans`, sharing :func:`layout_kmeans`). It is not one of
``auto``'s candidates: its readout is a least-squares classifier of the
features, the kind the label-free score trains, so the score rates its partitions above the others' whatever their
accuracy (the run's summary says so). Too few images for a layout (N <= K + 2) get the spherical k-means
partition instead (``info["fallback"]``).

Steps:

1. the rows, L2-normalised (several backbones: the concatenation of the normalised spaces, renormalised);
2. UMAP with ``n_neighbors`` (30) neighbours by cosine, ``n_components`` (10) dimensions, ``min_dist`` 0 (clusters
   packed tight, as N2D uses), seeded, on at most ``fit_rows`` rows (a seeded random sample past it);
3. k-means (scikit-learn, ``n_init`` runs) in the embedding: the UMAP partition;
4. readout: a least-squares (ridge) classifier on the one-hot UMAP partition, cross-fitted over ``readout_folds``
   folds: every row gets the cluster a classifier trained on the other folds predicts for it, so the partition
   is one the classifier that assigns new images reproduces (a linear readout assigned held-out images more
   accurately than the nearest centroid or the nearest neighbours did, and the cross-fitted partition was as
   accurate as UMAP's own: docs/methods/umap-kmeans.md). Should it empty a cluster, the classifier is fitted on
   the UMAP partition itself;
5. the model: one ridge classifier fitted on all those rows and their read-out clusters; the partition is its
   argmax on every row, so ``predict`` gives the training images their own clusters back, and assigns new images
   (and the rows past ``fit_rows``) the same way.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import Ridge
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import StratifiedKFold

from ..errors import ImgclustError
from ..neighbors import normalize_features
from ..score import partition_score
from .base import Assignment, ClusterModel, FitContext, FitResult
from .consensus import consensus_partition
from .kmeans import _as_rows, _check_k, kmeans, mean_directions
from .options import OptionSet, options_from_signature
from .registry import register_method


def score_note(method: str) -> str:
    """What the run's summary says under the label-free score (imgclust.score), which these partitions inflate."""
    return (f"{method}' clusters are a linear classifier's by construction, so this score runs high: "
            "do not compare it with other methods' scores")


# Penalty of the ridge readout on unit-norm rows: scikit-learn's default, also the score's (imgclust.score).
READOUT_ALPHA = 1.0
# Rows per block when the readout assigns (bounds the (rows, K) block and the float32 copy of the input).
_ASSIGN_BLOCK = 65536


class UmapKMeansModel(ClusterModel):
    """The readout of a fitted ``umap-kmeans`` (and, as a subclass, ``pacmap-kmeans``): a linear classifier of the
    L2-normalised backbone features.

    ``confidence`` is the classifier's output for the assigned cluster (a least-squares estimate of the
    cluster's probability, clipped to [0, 1]); ``distance`` is the cosine distance to the assigned cluster's
    mean direction (the mean of its fitted rows).

    Args:
        weights: (K, D) float32 classifier weights.
        bias: (K,) float32 intercepts.
        centres: (K, D) float32 unit mean directions of the clusters.
    """

    method = "umap-kmeans"
    input_encoder = "backbone"

    def __init__(self, weights: np.ndarray, bias: np.ndarray, centres: np.ndarray):
        # Own copies: safetensors refuses to save tensors that share memory (k-means' fallback passes its centres
        # twice).
        self.weights = np.array(weights, dtype=np.float32)
        self.bias = np.array(bias, dtype=np.float32)
        self.centres = np.array(centres, dtype=np.float32)

    def assign(self, inputs: np.ndarray, device: torch.device | str = "cpu") -> Assignment:
        """Assign (N, D) backbone features; (N, K) matrix products, so it runs on the CPU whatever ``device`` says."""
        x = _as_rows(inputs)
        if x.shape[1] != self.weights.shape[1]:
            raise ImgclustError(f"features have {x.shape[1]} dimensions but the {self.method} model expects "
                                f"{self.weights.shape[1]}.",
                                fix="use features from the same backbone(s) the model was fitted on.")
        n = x.shape[0]
        out_labels = np.empty(n, dtype=np.int64)
        confidence = np.empty(n, dtype=np.float32)
        distance = np.empty(n, dtype=np.float32)
        for start in range(0, n, _ASSIGN_BLOCK):
            rows = normalize_features(x[start:start + _ASSIGN_BLOCK])
            stop = start + len(rows)
            outputs = rows @ self.weights.T + self.bias
            chosen = outputs.argmax(axis=1)
            out_labels[start:stop] = chosen
            confidence[start:stop] = np.clip(outputs[np.arange(len(rows)), chosen], 0.0, 1.0)
            distance[start:stop] = np.clip(1.0 - np.einsum("nd,nd->n", rows, self.centres[chosen]), 0.0, 2.0)
        return Assignment(labels=out_labels, confidence=confidence, distance=distance)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"weights": torch.from_numpy(self.weights), "bias": torch.from_numpy(self.bias),
                "centres": torch.from_numpy(self.centres)}

    def config(self) -> dict[str, Any]:
        return {"n_clusters": int(self.weights.shape[0]), "feature_dim": int(self.weights.shape[1])}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "UmapKMeansModel":
        k, d = config.get("n_clusters"), config.get("feature_dim")
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        if shapes != {"weights": (k, d), "bias": (k,), "centres": (k, d)}:
            raise ImgclustError(f"saved {cls.method} model is inconsistent: tensors {shapes}, config says K={k}, "
                                f"D={d}.",
                                fix="re-run the clustering; the model files were modified or mixed up.")
        return cls(tensors["weights"].float().numpy(), tensors["bias"].float().numpy(),
                   tensors["centres"].float().numpy())


def umap_kmeans(features: np.ndarray | torch.Tensor, n_clusters: int, seed: int = 0, n_neighbors: int = 30,
                n_components: int = 10, min_dist: float = 0.0, n_init: int = 10, readout_folds: int = 5,
                fit_rows: int = 50000, restarts: int = 1) -> tuple[UmapKMeansModel, dict[str, Any]]:
    """k-means on a UMAP embedding, read out by a cross-fitted ridge classifier (see the module docstring).

    Deterministic for a given seed and library versions (UMAP runs single-threaded when seeded).

    Args:
        features: (N, D) features (memory-mapped is fine); L2-normalised inside.
        n_clusters: K, from 2 to the number of distinct feature directions.
        seed: seed of the sample, UMAP, k-means and the folds.
        n_neighbors: UMAP's neighbourhood size (fewer when N is small).
        n_components: dimensions of the embedding k-means runs in (fewer when N is small).
        min_dist: UMAP's minimum distance between embedded points.
        n_init: k-means runs in the embedding; the lowest inertia is kept.
        readout_folds: folds of the cross-fitted readout (at least 2; 0: no cross-fitting, the classifier is fitted
            on the UMAP partition itself).
        fit_rows: rows UMAP is fitted on at most; the readout assigns the others.
        restarts: layouts fitted (the first with ``seed``, the others with seeds derived from it); the one whose
            read-out partition has the highest label-free score (:func:`imgclust.score.partition_score`) is kept.
            Not a default: with 100 neighbours, three restarts matched one layout on the development sets
            (docs/methods/umap-kmeans.md).

    Returns:
        ``(model, info)``: the partition is ``model.assign(features)``; ``info`` records the rows fitted, the share
        of them the readout moved off the UMAP partition, whether it was kept, and ``fallback`` when too few rows
        made it spherical k-means.

    Raises:
        ImgclustError: bad settings or features (as k-means), or umap-learn missing.
    """
    return layout_kmeans(features, n_clusters, seed, [umap_layout(n_neighbors, n_components, min_dist)],
                         UmapKMeansModel, n_init=n_init, readout_folds=readout_folds, fit_rows=fit_rows,
                         restarts=restarts)


def umap_layout(n_neighbors: int = 30, n_components: int = 10, min_dist: float = 0.0
                ) -> Callable[[np.ndarray, int], np.ndarray]:
    """UMAP with these settings (by cosine, seeded, one thread) as ``layout(unit rows, seed) -> embedding``.

    Raises:
        ImgclustError: bad settings, or umap-learn missing.
    """
    try:
        import umap
    except ImportError:
        raise ImgclustError("umap-kmeans and umap-pacmap-kmeans (the default method) need the umap-learn package, "
                            "which is not installed (it is one of imgclust's dependencies: was it installed with "
                            "--no-deps?).",
                            fix="pip install umap-learn, or use --method kmeans.") from None
    check_integers(("n_neighbors", n_neighbors, 2), ("n_components", n_components, 1))
    if not 0.0 <= min_dist <= 1.0:
        raise ImgclustError(f"min_dist must be within [0, 1]; got {min_dist!r}.", fix="use min_dist=0.0.")

    def layout(x: np.ndarray, layout_seed: int) -> np.ndarray:
        key = (hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest(), x.shape, str(x.dtype),
               n_neighbors, n_components, min_dist, int(layout_seed))
        if _last_layout.get("key") == key:
            return _last_layout["embedding"].copy()
        with warnings.catch_warnings():
            # umap-learn warns that a seed forces one thread, and (small N) that it falls back from its spectral
            # start.
            warnings.filterwarnings("ignore", module="umap")
            embedding = umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1),
                                  n_components=min(n_components, len(x) - 2), min_dist=min_dist, metric="cosine",
                                  random_state=layout_seed, n_jobs=1).fit_transform(x)
        _last_layout.update(key=key, embedding=embedding.copy())
        return embedding

    return layout


#: The last UMAP layout computed, by a digest of its rows and settings: a run that estimates K lays out the same
#: rows with the same seed as its fit then does (kselect's partitions="umap"), and a seeded layout is a pure
#: function of them, so the fit reuses it instead of computing it again.
_last_layout: dict[str, Any] = {}


def check_integers(*settings: tuple[str, Any, int]) -> None:
    """Each ``(name, value, low)``: ``value`` must be an integer (not a bool) of at least ``low``.

    Raises:
        ImgclustError: naming the option and a valid value.
    """
    for name, value, low in settings:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ImgclustError(f"{name} must be an integer >= {low}; got {value!r}.", fix=f"use {name} >= {low}.")


def layout_kmeans(features: np.ndarray | torch.Tensor, n_clusters: int, seed: int,
                  layouts: Sequence[Callable[[np.ndarray, int], np.ndarray]], model_class: type[UmapKMeansModel], *,
                  n_init: int, readout_folds: int, fit_rows: int, restarts: int, kmeans_below_agreement: float = 0.0,
                  kmeans_switch_min_rows: int = 0) -> tuple[UmapKMeansModel, dict[str, Any]]:
    """Steps 1 and 3-5 of the module docstring around ``layout(unit rows, seed) -> (N, d) embedding`` functions
    (UMAP's, PaCMAP's): k-means in each embedding, the cross-fitted readout, and the model. Several layouts are
    combined by a consensus of their read-out partitions (:func:`_fit_layouts`); where they agree less than
    ``kmeans_below_agreement`` and at least ``kmeans_switch_min_rows`` rows are fitted, spherical k-means' partition
    of the rows is read out instead."""
    check_integers(("n_init", n_init, 1), ("fit_rows", fit_rows, 2), ("readout_folds", readout_folds, 0),
                   ("restarts", restarts, 1), ("kmeans_switch_min_rows", kmeans_switch_min_rows, 0))
    if readout_folds == 1:
        raise ImgclustError("readout_folds must be 0 (no readout) or at least 2; got 1.", fix="use readout_folds=5.")
    if (not isinstance(kmeans_below_agreement, (int, float)) or isinstance(kmeans_below_agreement, bool)
            or not 0.0 <= kmeans_below_agreement <= 1.0):
        raise ImgclustError(f"kmeans_below_agreement must be a number from 0 to 1; got {kmeans_below_agreement!r}.",
                            fix="use kmeans_below_agreement=0 (never) up to 1 (always k-means).")
    rows = _as_rows(features)
    n = rows.shape[0]
    sample = np.sort(np.random.default_rng(seed).choice(n, size=fit_rows, replace=False)) if n > fit_rows else None
    x = normalize_features(rows if sample is None else rows[sample])
    _check_k(x, n_clusters)
    k = int(n_clusters)
    # Copies of one image add no structure but can swamp a layout (many identical rows left clusters empty and
    # stalled PaCMAP's neighbour search): lay out and cluster each distinct row once; the copies get its cluster.
    distinct, _ = distinct_rows(x)
    x_distinct = x[distinct] if len(distinct) < len(x) else x
    if len(x_distinct) <= k + 2:  # too few images to lay out: spherical k-means, whose centres are the classifier
        result = kmeans(x, k, seed=seed, n_init=n_init)
        model = model_class(result.centers, np.zeros(k, dtype=np.float32), result.centers)
        return model, {"fit_rows": int(len(x)), "moved_by_readout": 0.0, "readout_kept": False,
                       "fallback": f"k-means: {len(x_distinct)} distinct images are too few for a layout of K={k} "
                                   f"clusters (it needs more than K + 2)"}
    switch_below = kmeans_below_agreement if len(x) >= kmeans_switch_min_rows else 0.0
    fits = [_fit_layouts(layouts, x_distinct, k, _restart_seed(seed, r), n_init, readout_folds, switch_below)
            for r in range(restarts)]
    restart_info: dict[str, Any] = {}
    if restarts > 1:
        scores = [partition_score(x_distinct, fit.labels, seed=seed).kappa for fit in fits]
        restart_info = {"restart_scores": [round(float(v), 4) for v in scores], "restart_kept": int(np.argmax(scores))}
    fit = fits[restart_info.get("restart_kept", 0)]
    row_labels = fit.labels if x_distinct is x else _predict(x, fit.weights, fit.bias)  # copies: first copy's
    model = model_class(fit.weights, fit.bias, mean_directions(x, row_labels, k))
    info = {"fit_rows": int(len(x)), "moved_by_readout": float(np.mean(fit.labels != fit.layout_labels)),
            "readout_kept": fit.readout_kept, "score_note": score_note(model_class.method), **restart_info}
    if fit.layout_agreement is not None:
        info["layout_agreement"] = round(fit.layout_agreement, 4)
        info["partition_from"] = "k-means" if fit.from_kmeans else "layouts"
        info["kmeans_below_agreement"] = float(kmeans_below_agreement)
        info["kmeans_switch_min_rows"] = int(kmeans_switch_min_rows)
    if len(x_distinct) < len(x):
        info["duplicate_rows"] = int(len(x) - len(x_distinct))
    return model, info


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, copy_of)``: the indices of the rows that are not an exact copy of an earlier row, in row order, and
    for every row the position in ``first`` of the row it copies (itself if none). By a 128-bit digest of each row's
    bytes: 0.6 s for 50,000 rows of 2,560 floats, where ``np.unique(axis=0)`` sorts for 13 s."""
    position: dict[bytes, int] = {}
    copy_of = np.fromiter((position.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), len(position))
                           for row in np.ascontiguousarray(x)), dtype=np.int64, count=len(x))
    return np.unique(copy_of, return_index=True)[1].astype(np.int64), copy_of  # positions count up in row order


def _restart_seed(seed: int, restart: int) -> int:
    """The seed of layout ``restart``: ``seed`` itself for the first (one restart = the plain fit), then seeds
    derived from both (not ``seed + restart``, so that runs with neighbouring seeds share no layout)."""
    if restart == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(restart)]).generate_state(1)[0] % (2 ** 31 - 1))


class LayoutFit(NamedTuple):
    """One fit of :func:`_fit_layouts`: the partition before the readout (k-means in the layout, or the consensus
    of several), the ridge classifier, its partition, whether the cross-fitted readout was kept, and (several
    layouts) the mean adjusted Rand index between their read-out partitions and whether k-means' partition replaced
    their consensus."""

    layout_labels: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    labels: np.ndarray
    readout_kept: bool
    layout_agreement: float | None
    from_kmeans: bool


def _fit_layouts(layouts: Sequence[Callable[[np.ndarray, int], np.ndarray]], x: np.ndarray, k: int, seed: int,
                 n_init: int, readout_folds: int, kmeans_below_agreement: float = 0.0) -> LayoutFit:
    """k-means in each layout; one layout: its partition, read out. Several: each partition read out, then their
    consensus (:func:`imgclust.methods.consensus.consensus_partition`), read out. Where two layouts disagree
    because one split a class and merged two others, the consensus of the codes rejoins the two halves (merging
    the smaller groups costs k-means less) and keeps the classes the other layout separated. Reading each member
    out before the consensus gave 0.817 against 0.815 on the development sets (docs/methods/umap-pacmap-kmeans.md).
    The classifier is a ridge fitted on the read-out clusters (or, should the readout empty a cluster, on the
    partition it read) and the final partition is its argmax, so the model reproduces it."""
    partitions = [KMeans(k, n_init=n_init, random_state=seed).fit_predict(layout(x, seed)).astype(np.int64)
                  for layout in layouts]
    partition, agreement, from_kmeans = partitions[0], None, False
    if len(partitions) > 1:
        members = [_read_out(x, p, k, seed, readout_folds)[2] for p in partitions]
        agreement = float(np.mean([adjusted_rand_score(a, b) for i, a in enumerate(members)
                                   for b in members[i + 1:]]))
        from_kmeans = agreement < kmeans_below_agreement
        partition = (kmeans(x, k, seed=seed, n_init=n_init).labels if from_kmeans
                     else consensus_partition(members, k, seed=seed, n_init=n_init).labels)
    weights, bias, labels, readout_kept = _read_out(x, partition, k, seed, readout_folds)
    return LayoutFit(partition, weights, bias, labels, readout_kept, agreement, from_kmeans)


def _read_out(x: np.ndarray, partition: np.ndarray, k: int, seed: int, readout_folds: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The cross-fitted readout of ``partition`` and the ridge classifier of it: ``(weights, bias, the classifier's
    partition, readout kept)``; should the readout empty a cluster, the classifier of ``partition`` itself."""
    readout = _cross_fitted_readout(x, partition, k, readout_folds, seed) if readout_folds else partition
    weights, bias = _ridge(x, readout, k)
    labels = _predict(x, weights, bias)
    readout_kept = np.unique(labels).size == np.unique(partition).size
    if not readout_kept:
        weights, bias = _ridge(x, partition, k)
        labels = _predict(x, weights, bias)
    return weights, bias, labels, bool(readout_kept)


def _ridge(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Least squares on the one-hot ``labels`` (K outputs also for K = 2): ((K, D) weights, (K,) bias)."""
    ridge = Ridge(alpha=READOUT_ALPHA).fit(x, np.eye(k, dtype=np.float32)[labels])
    return ridge.coef_.astype(np.float32), np.asarray(ridge.intercept_, dtype=np.float32)


def _predict(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The ridge classifier's cluster for each (unit) row."""
    return (x @ weights.T + bias).argmax(axis=1)


def _cross_fitted_readout(x: np.ndarray, labels: np.ndarray, k: int, folds: int, seed: int) -> np.ndarray:
    """Each row's cluster as predicted by a ridge classifier trained on the other folds (no more folds than the
    largest cluster has rows, which stratified folds need; none at all, the partition as it is, below two)."""
    folds = min(folds, int(np.bincount(labels).max()))
    if folds < 2:
        return labels.copy()
    out = np.empty_like(labels)
    with warnings.catch_warnings():
        # A cluster smaller than the folds is expected now and then; it is simply absent from some training folds.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels)
        for train, test in splits:
            weights, bias = _ridge(x[train], labels[train], k)
            out[test] = _predict(x[test], weights, bias)
    return out


def register_layout_method(name: str, fit: Callable[..., tuple[UmapKMeansModel, dict[str, Any]]],
                           model: type[UmapKMeansModel], summary: str,
                           requires: tuple[tuple[str, str], ...] = (),
                           unwhitened: dict[str, Any] | None = None) -> OptionSet:
    """Register ``fit(features, n_clusters, seed=..., **options)`` as method ``name``; its options are ``fit``'s
    keyword parameters (returned, for callers that want their defaults); ``unwhitened`` as
    :func:`~imgclust.methods.registry.register_method`'s."""
    options = OptionSet(name, options_from_signature("method", fit, exclude=("features", "n_clusters", "seed")))

    @register_method(name, model=model, options=options, summary=summary, requires=requires, unwhitened=unwhitened)
    def fit_layout_method(context: FitContext) -> FitResult:
        fitted, info = fit(context.features, context.n_clusters, seed=context.seed,
                           **options.resolve(context.options)["method"])
        return FitResult(model=fitted, assignment=fitted.assign(context.features), info=info)

    return options


UMAP_KMEANS_OPTIONS = register_layout_method("umap-kmeans", umap_kmeans, UmapKMeansModel,
                                             "k-means on a UMAP embedding of the features, read out by a linear "
                                             "classifier")
