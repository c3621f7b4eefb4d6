"""ICBPL (Zhu, Hu & Wang, arXiv 2408.01920): latents pulled to fixed PEDCC centroids, kNN and views.

See ``docs/methods/icbpl.md`` for what follows the paper/code and what was chosen here.
"""

from .losses import augmentation_consistency_loss, min_centroid_distance_loss, mmd_loss, neighbor_loss
from .method import ICBPL, ICBPLConfig, ICBPLModel, build_icbpl_net, fit_icbpl
from .model import ICBPLNet, ProjectionHead
from .pedcc import pedcc, repulsion_centroids, simplex_centroids

__all__ = [
    "ICBPL",
    "ICBPLConfig",
    "ICBPLModel",
    "ICBPLNet",
    "ProjectionHead",
    "build_icbpl_net",
    "fit_icbpl",
    "pedcc",
    "simplex_centroids",
    "repulsion_centroids",
    "mmd_loss",
    "augmentation_consistency_loss",
    "neighbor_loss",
    "min_centroid_distance_loss",
]
