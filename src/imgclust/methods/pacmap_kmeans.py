"""k-means on a PaCMAP embedding of the features, read out by a linear classifier (``--method pacmap-kmeans``).

Why: the recipe of ``umap-kmeans`` (k-means where a neighbour-graph layout has made the dense regions compact, then
a linear readout: :mod:`imgclust.methods.umap_kmeans`) with PaCMAP (Wang, Huang, Rudin & Shaposhnik, JMLR 2021;
the authors' ``pacmap`` package) as the layout. Besides each row's nearest neighbours, PaCMAP pulls "mid-near"
pairs together and pushes random far pairs apart, so the layout keeps more of the data's global arrangement. UMAP
optimises only the neighbour graph, and on two Fashion-MNIST development subsets its layouts often split a class and
merged two neighbouring ones (docs/methods/umap-kmeans.md): there PaCMAP's layout did not.

On the 20 development sets (EfficientNet-Lite0, seeds 0-2) it was 0.814 against umap-kmeans' 0.806 and k-means'
0.780, with no set below k-means - 0.01 (umap-kmeans has one), 3-10 times faster than umap-kmeans. It did not
become the default: on the nine evaluation and held-out sets run afterwards it was 0.011 below umap-kmeans on average
and 0.015 below k-means on one held-out set (docs/methods/pacmap-kmeans.md). The default, ``umap-pacmap-kmeans``,
combines its partition with umap-kmeans' (:mod:`imgclust.methods.umap_pacmap_kmeans`).

Steps: those of umap-kmeans with step 2 replaced by PaCMAP (``n_neighbors`` 30 neighbours by angular distance,
``n_components`` 2 dimensions, the authors' mid-near and far-pair ratios 0.5 and 2.0, seeded; PaCMAP first reduces
wider rows to 100 dimensions by PCA, as its authors do).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ImgclustError
from .umap_kmeans import UmapKMeansModel, check_integers, layout_kmeans, register_layout_method


class PacmapKMeansModel(UmapKMeansModel):
    """The readout of a fitted ``pacmap-kmeans``: as :class:`UmapKMeansModel` (a linear classifier of the
    L2-normalised backbone features; the layout itself is not needed to assign new images)."""

    method = "pacmap-kmeans"


def pacmap_kmeans(features: np.ndarray | torch.Tensor, n_clusters: int, seed: int = 0, n_neighbors: int = 30,
                  n_components: int = 2, mn_ratio: float = 0.5, fp_ratio: float = 2.0, n_init: int = 10,
                  readout_folds: int = 5, fit_rows: int = 50000, restarts: int = 1
                  ) -> tuple[PacmapKMeansModel, dict[str, Any]]:
    """k-means on a PaCMAP embedding, read out by a cross-fitted ridge classifier (see the module docstring).

    Deterministic for a given seed and library versions.

    Args:
        features: (N, D) features (memory-mapped is fine); L2-normalised inside.
        n_clusters: K, from 2 to the number of distinct feature directions.
        seed: seed of the sample, PaCMAP, k-means and the folds.
        n_neighbors: PaCMAP's nearest neighbours per row (fewer when N is small: PaCMAP reduces them).
        n_components: dimensions of the embedding k-means runs in (2, PaCMAP's tested setting; 10 dimensions with
            PaCMAP's 10 neighbours were 0.002 above on the development sets' mean but 0.05 below k-means on one set).
        mn_ratio: mid-near pairs per row, as a share of ``n_neighbors`` (PaCMAP's default).
        fp_ratio: far pairs per row, as a multiple of ``n_neighbors`` (PaCMAP's default).
        n_init: k-means runs in the embedding; the lowest inertia is kept.
        readout_folds: folds of the cross-fitted readout (at least 2; 0: no cross-fitting).
        fit_rows: rows PaCMAP is fitted on at most; the readout assigns the others.
        restarts: layouts fitted; the one whose read-out partition has the highest label-free score is kept.

    Returns:
        ``(model, info)`` as :func:`imgclust.methods.umap_kmeans.umap_kmeans`.

    Raises:
        ImgclustError: bad settings or features (as k-means), or pacmap missing.
    """
    return layout_kmeans(features, n_clusters, seed, [pacmap_layout(n_neighbors, n_components, mn_ratio, fp_ratio)],
                         PacmapKMeansModel, n_init=n_init, readout_folds=readout_folds, fit_rows=fit_rows,
                         restarts=restarts)


def pacmap_layout(n_neighbors: int = 30, n_components: int = 2, mn_ratio: float = 0.5, fp_ratio: float = 2.0
                  ) -> Callable[[np.ndarray, int], np.ndarray]:
    """PaCMAP with these settings (angular distance, seeded) as ``layout(unit rows, seed) -> embedding``.

    Raises:
        ImgclustError: bad settings, or pacmap missing.
    """
    try:
        import faiss  # pacmap's neighbour search (one of its dependencies)
        import pacmap
    except ImportError:
        raise ImgclustError("pacmap-kmeans and umap-pacmap-kmeans (the default method) need the pacmap package, "
                            "which is not installed (it is one of imgclust's dependencies: was it installed with "
                            "--no-deps?).",
                            fix="pip install pacmap, or use --method umap-kmeans.") from None
    check_integers(("n_neighbors", n_neighbors, 2), ("n_components", n_components, 1))
    for name, value, default in (("mn_ratio", mn_ratio, 0.5), ("fp_ratio", fp_ratio, 2.0)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ImgclustError(f"{name} must be a number > 0; got {value!r}.",
                                fix=f"use {name}={default} (PaCMAP's default).")

    def layout(x: np.ndarray, layout_seed: int) -> np.ndarray:
        # PaCMAP logs a warning when seeded and when it reduces its pairs for a small N (both expected here), and
        # when seeded it sets faiss to one thread for the whole process: both are put back afterwards.
        logger = logging.getLogger("pacmap.pacmap")
        level, faiss_threads = logger.level, faiss.omp_get_max_threads()
        logger.setLevel(logging.ERROR)
        try:
            return pacmap.PaCMAP(n_components=n_components, n_neighbors=n_neighbors, MN_ratio=mn_ratio,
                                 FP_ratio=fp_ratio, distance="angular", random_state=layout_seed,
                                 verbose=False).fit_transform(np.ascontiguousarray(x, dtype=np.float32))
        finally:
            logger.setLevel(level)
            faiss.omp_set_num_threads(faiss_threads)

    return layout


PACMAP_KMEANS_OPTIONS = register_layout_method("pacmap-kmeans", pacmap_kmeans, PacmapKMeansModel,
                                               "k-means on a PaCMAP embedding of the features, read out by a linear "
                                               "classifier",
                                               requires=(("pacmap", "pacmap"),))
