"""PEDCC geometry: unit norm, exact simplex when K <= d + 1, repulsion otherwise, seeded."""

from __future__ import annotations

import math

import pytest
import torch

from imgclust.methods.icbpl.pedcc import pedcc, repulsion_centroids, simplex_centroids


def _pairwise_cos(c: torch.Tensor) -> torch.Tensor:
    g = c.double() @ c.double().T
    k = c.shape[0]
    return g[~torch.eye(k, dtype=torch.bool)]


@pytest.mark.parametrize("k,d", [(2, 1), (2, 128), (3, 2), (10, 9), (10, 100), (10, 128), (20, 128), (129, 128)])
def test_simplex_exact(k: int, d: int) -> None:
    c = pedcc(k, d, seed=3)
    assert c.shape == (k, d) and c.dtype == torch.float32
    assert torch.allclose(c.norm(dim=1), torch.ones(k), atol=1e-6)
    cos = _pairwise_cos(c)
    assert (cos + 1.0 / (k - 1)).abs().max() < 1e-5


def test_auto_uses_simplex_up_to_d_plus_one() -> None:
    assert torch.equal(pedcc(11, 10, seed=1), simplex_centroids(11, 10, seed=1).float())
    assert torch.equal(pedcc(12, 10, seed=1), repulsion_centroids(12, 10, seed=1).float())


@pytest.mark.parametrize("k,d,min_angle", [(12, 3, 55.0), (20, 4, 45.0), (50, 8, 50.0)])
def test_repulsion_when_simplex_impossible(k: int, d: int, min_angle: float) -> None:
    c = pedcc(k, d, seed=0)
    assert c.shape == (k, d)
    assert torch.allclose(c.norm(dim=1), torch.ones(k), atol=1e-6)
    cos = _pairwise_cos(c)
    # Reasonably spread: well above what random points give, close to the known optimum (icosahedron: 63.4°).
    assert math.degrees(math.acos(float(cos.max()))) > min_angle
    # Balanced: the centroids' mean is near the origin.
    assert c.mean(dim=0).norm() < 0.1


def test_repulsion_reproduces_authors_simplex_for_k10() -> None:
    # The authors' shipped 10_100.pkl has off-diagonal cosines in [-0.1115, -0.1107].
    cos = _pairwise_cos(repulsion_centroids(10, 100, seed=0))
    assert cos.min() > -0.1125 and cos.max() < -0.1095


@pytest.mark.parametrize("k,d", [(10, 128), (12, 3)])
def test_deterministic_for_a_seed(k: int, d: int) -> None:
    assert torch.equal(pedcc(k, d, seed=5), pedcc(k, d, seed=5))
    assert not torch.allclose(pedcc(k, d, seed=5), pedcc(k, d, seed=6))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        simplex_centroids(12, 10)
    with pytest.raises(ValueError):
        pedcc(10, 128, method="onehot")
    with pytest.raises(ValueError):
        pedcc(0, 4)
