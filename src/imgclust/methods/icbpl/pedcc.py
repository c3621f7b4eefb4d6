"""PEDCC: K predefined, evenly distributed, fixed unit-norm class centroids in R^d.

When ``K <= d + 1`` the best possible arrangement is known in closed form: the vertices of a regular
simplex, every pair at cosine ``-1/(K-1)``. We build it exactly: the centred one-hot vectors
``e_k - 1/K`` of R^K span a (K-1)-dimensional subspace; expressed in an orthonormal basis of that
subspace they are K points of R^(K-1), which a seeded random orthonormal map embeds into R^d.

When ``K > d + 1`` no simplex fits; we run the authors' construction (``semi/PEDCC.py`` /
``ICBPC/PEDCC.py``): K random unit vectors repel each other with an inverse-square force, the force's
tangential part updates a velocity, positions are re-projected onto the sphere, 200 iterations, step 0.01.
The authors' shipped K = 10 files come out as a near-exact simplex (cosines -0.1115..-0.1107).
"""

from __future__ import annotations

import torch

__all__ = ["pedcc", "simplex_centroids", "repulsion_centroids"]


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


def simplex_centroids(n_clusters: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Vertices of a regular simplex: K unit vectors of R^d with all pairwise cosines ``-1/(K-1)``.

    Args:
        n_clusters: K >= 1.
        dim: d >= K - 1.
        seed: seeds the random orthonormal embedding (the rotation of the simplex in R^d).

    Returns:
        (K, d) float64 tensor on the CPU.
    """
    k, d = int(n_clusters), int(dim)
    if k < 1 or d < 1:
        raise ValueError(f"need n_clusters >= 1 and dim >= 1, got {k}, {d}")
    if k - 1 > d:
        raise ValueError(f"a regular simplex of {k} vertices needs dim >= {k - 1}, got {d}")
    generator = _generator(seed)
    if k == 1:
        v = torch.randn((1, d), generator=generator, dtype=torch.float64)
        return v / v.norm(dim=1, keepdim=True)
    centred = torch.eye(k, dtype=torch.float64) - 1.0 / k  # rows e_k - 1/K, sum to zero
    # Orthonormal basis of the sum-zero subspace: the first K-1 left singular directions.
    basis = torch.linalg.svd(centred, full_matrices=False).Vh[: k - 1]  # (K-1, K)
    coords = centred @ basis.T  # (K, K-1), exact simplex in R^(K-1)
    embed, _ = torch.linalg.qr(torch.randn((d, k - 1), generator=generator, dtype=torch.float64))  # (d, K-1)
    points = coords @ embed.T
    return points / points.norm(dim=1, keepdim=True)


def repulsion_centroids(n_clusters: int, dim: int, seed: int = 0, iterations: int = 200,
                        step: float = 1e-2) -> torch.Tensor:
    """The authors' PEDCC construction: repelling charges on the unit sphere.

    Per iteration, with ``d_ij = r_i - r_j`` and ``L_ij = max(|d_ij|, 0.01)``: force ``F_i = sum_j d_ij /
    L_ij^3``; tangential part ``Fv_i = F_i - (F_i·r_i) r_i``; ``r_i <- normalise(r_i + v_i)`` with the old
    velocity; then ``v_i <- v_i + step·Fv_i``.

    Args:
        n_clusters: K >= 1.
        dim: d >= 1.
        seed: seeds the random start.
        iterations: number of updates (authors: 200).
        step: velocity step G (authors: 0.01).

    Returns:
        (K, d) float64 unit vectors on the CPU.
    """
    k, d = int(n_clusters), int(dim)
    if k < 1 or d < 1:
        raise ValueError(f"need n_clusters >= 1 and dim >= 1, got {k}, {d}")
    r = torch.randn((k, d), generator=_generator(seed), dtype=torch.float64)
    r = r / r.norm(dim=1, keepdim=True)
    v = torch.zeros_like(r)
    for _ in range(int(iterations)):
        diff = r[:, None, :] - r[None, :, :]  # (K, K, d)
        dist = diff.norm(dim=2).clamp_min(1e-2)
        force = (diff / dist[..., None] ** 3).sum(dim=1)  # self term: diff = 0
        tangential = force - (force * r).sum(dim=1, keepdim=True) * r
        r = r + v
        r = r / r.norm(dim=1, keepdim=True)
        v = v + step * tangential
    return r


def pedcc(n_clusters: int, dim: int, seed: int = 0, method: str = "auto", iterations: int = 200) -> torch.Tensor:
    """K fixed, evenly distributed unit centroids in R^d, deterministic for a seed.

    Args:
        n_clusters: K.
        dim: latent dimension d.
        seed: random seed of the construction.
        method: ``"auto"`` (simplex when ``K <= d + 1``, else repulsion), ``"simplex"`` or ``"repulsion"``.
        iterations: repulsion iterations (authors: 200).

    Returns:
        (K, d) float32 tensor on the CPU, rows of unit norm.

    Examples:
        >>> c = pedcc(10, 128)
        >>> round(float(c[0] @ c[1]), 4)
        -0.1111
    """
    if method not in ("auto", "simplex", "repulsion"):
        raise ValueError(f"unknown PEDCC method {method!r}; use 'auto', 'simplex' or 'repulsion'")
    if method == "simplex" or (method == "auto" and n_clusters <= dim + 1):
        centroids = simplex_centroids(n_clusters, dim, seed)
    else:
        centroids = repulsion_centroids(n_clusters, dim, seed, iterations)
    return centroids.float()
