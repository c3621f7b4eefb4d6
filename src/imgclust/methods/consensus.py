"""Consensus of several clusterings of the same samples (restarts of one method with different seeds).

Deep clustering heads land in different partitions from different initialisations: ICBPL in head mode on
10,000 CIFAR-10 images gave train ACC 0.467-0.541 over seeds 0-4, and its label-free training objective did
not rank them (BENCHMARKS.md). Averaging the partitions is more reliable than picking one: each sample is
encoded by the concatenated one-hot vectors of its cluster in every restart, and k-means groups those codes
(the "voting" / cluster-based-similarity consensus; two samples are close when many restarts put them
together). No label is used.

:class:`ConsensusModel` keeps every member model and the K consensus centres, so new inputs are assigned the
same way: each member assigns them, and the one-hot code goes to its nearest centre. Assigning the training
inputs reproduces the consensus labels.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from ..errors import ImgclustError
from .base import Assignment, ClusterModel


class Consensus(NamedTuple):
    """The consensus partition and its centres in the concatenated one-hot space (K, R·K)."""

    labels: np.ndarray
    centres: np.ndarray


def one_hot_codes(labelings: Sequence[np.ndarray], n_clusters: int) -> np.ndarray:
    """(N, R·K) float32: block r is the one-hot vector of each sample's cluster in labelling r."""
    n = len(labelings[0])
    codes = np.zeros((n, len(labelings) * n_clusters), dtype=np.float32)
    rows = np.arange(n)
    for r, labels in enumerate(labelings):
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= n_clusters:
            raise ImgclustError(f"labelling {r} has shape {labels.shape} or labels outside 0..{n_clusters - 1}",
                                "pass one label in 0..K-1 per sample for every labelling")
        codes[rows, r * n_clusters + labels] = 1.0
    return codes


def consensus_partition(labelings: Sequence[np.ndarray], n_clusters: int, seed: int = 0,
                        n_init: int = 10) -> Consensus:
    """k-means (``n_init`` seeded restarts) on the one-hot codes of ``labelings``; labels = nearest centre."""
    if len(labelings) < 1:
        raise ImgclustError("no labelling to combine", "pass at least one labelling")
    codes = one_hot_codes(labelings, n_clusters)
    km = KMeans(n_clusters, n_init=n_init, random_state=seed).fit(codes)
    centres = km.cluster_centers_.astype(np.float32)
    return Consensus(_nearest(codes, centres), centres)


def _nearest(codes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # Squared distance up to the per-row constant |code|² = R; ties go to the lower index, as in argmin.
    return np.argmin((centres ** 2).sum(1)[None, :] - 2.0 * codes @ centres.T, axis=1).astype(np.int64)


def mean_pairwise_nmi(labelings: Sequence[np.ndarray]) -> float:
    """How much the restarts agree (1 = identical partitions); a label-free diagnostic for the log."""
    pairs = [(a, b) for i, a in enumerate(labelings) for b in labelings[i + 1:]]
    return float(np.mean([normalized_mutual_info_score(a, b) for a, b in pairs])) if pairs else 1.0


class ConsensusModel(ClusterModel):
    """Member models (same method and inputs) plus consensus centres; see the module docstring.

    ``confidence`` of an input is the mean, over members, of the share of the assigned consensus cluster that
    this member puts in the same cluster as the input (1 when every member agrees with the cluster's
    majority); ``distance`` is the cosine distance between its one-hot code and the assigned centre.
    """

    def __init__(self, members: Sequence[ClusterModel], centres: np.ndarray):
        if not members:
            raise ImgclustError("a consensus needs at least one member model", "fit at least one restart")
        encoders = {m.input_encoder for m in members}
        if len(encoders) != 1:
            raise ImgclustError(f"consensus members consume different inputs: {sorted(encoders)}",
                                "combine restarts of one method with the same settings")
        self.members = list(members)
        self.centres = np.asarray(centres, dtype=np.float32)
        self.method = members[0].method
        self.input_encoder = members[0].input_encoder
        self.n_clusters = self.centres.shape[0]

    def assign(self, inputs: np.ndarray, device: torch.device | str = "cpu") -> Assignment:
        labelings = [m.assign(inputs, device=device).labels for m in self.members]
        return self.assign_labelings(labelings)

    def assign_labelings(self, labelings: Sequence[np.ndarray]) -> Assignment:
        """Consensus assignment of samples given each member's labels of them."""
        codes = one_hot_codes(labelings, self.n_clusters)
        labels = _nearest(codes, self.centres)
        chosen = self.centres[labels]
        confidence = (codes * chosen).sum(1) / len(self.members)
        cosine = confidence * len(self.members) / (np.sqrt(len(self.members)) * np.linalg.norm(chosen, axis=1))
        return Assignment(labels, confidence.astype(np.float32), (1.0 - cosine).astype(np.float32))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"consensus.centres": torch.from_numpy(self.centres)}
        for r, member in enumerate(self.members):
            tensors.update({f"members.{r}.{k}": v for k, v in member.state_tensors().items()})
        return tensors

    def config(self) -> dict[str, Any]:
        first = self.members[0].config()
        return {"consensus": {"members": [m.config() for m in self.members]},
                "n_clusters": int(first.get("n_clusters", self.n_clusters))}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                   member_from_state: Callable[[dict[str, torch.Tensor], dict[str, Any]], ClusterModel] | None = None
                   ) -> "ConsensusModel":
        if member_from_state is None:
            raise ImgclustError("a saved consensus model needs its member method to be rebuilt",
                                "load it through ImageClusterer.load")
        members = []
        for r, member_config in enumerate(config["consensus"]["members"]):
            prefix = f"members.{r}."
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            members.append(member_from_state(own, member_config))
        return cls(members, tensors["consensus.centres"].numpy())
