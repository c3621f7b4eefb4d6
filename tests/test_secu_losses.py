"""SeCu losses (methods/secu/losses.py): gradient routing, hardness weighting, values, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from imgclust.methods.secu.losses import (
    centre_logits,
    centre_loss,
    mean_similarity,
    representation_loss,
    soft_targets,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def unit(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


# ---------------------------------------------------------------------------------------- centre loss
def test_only_assigned_centre_gets_gradient() -> None:
    z = unit(6, 8, seed=1)
    centres = unit(5, 8, seed=2).requires_grad_()
    labels = torch.tensor([2, 2, 4, 4, 2, 4])
    feats = z.clone().requires_grad_()
    centre_loss(feats, feats, centres, labels, temperature=0.05).backward()
    grad_norm = centres.grad.norm(dim=1)
    assert torch.all(grad_norm[[0, 1, 3]] == 0)
    assert torch.all(grad_norm[[2, 4]] > 0)
    # the encoder gets nothing from the centre loss
    assert feats.grad is None or torch.all(feats.grad == 0)


def _grad_on_assigned(z: torch.Tensor, centres: torch.Tensor, label: int, tw: float) -> torch.Tensor:
    c = centres.clone().requires_grad_()
    loss = F.cross_entropy(centre_logits(z[None], c, torch.tensor([label])) / tw, torch.tensor([label]))
    loss.backward()
    return c.grad[label]


def test_gradient_scales_with_hardness() -> None:
    """∂CE/∂c_y = −(1 − P_y)·z/τ_w: an easy instance (high P_y) moves its centre less than a hard one."""
    tw = 0.5
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    easy = F.normalize(torch.tensor([1.0, 0.1], dtype=torch.float64), dim=0)   # close to centre 0
    hard = F.normalize(torch.tensor([1.0, 0.9], dtype=torch.float64), dim=0)   # near the boundary
    grads, weights = [], []
    for z in (easy, hard):
        p = torch.softmax(z @ centres.T / tw, dim=0)[0]
        g = _grad_on_assigned(z, centres, 0, tw)
        torch.testing.assert_close(g, -(1 - p) * z / tw)
        grads.append(g.norm())
        weights.append(1 - p)
    assert weights[0] < weights[1]
    assert grads[0] < grads[1]
    torch.testing.assert_close(grads[0] / grads[1], weights[0] / weights[1])


def test_centre_loss_value_is_plain_cross_entropy() -> None:
    z_a, z_b = unit(7, 4, seed=3), unit(7, 4, seed=4)
    centres = unit(3, 4, seed=5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    expected = F.cross_entropy(z_a @ centres.T / 0.05, labels) + F.cross_entropy(z_b @ centres.T / 0.05, labels)
    torch.testing.assert_close(centre_loss(z_a, z_b, centres, labels, 0.05), expected)


def test_centre_loss_hand_computed() -> None:
    # one instance equal to centre 0, orthogonal to centre 1, τ_w = 1: CE = log(1 + e^{-1})
    z = torch.tensor([[1.0, 0.0]])
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = centre_loss(z, z, centres, torch.tensor([0]), 1.0)
    assert math.isclose(loss.item(), 2 * math.log(1 + math.exp(-1)), rel_tol=1e-6)


def test_centre_steps_lower_the_loss() -> None:
    z = unit(32, 8, seed=6)
    raw = unit(4, 8, seed=7).requires_grad_()
    labels = torch.arange(32) % 4
    opt = torch.optim.SGD([raw], lr=0.5)
    losses = []
    for _ in range(20):
        loss = centre_loss(z, z, F.normalize(raw, dim=1), labels, 0.1)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_centre_loss_dtypes(dtype: torch.dtype) -> None:
    z = unit(5, 8, seed=8, dtype=dtype)
    centres = unit(3, 8, seed=9, dtype=dtype).requires_grad_()
    loss = centre_loss(z, z, centres, torch.tensor([0, 1, 2, 0, 1]), 0.05)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert centres.grad is not None and centres.grad.dtype == dtype


# ------------------------------------------------------------------------------- representation loss
def _representation_oracle(z_a, z_b, snap, prev, tx, mix) -> torch.Tensor:
    """Instance-by-instance transcription of the formula in seed-methods.md §2.3 (3)."""
    total = 0.0
    n = z_a.shape[0]
    for i in range(n):
        qa = torch.softmax(z_a[i] @ snap.T / tx, dim=0)
        qb = torch.softmax(z_b[i] @ snap.T / tx, dim=0)
        onehot = torch.zeros(snap.shape[0], dtype=z_a.dtype)
        onehot[prev[i]] = 1
        ta = (1 - mix) * qb + mix * onehot
        tb = (1 - mix) * qa + mix * onehot
        total = total - (ta * torch.log(qa)).sum() / n - (tb * torch.log(qb)).sum() / n
    return total


def test_representation_loss_matches_formula() -> None:
    z_a, z_b = unit(6, 5, seed=10, dtype=torch.float64), unit(6, 5, seed=11, dtype=torch.float64)
    snap = unit(4, 5, seed=12, dtype=torch.float64)
    prev = torch.tensor([0, 3, 1, 1, 2, 0])
    got = representation_loss(z_a.float(), z_b.float(), snap.float(), prev, temperature=0.05, mix=0.2)
    want = _representation_oracle(z_a, z_b, snap, prev, 0.05, 0.2)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_representation_loss_gradient_goes_to_features_only() -> None:
    z_a = unit(6, 5, seed=13).requires_grad_()
    z_b = unit(6, 5, seed=14).requires_grad_()
    snap = unit(4, 5, seed=15).requires_grad_()
    representation_loss(z_a, z_b, snap, torch.tensor([0, 1, 2, 3, 0, 1]), 0.05, 0.2).backward()
    assert snap.grad is None
    assert z_a.grad is not None and z_a.grad.abs().sum() > 0
    assert z_b.grad is not None and z_b.grad.abs().sum() > 0


def test_targets_mix_other_view_and_previous_label() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([2, 0])
    t = soft_targets(logits, labels, 0.2)
    torch.testing.assert_close(t.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(t[1], torch.tensor([0.8 / 3 + 0.2, 0.8 / 3, 0.8 / 3]))
    torch.testing.assert_close(soft_targets(logits, labels, 1.0), F.one_hot(labels, 3).float())


def test_mean_similarity() -> None:
    z_a, z_b, c = unit(3, 4, seed=16), unit(3, 4, seed=17), unit(5, 4, seed=18)
    torch.testing.assert_close(mean_similarity(z_a, z_b, c), 0.5 * (z_a @ c.T + z_b @ c.T))


# ------------------------------------------------------------------------------------------- errors
def test_degenerate_inputs_raise() -> None:
    c = unit(3, 4)
    with pytest.raises(ValueError, match="empty batch"):
        centre_loss(torch.zeros(0, 4), torch.zeros(0, 4), c, torch.zeros(0, dtype=torch.long), 0.05)
    with pytest.raises(ValueError, match="equal shape"):
        representation_loss(unit(2, 4), unit(3, 4), c, torch.tensor([0, 1]), 0.05, 0.2)
    with pytest.raises(ValueError, match="temperature"):
        centre_loss(unit(2, 4), unit(2, 4), c, torch.tensor([0, 1]), 0.0)
    with pytest.raises(ValueError, match="share D"):
        centre_loss(unit(2, 5), unit(2, 5), c, torch.tensor([0, 1]), 0.05)
    with pytest.raises(ValueError, match="mix"):
        representation_loss(unit(2, 4), unit(2, 4), c, torch.tensor([0, 1]), 0.05, 1.5)
