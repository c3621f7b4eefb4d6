"""ICBPL losses: hand-worked values, gradient directions, and parity with ICBPC's MMD code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imgclust.methods.icbpl.losses import (
    augmentation_consistency_loss,
    min_centroid_distance_loss,
    mmd_loss,
    neighbor_loss,
    tile_centroids,
)
from imgclust.methods.icbpl.pedcc import pedcc


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _step(z: torch.Tensor, loss_fn, lr: float = 0.1) -> tuple[torch.Tensor, float, float]:
    """One projected gradient step on z (kept on the sphere); returns (new z, loss before, loss after)."""
    z = z.clone().requires_grad_(True)
    before = loss_fn(z)
    before.backward()
    with torch.no_grad():
        new = F.normalize(z - lr * z.grad, dim=1)
    return new, float(before.detach()), float(loss_fn(new))


def _icbpc_mmd(source: torch.Tensor, target: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5):
    """Oracle: ICBPC's mmd.py as written (cosine distance 2(1 - a·b), bandwidth from .data)."""
    n_samples = int(source.size()[0]) + int(target.size()[0])
    total = torch.cat([source, target], dim=0)
    l2_distance = 2 - 2 * torch.mm(total, total.t())
    bandwidth = torch.sum(l2_distance.data) / (n_samples ** 2 - n_samples)
    bandwidth /= kernel_mul ** (kernel_num // 2)
    bandwidth_list = [bandwidth * (kernel_mul ** i) for i in range(kernel_num)]
    kernel_val = [torch.exp(-l2_distance / bw) for bw in bandwidth_list]
    kernels = sum(kernel_val)
    b = int(source.size()[0])
    xx, yy = kernels[:b, :b], kernels[b:, b:]
    xy, yx = kernels[:b, b:], kernels[b:, :b]
    return torch.mean(xx + yy - xy - yx)


# -- MMD -----------------------------------------------------------------------------------------------------

def test_tile_centroids_is_uniform_prior() -> None:
    c = pedcc(4, 8)
    t = tile_centroids(c, 10)
    assert t.shape == (10, 8)
    assert torch.equal(t[:4], c) and torch.equal(t[4:8], c) and torch.equal(t[8:], c[:2])


@pytest.mark.parametrize("k,b", [(10, 10), (10, 40), (4, 22)])
def test_mmd_of_centroid_sample_against_itself_is_zero(k: int, b: int) -> None:
    c = pedcc(k, 16)
    assert float(mmd_loss(tile_centroids(c, b), c)) == pytest.approx(0.0, abs=1e-6)


def test_mmd_of_permuted_centroid_sample_is_zero() -> None:
    c = pedcc(5, 16)
    z = tile_centroids(c, 20)[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    assert float(mmd_loss(z, c)) == pytest.approx(0.0, abs=1e-6)


def test_mmd_positive_for_collapsed_batch_and_ordering() -> None:
    c = pedcc(10, 16)
    collapsed = c[:1].repeat(40, 1)
    two = torch.cat([c[:1].repeat(20, 1), c[1:2].repeat(20, 1)])
    balanced = tile_centroids(c, 40)
    m_collapsed, m_two, m_bal = (float(mmd_loss(z, c)) for z in (collapsed, two, balanced))
    assert m_collapsed > m_two > m_bal + 1e-3
    assert m_bal == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_matches_icbpc_code(seed: int) -> None:
    c = pedcc(10, 32)
    z = _unit(30, 32, seed=seed)
    ours = mmd_loss(z, c)
    oracle = _icbpc_mmd(z, tile_centroids(c, 30))
    assert float(ours) == pytest.approx(float(oracle), rel=1e-4, abs=1e-6)


def test_mmd_gradient_step_reduces_loss_and_spreads_collapsed_batch() -> None:
    c = pedcc(4, 8)
    z = F.normalize(c[:1].repeat(16, 1) + 0.05 * _unit(16, 8, seed=1), dim=1)
    for _ in range(20):
        z, before, after = _step(z, lambda v: mmd_loss(v, c), lr=0.5)
        assert after <= before + 1e-6
    assert len(set((z @ c.T).argmax(dim=1).tolist())) > 1


def test_mmd_no_gradient_to_centroids_and_float32_out() -> None:
    c = pedcc(4, 8).requires_grad_(True)
    z = _unit(8, 8).double().requires_grad_(True)
    loss = mmd_loss(z, c)
    loss.backward()
    assert loss.dtype == torch.float32 and c.grad is None and z.grad is not None


def test_mmd_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        mmd_loss(_unit(8, 8), pedcc(4, 7))
    with pytest.raises(ValueError):
        mmd_loss(torch.zeros(0, 8), pedcc(4, 8))


# -- augmentation consistency -----------------------------------------------------------------------------

def test_consistency_identical_views_zero_opposite_four() -> None:
    z = _unit(6, 5)
    assert float(augmentation_consistency_loss(z, z)) == pytest.approx(0.0, abs=1e-6)
    assert float(augmentation_consistency_loss(z, -z)) == pytest.approx(4.0, abs=1e-5)
    e = torch.eye(2)
    assert float(augmentation_consistency_loss(e, e.flip(0))) == pytest.approx(2.0)


def test_consistency_gradient_moves_views_together() -> None:
    z1, z2 = _unit(6, 5, seed=0), _unit(6, 5, seed=1)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    augmentation_consistency_loss(a, b).backward()
    assert a.grad is not None and b.grad is not None  # both views learn
    new_a = F.normalize(a - 0.1 * a.grad, dim=1)
    assert ((new_a * z2).sum(1) > (z1 * z2).sum(1)).all()


def test_consistency_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        augmentation_consistency_loss(_unit(4, 5), _unit(3, 5))


# -- neighbour loss -----------------------------------------------------------------------------------------

def test_neighbor_loss_values() -> None:
    z = _unit(5, 4)
    assert float(neighbor_loss(z, z)) == pytest.approx(0.0, abs=1e-6)
    e = torch.eye(3)
    assert float(neighbor_loss(e, e.roll(1, 0))) == pytest.approx(2.0)


def test_neighbor_loss_pulls_anchor_only_by_default() -> None:
    anchor, nbr = _unit(6, 5, seed=0), _unit(6, 5, seed=1)
    a, n = anchor.clone().requires_grad_(True), nbr.clone().requires_grad_(True)
    neighbor_loss(a, n).backward()
    assert n.grad is None
    new_a = F.normalize(a - 0.1 * a.grad, dim=1)
    assert ((new_a * nbr).sum(1) > (anchor * nbr).sum(1)).all()
    a2, n2 = anchor.clone().requires_grad_(True), nbr.clone().requires_grad_(True)
    neighbor_loss(a2, n2, neighbor_gradient=True).backward()
    assert n2.grad is not None and torch.allclose(a2.grad, a.grad)


# -- minimum centroid distance ------------------------------------------------------------------------------

def test_min_centroid_loss_values() -> None:
    c = pedcc(5, 8)
    assert float(min_centroid_distance_loss(c, c)) == pytest.approx(0.0, abs=1e-6)
    assert float(min_centroid_distance_loss(c[[2, 2, 4]], c)) == pytest.approx(0.0, abs=1e-6)
    # Halfway (normalised) between two simplex vertices: cos = sqrt((1 + cos_ij) / 2).
    mid = F.normalize(c[:1] + c[1:2], dim=1)
    expected = 1 - ((1 - 1 / 4) / 2) ** 0.5
    assert float(min_centroid_distance_loss(mid, c)) == pytest.approx(expected, abs=1e-5)


def test_min_centroid_gradient_moves_toward_nearest_centroid() -> None:
    c = pedcc(5, 8)
    z0 = F.normalize(c[[0, 3]] + 0.4 * _unit(2, 8, seed=3), dim=1)
    nearest = (z0 @ c.T).argmax(dim=1)
    z, before, after = _step(z0, lambda v: min_centroid_distance_loss(v, c))
    assert after < before
    assert ((z * c[nearest]).sum(1) > (z0 * c[nearest]).sum(1)).all()
    assert torch.equal((z @ c.T).argmax(dim=1), nearest)
