"""SeCu method state: per-head assignment memory, cluster counts and size-constraint duals.

The assignment rules are pure functions (:func:`assign_size`, :func:`assign_entropy`, :func:`dual_step`,
:func:`entropy_increments`); :class:`SeCuState` holds the tensors and applies them. Nothing here talks
to ``torch.distributed``: the caller assigns its local batch with :meth:`SeCuState.assign`, gathers the
labels and instance ids of the global batch, and passes those to :meth:`SeCuState.commit`, so every
process applies the same update and the state stays identical on all of them.

Semantics follow the authors' ``secu/builder.py``:

* size constraint (default): ``y_i = argmax_k [s̄_ik + ρ_k]`` and after each step, with the global batch
  of size B and counts n_k, ``ρ_k ← max(0, ρ_k − η·n_k/B + η·γ/K)`` (clip only when γ < 1). ρ is never
  reset; the counts are reset every epoch (they are only logged);
* entropy constraint: ``y_i = argmin_k [−s̄_ik + α·Δ_ik]`` where Δ_ik is the change of Σ_j p_j log p_j
  (= −H) when instance i moves from its previous cluster o to k (Δ_io = 0); counts over all N instances
  persist across epochs and are updated greedily per global batch (``n_y += 1, n_o −= 1``). In the first
  epoch there is no removal term and p = n / (N' + 1), N' = instances assigned so far (argmax when 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = [
    "CONSTRAINTS",
    "assign_size",
    "dual_step",
    "entropy_increments",
    "assign_entropy",
    "HeadMemory",
    "SeCuState",
]

CONSTRAINTS = ("size", "entropy")
UNASSIGNED = -1


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    """p·log p with 0 for p ≤ 0 (as the original, which also zeroes negative arguments)."""
    out = torch.zeros_like(p)
    pos = p > 0
    out[pos] = p[pos] * torch.log(p[pos])
    return out


def assign_size(similarity: torch.Tensor, duals: torch.Tensor) -> torch.Tensor:
    """Assignment under the cluster-size lower bound: ``argmax_k [s̄_ik + ρ_k]``.

    Args:
        similarity: (B, K) two-view averaged similarity s̄.
        duals: (K,) dual variables ρ ≥ 0.

    Returns:
        (B,) int64 labels (ties go to the smallest index).
    """
    return torch.argmin(-similarity - duals.to(similarity.dtype), dim=1)


def dual_step(duals: torch.Tensor, labels: torch.Tensor, lr: float, lower_ratio: float) -> torch.Tensor:
    """One projected dual-ascent step for the constraint ``n_k / B ≥ γ / K``.

    ``ρ_k ← ρ_k − η·n_k/B + η·γ/K``, then clipped at 0 when γ < 1 (as the authors' code).

    Args:
        duals: (K,) current ρ (not modified).
        labels: (B,) labels of the global batch.
        lr: η, the dual learning rate (0.1; 20 on ImageNet).
        lower_ratio: γ, the lower-bound ratio (0.9 → every cluster holds ≥ 0.9/K of the data).

    Returns:
        (K,) new ρ.
    """
    k = duals.shape[0]
    counts = torch.bincount(labels, minlength=k).to(duals.dtype)
    new = duals - lr / labels.shape[0] * counts
    new = new + lr * (lower_ratio / k)
    if lower_ratio < 1:
        new = torch.clamp(new, min=0.0)
    return new


def entropy_increments(counts: torch.Tensor, prev_labels: torch.Tensor | None) -> torch.Tensor | None:
    """Δ_ik: change of Σ_j g(p_j), g(p) = p log p, when instance i moves to cluster k.

    Args:
        counts: (K,) current global counts n (float).
        prev_labels: (B,) previous cluster of each instance (``-1``: never assigned, no removal term), or
            ``None`` in the first epoch (no removal term and p = n / (N' + 1)).

    Returns:
        (B, K) Δ (``(1, K)`` when ``prev_labels`` is None), or None when no instance is counted yet.
    """
    base = counts.sum()
    if prev_labels is None:
        if base <= 0:
            return None
        denom = base + 1.0
        prob = counts / denom
        return (_xlogx(prob + 1.0 / denom) - _xlogx(prob)).unsqueeze(0)
    if base <= 0:
        return None
    prob = counts / base
    increase = _xlogx(prob + 1.0 / base) - _xlogx(prob)                       # (K,)
    seen = prev_labels >= 0
    safe_prev = torch.where(seen, prev_labels, torch.zeros_like(prev_labels))
    label_prob = prob[safe_prev]
    removal = _xlogx(label_prob - 1.0 / base) - _xlogx(label_prob)            # (B,)
    removal = torch.where(seen, removal, torch.zeros_like(removal))
    delta = removal.unsqueeze(1) + increase.unsqueeze(0)
    rows = torch.nonzero(seen).squeeze(1)
    delta[rows, prev_labels[rows]] = 0.0
    return delta


def assign_entropy(similarity: torch.Tensor, counts: torch.Tensor, prev_labels: torch.Tensor | None,
                   alpha: float) -> torch.Tensor:
    """Assignment under the global entropy constraint: ``argmin_k [−s̄_ik + α·Δ_ik]``.

    Args:
        similarity: (B, K) two-view averaged similarity s̄.
        counts: (K,) global counts before this batch.
        prev_labels: (B,) previous labels, or None in the first epoch (see :func:`entropy_increments`).
        alpha: α, the entropy weight (6000 for CIFAR-10 with N = 50 000; scale it with N).

    Returns:
        (B,) int64 labels.
    """
    cost = -similarity
    delta = entropy_increments(counts.to(torch.float64), prev_labels)
    if delta is None:
        return torch.argmin(cost, dim=1)
    return torch.argmin(cost.to(torch.float64) + alpha * delta, dim=1)


@dataclass
class HeadMemory:
    """Tensors of one cluster head.

    Attributes:
        n_clusters: K of the head.
        assignments: (N,) int64 current label of every training instance (``-1`` before its first visit).
        counts: (K,) float64 cluster counts (per epoch in size mode, global and persistent in entropy mode).
        duals: (K,) float64 dual variables ρ of the size lower bound (never reset).
    """

    n_clusters: int
    assignments: torch.Tensor
    counts: torch.Tensor
    duals: torch.Tensor


class SeCuState:
    """Assignment memory, counts and duals of every head, plus the constraint's hyper-parameters.

    Args:
        n_instances: N, the number of training instances (ids ``0..N-1``).
        ks: K of each head, e.g. ``[10, 20, …, 100]``.
        constraint: ``"size"`` (cluster-size lower bound, default) or ``"entropy"``.
        lower_ratio: γ of the size constraint (0.9).
        dual_lr: η of the size constraint (0.1).
        alpha: α of the entropy constraint (6000 for N = 50 000).
        device: where the tensors live.
    """

    def __init__(self, n_instances: int, ks: Sequence[int], constraint: str = "size", lower_ratio: float = 0.9,
                 dual_lr: float = 0.1, alpha: float = 6000.0, device: torch.device | str = "cpu"):
        if constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
        if n_instances <= 0:
            raise ValueError(f"n_instances must be > 0, got {n_instances}")
        if not ks or any(int(k) < 2 for k in ks):
            raise ValueError(f"every head needs K >= 2, got {list(ks)}")
        self.n_instances = int(n_instances)
        self.ks = [int(k) for k in ks]
        self.constraint = constraint
        self.lower_ratio = float(lower_ratio)
        self.dual_lr = float(dual_lr)
        self.alpha = float(alpha)
        self.device = torch.device(device)
        self.heads = [
            HeadMemory(
                n_clusters=k,
                assignments=torch.full((self.n_instances,), UNASSIGNED, dtype=torch.long, device=self.device),
                counts=torch.zeros(k, dtype=torch.float64, device=self.device),
                duals=torch.zeros(k, dtype=torch.float64, device=self.device),
            )
            for k in self.ks
        ]

    # ------------------------------------------------------------------ assignment
    def previous_labels(self, head: int, indices: torch.Tensor) -> torch.Tensor:
        """(B,) stored labels of instances ``indices`` (``-1`` for never-assigned ones)."""
        return self.heads[head].assignments[indices.to(self.device)]

    @torch.no_grad()
    def assign(self, head: int, similarity: torch.Tensor, indices: torch.Tensor, first_epoch: bool
               ) -> torch.Tensor:
        """Labels of a local batch under the head's constraint; the state is not modified.

        Args:
            head: head index.
            similarity: (B, K) two-view averaged similarity to the current centres.
            indices: (B,) instance ids (used by the entropy constraint for the previous labels).
            first_epoch: True in the first epoch (entropy mode: no removal term).

        Returns:
            (B,) int64 labels on ``similarity.device``.
        """
        memory = self.heads[head]
        if similarity.shape[1] != memory.n_clusters:
            raise ValueError(f"head {head} has K={memory.n_clusters}, similarity has {similarity.shape[1]} columns")
        if self.constraint == "size":
            return assign_size(similarity, memory.duals.to(similarity.device))
        prev = None if first_epoch else self.previous_labels(head, indices).to(similarity.device)
        return assign_entropy(similarity, memory.counts.to(similarity.device), prev, self.alpha)

    @torch.no_grad()
    def commit(self, head: int, labels: torch.Tensor, indices: torch.Tensor, first_epoch: bool) -> None:
        """Apply one global batch: update counts (and duals), then store the labels in the memory.

        Args:
            head: head index.
            labels: (B_global,) labels of the global batch (all processes, rank order).
            indices: (B_global,) their instance ids.
            first_epoch: True in the first epoch (entropy mode: counts only grow).
        """
        memory = self.heads[head]
        labels = labels.to(self.device)
        indices = indices.to(self.device)
        k = memory.n_clusters
        if self.constraint == "size":
            memory.duals = dual_step(memory.duals, labels, self.dual_lr, self.lower_ratio)
            memory.counts += torch.bincount(labels, minlength=k).to(memory.counts.dtype)
        else:
            memory.counts += torch.bincount(labels, minlength=k).to(memory.counts.dtype)
            if not first_epoch:
                prev = memory.assignments[indices]
                prev = prev[prev >= 0]
                memory.counts -= torch.bincount(prev, minlength=k).to(memory.counts.dtype)
        memory.assignments[indices] = labels

    def end_epoch(self) -> None:
        """Epoch boundary: the size constraint's counts restart (duals and the memory persist)."""
        if self.constraint == "size":
            for memory in self.heads:
                memory.counts.zero_()

    # ------------------------------------------------------------------ reporting
    def cluster_sizes(self, head: int) -> torch.Tensor:
        """(K,) int64 sizes of the clusters in the assignment memory (unassigned instances ignored)."""
        memory = self.heads[head]
        assigned = memory.assignments[memory.assignments >= 0]
        return torch.bincount(assigned, minlength=memory.n_clusters)

    def stats(self) -> dict[str, Any]:
        """Per-head cluster-size statistics (plain Python numbers, for the per-epoch JSON log).

        ``counts_min/max`` are the authors' printed statistics (this epoch's assignments in size mode,
        the global counts in entropy mode); ``sizes_*`` describe the memory; ``nonempty`` counts
        non-empty clusters; ``dual_max`` is max ρ (size mode).
        """
        out: dict[str, Any] = {}
        for h, memory in enumerate(self.heads):
            sizes = self.cluster_sizes(h)
            entry = {
                "k": memory.n_clusters,
                "counts_min": float(memory.counts.min()),
                "counts_max": float(memory.counts.max()),
                "sizes_min": int(sizes.min()),
                "sizes_max": int(sizes.max()),
                "nonempty": int((sizes > 0).sum()),
                "assigned": int(sizes.sum()),
            }
            if self.constraint == "size":
                entry["dual_max"] = float(memory.duals.max())
            out[f"k{memory.n_clusters}" if self.ks.count(memory.n_clusters) == 1 else f"head{h}"] = entry
        return out

    # ------------------------------------------------------------------ persistence
    def to(self, device: torch.device | str) -> "SeCuState":
        self.device = torch.device(device)
        for memory in self.heads:
            memory.assignments = memory.assignments.to(self.device)
            memory.counts = memory.counts.to(self.device)
            memory.duals = memory.duals.to(self.device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain dict of tensors and numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "n_instances": self.n_instances,
            "ks": list(self.ks),
            "constraint": self.constraint,
            "lower_ratio": self.lower_ratio,
            "dual_lr": self.dual_lr,
            "alpha": self.alpha,
            "assignments": [m.assignments.cpu() for m in self.heads],
            "counts": [m.counts.cpu() for m in self.heads],
            "duals": [m.duals.cpu() for m in self.heads],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["ks"]) != self.ks or int(state["n_instances"]) != self.n_instances:
            raise ValueError(
                f"SeCu state mismatch: checkpoint has N={state['n_instances']}, K={list(state['ks'])}; "
                f"this run has N={self.n_instances}, K={self.ks}"
            )
        if state["constraint"] != self.constraint:
            raise ValueError(f"SeCu state mismatch: checkpoint constraint {state['constraint']!r}, "
                             f"this run {self.constraint!r}")
        for memory, a, c, d in zip(self.heads, state["assignments"], state["counts"], state["duals"]):
            memory.assignments = a.to(self.device, torch.long).clone()
            memory.counts = c.to(self.device, torch.float64).clone()
            memory.duals = d.to(self.device, torch.float64).clone()
