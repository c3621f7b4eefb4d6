"""SeCu losses: pure functions of tensors (no state, no distributed calls, no device assumptions).

Qian, "Stable Cluster Discrimination for Deep Clustering", ICCV 2023 (arXiv 2311.14310); formulas read
from the authors' ``secu/builder.py`` (idstcv/SeCu). Per head, with unit features ``z`` of two views
``a`` and ``b``:

* centre loss ("stable cluster discrimination"): the logits ``sg(z)·c_k / τ_w`` keep a live gradient only
  for the assigned centre ``c_y``; every other logit is detached. The gradient on ``c_y`` from instance i
  is ``-(1 - P_iy) z_i / τ_w`` (hardness weight ``1 - P``) and no other centre moves, so negative
  instances never push centres around;
* representation loss: cross-entropy of ``softmax(z·C̄ / τ_x)`` against the epoch-start centre snapshot
  ``C̄`` (no gradient to centres), with the target ``(1 - τ)·sg(softmax(z_other·C̄ / τ_x)) + τ·onehot(ỹ)``
  mixing the other view's soft assignment and the previous epoch's label ``ỹ``.

Both functions return the sum over the two views, as the original; the caller divides the sum over
heads by ``2·H``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["centre_logits", "centre_loss", "representation_loss", "soft_targets", "mean_similarity"]


def _check_pair(z_a: torch.Tensor, z_b: torch.Tensor) -> None:
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"the two views must be (B, D) tensors of equal shape, got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    if z_a.shape[0] == 0:
        raise ValueError("empty batch: SeCu losses need at least one instance")


def mean_similarity(z_a: torch.Tensor, z_b: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Two-view averaged similarity used for the assignment (no gradient).

    Args:
        z_a, z_b: (B, D) unit features of the two views.
        centres: (K, D) unit centres (the current ones, not the snapshot).

    Returns:
        (B, K) ``(z_a·c_k + z_b·c_k) / 2``.
    """
    _check_pair(z_a, z_b)
    with torch.no_grad():
        c = centres.detach().float()
        return 0.5 * (z_a.detach().float() @ c.T + z_b.detach().float() @ c.T)


def centre_logits(features: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Similarities ``sg(z)·c_k`` in which only the assigned centre keeps its gradient.

    Args:
        features: (B, D) unit features; detached here, so the encoder gets no gradient.
        centres: (K, D) unit centres (differentiable).
        labels: (B,) int64 assigned cluster of each instance.

    Returns:
        (B, K) logits: entry (i, labels[i]) is differentiable w.r.t. ``centres[labels[i]]``; all other
        entries are constants.
    """
    if features.dim() != 2 or centres.dim() != 2 or features.shape[1] != centres.shape[1]:
        raise ValueError(f"features (B, D) and centres (K, D) must share D, got {tuple(features.shape)} "
                         f"and {tuple(centres.shape)}")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")
    sim = features.detach().float() @ centres.float().T
    keep = F.one_hot(labels, num_classes=centres.shape[0]).bool()
    return torch.where(keep, sim, sim.detach())


def centre_loss(z_a: torch.Tensor, z_b: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Stable cluster-discrimination loss for the centres, summed over the two views.

    ``CE(ŝ_a / τ_w, y) + CE(ŝ_b / τ_w, y)`` with batch-mean cross-entropy and ŝ from
    :func:`centre_logits`. Its gradient on ``c_y`` from instance i is ``-(1 - P_iy)·z_i / (B·τ_w)``
    (before the normalisation Jacobian): hard instances (small P_iy) weigh more.

    Args:
        z_a, z_b: (B, D) unit features of the two views (no gradient flows to them).
        centres: (K, D) unit centres of one head, differentiable.
        labels: (B,) fresh assignment of this step.
        temperature: τ_w (0.05 in the authors' CIFAR scripts, 1.0 for STL-10).

    Returns:
        Scalar tensor (float32).

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> c = torch.nn.functional.normalize(torch.randn(3, 8), dim=1).requires_grad_()
        >>> centre_loss(z, z, c, torch.tensor([0, 1, 2, 0]), 0.05).backward()
    """
    _check_pair(z_a, z_b)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    loss_a = F.cross_entropy(centre_logits(z_a, centres, labels) / temperature, labels)
    loss_b = F.cross_entropy(centre_logits(z_b, centres, labels) / temperature, labels)
    return loss_a + loss_b


def soft_targets(other_logits: torch.Tensor, labels: torch.Tensor, mix: float) -> torch.Tensor:
    """Mixed target ``(1 - τ)·softmax(other_logits) + τ·onehot(labels)`` (no gradient).

    Args:
        other_logits: (B, K) logits of the other view against the snapshot, already divided by τ_x.
        labels: (B,) previous-epoch labels ỹ.
        mix: τ, the weight of the one-hot part (0.2 in the authors' scripts).

    Returns:
        (B, K) rows summing to 1.
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must lie in [0, 1], got {mix}")
    with torch.no_grad():
        target = (1.0 - mix) * F.softmax(other_logits.detach().float(), dim=1)
        target[torch.arange(labels.shape[0], device=labels.device), labels] += mix
    return target


def representation_loss(z_a: torch.Tensor, z_b: torch.Tensor, snapshot: torch.Tensor,
                        prev_labels: torch.Tensor, temperature: float, mix: float) -> torch.Tensor:
    """Representation loss against the epoch-start centre snapshot, summed over the two views.

    ``-mean_i Σ_k t^a_ik log q^a_ik - mean_i Σ_k t^b_ik log q^b_ik`` with ``q = softmax(z·C̄ᵀ / τ_x)`` and
    ``t^a = (1 - τ)·sg(q^b) + τ·onehot(ỹ)`` (symmetrically for ``t^b``).

    Args:
        z_a, z_b: (B, D) unit features of the two views (differentiable: the encoder learns from this).
        snapshot: (K, D) unit centres frozen at the start of the epoch (treated as constants).
        prev_labels: (B,) the assignment from the previous epoch (the fresh one in the first epoch).
        temperature: τ_x (0.05).
        mix: τ (0.2).

    Returns:
        Scalar tensor (float32).
    """
    _check_pair(z_a, z_b)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    c = snapshot.detach().float()
    logits_a = z_a.float() @ c.T / temperature
    logits_b = z_b.float() @ c.T / temperature
    target_a = soft_targets(logits_b, prev_labels, mix)
    target_b = soft_targets(logits_a, prev_labels, mix)
    loss_a = -(F.log_softmax(logits_a, dim=1) * target_a).sum(dim=1).mean()
    loss_b = -(F.log_softmax(logits_b, dim=1) * target_b).sum(dim=1).mean()
    return loss_a + loss_b
