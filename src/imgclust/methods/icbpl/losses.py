"""ICBPL losses: pure functions of tensors (no state, no device assumptions).

Zhu, Hu & Wang, "Image Clustering Algorithm Based on Self-Supervised Pretrained Models and Latent
Feature Distribution Optimization" (arXiv 2408.01920). The paper's loss code is not public; the MMD and
the augmentation loss follow the predecessor ICBPC's code (``ICBPC/mmd.py``, ``ICBPC/utils.py``), the kNN
and minimum-cosine losses follow the abstract (see ``docs/methods/icbpl.md``).

All latents ``z`` are L2-normalised rows, so ``2·(1 - z_a·z_b) = |z_a - z_b|^2``: the "composite cosine"
distance used by ICBPC's MMD kernel. The augmentation and kNN losses use the same distance, so all four
terms live on one scale (0 for identical vectors, 4 for opposite ones). Every function computes in float32
whatever the input dtype (safe under autocast).
"""

from __future__ import annotations

import torch

__all__ = [
    "tile_centroids",
    "cosine_distance_matrix",
    "mmd_loss",
    "augmentation_consistency_loss",
    "neighbor_loss",
    "min_centroid_distance_loss",
]


def _check_latents(z: torch.Tensor, name: str = "z") -> None:
    if z.dim() != 2:
        raise ValueError(f"{name} must be a (B, d) tensor, got shape {tuple(z.shape)}")
    if z.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    _check_latents(a, names.split(",")[0])
    if a.shape != b.shape:
        raise ValueError(f"{names} must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")


def tile_centroids(centroids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The MMD target sample: all K centroids ``floor(B/K)`` times, then the first ``B mod K``.

    This encodes a uniform prior over clusters (ICBPC's construction).

    Args:
        centroids: (K, d).
        batch_size: B.

    Returns:
        (B, d).
    """
    k = centroids.shape[0]
    reps = -(-int(batch_size) // k)
    return centroids.repeat(reps, 1)[: int(batch_size)]


def cosine_distance_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``2·(1 - a_i·b_j)`` for unit rows, clamped at 0. (M, d), (N, d) -> (M, N) float32."""
    return (2.0 - 2.0 * a.float() @ b.float().T).clamp_min(0.0)


def mmd_loss(z: torch.Tensor, centroids: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5
             ) -> torch.Tensor:
    """Squared MMD between a batch of latents and the uniform sample of the PEDCC centroids.

    As ICBPC's ``mmd.py``: the target P is :func:`tile_centroids` (B rows); over the 2B rows of ``[z; P]``
    the distance is ``D = 2(1 - cos)``; the base bandwidth ``bw`` is the mean off-diagonal distance
    (treated as a constant: no gradient flows through it); the kernel is a sum of ``kernel_num`` RBFs
    ``exp(-D / (bw·kernel_mul^m))`` for m = -2..2 (bandwidths bw·{1/4, 1/2, 1, 2, 4} by default); the loss
    is ``mean(K_zz) + mean(K_pp) - 2·mean(K_zp)`` (the biased V-statistic).

    A batch smaller than K only sees the first B centroids: use batches of at least K samples.

    Args:
        z: (B, d) unit latents.
        centroids: (K, d) unit PEDCC centroids.
        kernel_mul: ratio between consecutive bandwidths.
        kernel_num: number of bandwidths, centred on ``bw``.

    Returns:
        scalar float32 tensor, >= 0 up to rounding; 0 when ``z`` is the tiled centroid sample itself.
    """
    _check_latents(z)
    if centroids.dim() != 2 or centroids.shape[1] != z.shape[1]:
        raise ValueError(f"centroids must be (K, {z.shape[1]}), got {tuple(centroids.shape)}")
    b = z.shape[0]
    target = tile_centroids(centroids.detach().to(z.device), b)
    both = torch.cat([z.float(), target.float()], dim=0)
    dist = cosine_distance_matrix(both, both)
    n = 2 * b
    bw = dist.detach().sum() / max(n * n - n, 1)
    bw = bw.clamp_min(1e-12)
    kernel = torch.zeros_like(dist)
    for m in range(int(kernel_num)):
        kernel = kernel + torch.exp(-dist / (bw * kernel_mul ** (m - int(kernel_num) // 2)))
    k_zz, k_pp, k_zp = kernel[:b, :b], kernel[b:, b:], kernel[:b, b:]
    return k_zz.mean() + k_pp.mean() - 2.0 * k_zp.mean()


def augmentation_consistency_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean ``2(1 - z1_i·z2_i)`` between two augmented views of the same images (both get gradient).

    ICBPC's ``mean(2.1 - 2 z_a·z_b)`` without its constant 0.1 (same gradient).

    Args:
        z1, z2: (B, d) unit latents of view 1 and view 2 of the same B images.

    Returns:
        scalar float32 tensor in [0, 4]; 0 for identical views.
    """
    _check_pair(z1, z2, "z1,z2")
    return (2.0 - 2.0 * (z1.float() * z2.float()).sum(dim=1)).mean()


def neighbor_loss(z_anchor: torch.Tensor, z_neighbor: torch.Tensor, neighbor_gradient: bool = False
                  ) -> torch.Tensor:
    """Mean ``2(1 - z_a·z_n)``: pull each anchor towards one of its mined nearest neighbours.

    By default the neighbour is a fixed target (``z_neighbor`` is detached): kNN relations are not
    symmetric, so letting the neighbour move would drag "hub" samples, which appear in many lists, towards
    anchors that are not among their own neighbours. Every sample is an anchor once per epoch, so it still
    gets its own pull. ``neighbor_gradient=True`` lets both sides move (SCAN's choice), for the ablation.

    Args:
        z_anchor: (B, d) unit latents of the anchors.
        z_neighbor: (B, d) unit latents of one sampled neighbour of each anchor.
        neighbor_gradient: let the gradient flow into ``z_neighbor`` too.

    Returns:
        scalar float32 tensor in [0, 4].
    """
    _check_pair(z_anchor, z_neighbor, "z_anchor,z_neighbor")
    target = z_neighbor if neighbor_gradient else z_neighbor.detach()
    return (2.0 - 2.0 * (z_anchor.float() * target.float()).sum(dim=1)).mean()


def min_centroid_distance_loss(z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - max_k z·mu_k``: the cosine distance of each latent to its nearest PEDCC centroid.

    Args:
        z: (B, d) unit latents.
        centroids: (K, d) unit PEDCC centroids (fixed; no gradient).

    Returns:
        scalar float32 tensor in [0, 2]; 0 when every latent sits on a centroid.
    """
    _check_latents(z)
    cos = z.float() @ centroids.detach().to(z.device).float().T
    return (1.0 - cos.max(dim=1).values).mean()
