"""k-means on a UMAP and on a PaCMAP layout of the features, combined by consensus and read out by a linear
classifier (``--method umap-pacmap-kmeans``).

Why: the two layouts fail in different places. UMAP optimises only the neighbour graph, and on some Fashion-MNIST
subsets its layout split one class and merged two neighbouring ones (umap-kmeans 0.094 below k-means on one
development set); PaCMAP keeps more of the global arrangement and does not, but trails UMAP on MNIST and on small
natural-image sets (docs/methods/pacmap-kmeans.md). No label-free signal found tells which layout to trust
(the label-free score, the agreement between seeds), so this method uses both: each layout's read-out partition
is one member of a consensus (:func:`imgclust.methods.consensus.consensus_partition`). Where one layout split a
class that the other kept whole, the consensus rejoins the two halves, since merging the smaller groups costs its
k-means less.

On the 20 development sets (EfficientNet-Lite0, seeds 0-2; docs/methods/umap-pacmap-kmeans.md) the ad-hoc
version averaged 0.817 against umap-kmeans' 0.806, pacmap-kmeans' 0.814 and k-means' 0.780, with no set below
k-means - 0.01, and it cost one PaCMAP layout (about a tenth of the UMAP one) more than umap-kmeans.

Steps: those of umap-kmeans (:mod:`imgclust.methods.umap_kmeans`) with step 2 run twice, UMAP (umap-kmeans'
settings) and PaCMAP (pacmap-kmeans'), both seeded with the run's seed; each partition is read out, the two
read-out partitions are combined, and the consensus is read out as umap-kmeans reads out its UMAP partition.
``info["layout_agreement"]`` is the adjusted Rand index between the two members (1: the layouts agree). Where it
is below ``kmeans_below_agreement`` (:data:`KMEANS_BELOW_AGREEMENT`, 0.7), the layouts' clusters are too weakly
separated to trust either and spherical k-means' partition of the same rows is read out in place of the consensus
(``info["partition_from"]``: ``"layouts"`` or ``"k-means"``): since session 32 the features are whitened, and on
whitened natural-image features k-means was ahead of the layouts exactly where they disagreed. The switch needs
``kmeans_switch_min_rows`` (:data:`KMEANS_SWITCH_MIN_ROWS`, 2,500) fitted rows: on smaller, or imbalanced, sets the
layouts' consensus was the better partition even where they disagreed. On features that are not whitened
(``--whitening none``, or embeddings given directly) the switch is off by default: there k-means' partition lost
(:data:`KMEANS_BELOW_AGREEMENT`'s comment).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .pacmap_kmeans import pacmap_layout
from .umap_kmeans import UmapKMeansModel, layout_kmeans, register_layout_method, umap_layout


#: Where UMAP's and PaCMAP's read-out partitions agree less than this (adjusted Rand index), spherical k-means'
#: partition of the rows is read out instead of their consensus. Low agreement marks weakly separated, natural-image
#: clusters, where k-means on the whitened features was ahead of the layouts (session 34 rule,
#: ``session34_kmeans_below_agreement_dev_sets`` in benchmarks/results/exploratory-2026-12-07.json: the 20 development
#: sets 0.838 against 0.837, no set below -0.009, ``cifar10-train-10k`` 0.608 against 0.573, 40,000 CIFAR-10 images
#: 0.722 against 0.657; no Fashion-MNIST run switched). The threshold was read off the same development runs. On the
#: raw (unwhitened) features of the same sets it lost: 0.812 against 0.823, 11 of its 14 switched runs lower, by up to
#: 0.10 (session 35, ``session35_kmeans_switch_on_raw_features_dev_sets``), so it applies to whitened features only.
KMEANS_BELOW_AGREEMENT = 0.7

#: The switch above applies from this many fitted rows. Its gains were measured on 3,333 to 40,000 rows; on the
#: balanced development sets of 600-2,400 rows it was neutral (+0.0013, per set -0.009 to +0.019), and on 48 small
#: (80-400 rows) and imbalanced (761-1,527 rows) development draws it cost 0.010 (0.658 against 0.668; 0.02 on the
#: CIFAR-10 draws; session 36 rule, ``session36_kmeans_switch_min_rows_dev_sets`` in
#: benchmarks/results/exploratory-2026-12-07.json). 2,500 is just above the largest balanced development set.
KMEANS_SWITCH_MIN_ROWS = 2500

#: What the summary and the report say when a run kept k-means' partition.
KMEANS_KEPT = (f"the layouts agreed less than kmeans_below_agreement ({KMEANS_BELOW_AGREEMENT} unless set), so the "
               "clusters are spherical k-means' partition of the features, read out (--set kmeans_below_agreement=0 "
               "keeps the layouts' consensus)")

#: How accurate the development runs were, by how well their two layouts agreed: (lowest agreement of the band, the
#: band, what its runs reached). EfficientNet-Lite0 GeM features whitened as the library whitens them, the default as
#: it is now, seeds 0-2: the 20 balanced development sets and ``cifar10-train-10k`` (63 runs; Spearman 0.90 between
#: agreement and ACC; ``session33_layout_agreement_bands``, and session 34's k-means runs on the 10k split) and the 48
#: small and imbalanced development sets of session 36 (144 runs, Spearman 0.67; ``session36_agreement_bands``):
#: 207 runs, Spearman 0.76. The small and imbalanced sets widened the two lower bands (below 0.7: 0.42-0.82, median
#: 0.57 there, against 0.56-0.77, median 0.68, on the balanced sets).
AGREEMENT_BANDS = ((0.9, ">= 0.9", "ACC 0.75-0.99, median 0.95"),
                   (0.7, "0.7-0.9", "ACC 0.53-0.97, median 0.75"),
                   (0.0, "< 0.7", "ACC 0.42-0.82, median 0.59: weakly separated "
                                  "clusters, check the gallery before relying on them"))


def agreement_reading(agreement: float) -> str:
    """What the development runs whose layouts agreed about as much as ``agreement`` reached: a label-free hint of
    how far to trust the clusters (for the summary and the report)."""
    band, reached = next((band, reached) for low, band, reached in AGREEMENT_BANDS if agreement >= low)
    return f"development runs with agreement {band}: {reached}"


class UmapPacmapKMeansModel(UmapKMeansModel):
    """The readout of a fitted ``umap-pacmap-kmeans``: as :class:`UmapKMeansModel` (a linear classifier of the
    L2-normalised backbone features; neither layout is needed to assign new images)."""

    method = "umap-pacmap-kmeans"


def umap_pacmap_kmeans(features: np.ndarray | torch.Tensor, n_clusters: int, seed: int = 0, n_init: int = 10,
                       readout_folds: int = 5, fit_rows: int = 50000, restarts: int = 1,
                       kmeans_below_agreement: float = KMEANS_BELOW_AGREEMENT,
                       kmeans_switch_min_rows: int = KMEANS_SWITCH_MIN_ROWS
                       ) -> tuple[UmapPacmapKMeansModel, dict[str, Any]]:
    """The consensus of umap-kmeans' and pacmap-kmeans' read-out partitions, read out (see the module docstring).

    Deterministic for a given seed and library versions. The layouts use umap-kmeans' and pacmap-kmeans' default
    settings (run those methods to change them).

    Args:
        features: (N, D) features (memory-mapped is fine); L2-normalised inside.
        n_clusters: K, from 2 to the number of distinct feature directions.
        seed: seed of the sample, both layouts, the k-means runs, the consensus and the folds.
        n_init: k-means runs in each embedding and on the consensus codes; the lowest inertia is kept.
        readout_folds: folds of each cross-fitted readout (at least 2; 0: no cross-fitting).
        fit_rows: rows the layouts are fitted on at most; the readout assigns the others.
        restarts: pairs of layouts fitted; the one whose read-out partition has the highest label-free score is
            kept.
        kmeans_below_agreement: where the two layouts' partitions agree less than this (adjusted Rand index),
            spherical k-means' partition of the rows is read out instead of their consensus (0: never; the
            default on features that are not whitened, where k-means' partition lost).
        kmeans_switch_min_rows: the switch to k-means applies only when at least this many rows are fitted
            (smaller sets keep the layouts' consensus; 0: any size).

    Returns:
        ``(model, info)`` as :func:`imgclust.methods.umap_kmeans.umap_kmeans`, plus ``layout_agreement``.

    Raises:
        ImgclustError: bad settings or features (as k-means), or umap-learn or pacmap missing.
    """
    return layout_kmeans(features, n_clusters, seed, [umap_layout(), pacmap_layout()], UmapPacmapKMeansModel,
                         n_init=n_init, readout_folds=readout_folds, fit_rows=fit_rows, restarts=restarts,
                         kmeans_below_agreement=kmeans_below_agreement, kmeans_switch_min_rows=kmeans_switch_min_rows)


UMAP_PACMAP_KMEANS_OPTIONS = register_layout_method(
    "umap-pacmap-kmeans", umap_pacmap_kmeans, UmapPacmapKMeansModel,
    "k-means on a UMAP and on a PaCMAP layout of the features, combined by consensus and read out by a linear "
    "classifier", requires=(("pacmap", "pacmap"),),
    unwhitened={"method.kmeans_below_agreement": 0.0})
