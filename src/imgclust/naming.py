"""Short names for clusters, from what the backbone's ImageNet-1k classifier already knows.

ImageNet-1k classes are WordNet 3.0 noun synsets. A cluster's name is found in three steps:

1. :func:`class_probabilities`: the backbone's class head (:meth:`Backbone.class_head`) applied to the cached
   pooled features, softmax → (N, 1000). No second pass over the images.
2. :func:`cluster_class_probabilities`: the mean of those probabilities over each cluster's images.
3. :func:`choose_synset`: every WordNet synset above an ImageNet class gets the summed probability of the classes
   below it (its *mass*: the chance, by the head's account, that an image of the cluster is one of those). The name
   is the **most specific synset whose mass is at least** ``min_mass``: among those, the one with the fewest
   ImageNet classes below it (ties: the larger mass). Specificity is counted in classes, not WordNet depth, because
   depth differs by branch ("dog", over 118 ImageNet classes, lies 8 hypernyms below "entity" on its first
   path; "cat", over 7, lies 13 below it) while the number of classes covered measures how much the name says: it is the information of the name, log(1000 / classes),
   of the accuracy-specificity trade-off of Deng et al., "Hedging your bets" (CVPR 2012), under a guaranteed
   mass. ``min_mass`` trades one for the other: low values give specific names that fit only part of the
   cluster ("tabby"), high values general names that fit all of it ("carnivore"); any value above 0.5 makes
   the candidates nested, so the choice never jumps between unrelated branches. The default was chosen on
   CIFAR-10 *train* clusters (``benchmarks/naming.py``).

The WordNet table ships in the package (``imagenet_wordnet.json.gz``, made by ``scripts/make_imagenet_names.py``);
nothing here needs WordNet or nltk. Backbones without a class head (self-supervised weights, user-provided
embeddings) get no names: :func:`name_clusters` returns None and callers show cluster numbers.
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ImgclustError

TABLE_FILE = "imagenet_wordnet.json.gz"
N_IMAGENET_CLASSES = 1000
#: Mass the chosen synset must hold (see the module docstring); chosen on CIFAR-10 train clusters.
DEFAULT_MIN_MASS = 0.55


@dataclass(frozen=True)
class ClassHierarchy:
    """The WordNet synsets at and above the ImageNet-1k classes.

    Attributes:
        wnids: WordNet ids (``n`` + 8-digit offset) of all synsets, in a fixed order (the row order below).
        names: their short names (first lemma).
        parents: for each synset, the row indices of its direct hypernyms.
        covers: bool (n_synsets, 1000): ``covers[s, c]`` when ImageNet class c is synset s or a hyponym of it.
        class_rows: (1000,) row of each ImageNet class's own synset.
    """

    wnids: tuple[str, ...]
    names: tuple[str, ...]
    parents: tuple[tuple[int, ...], ...]
    covers: np.ndarray
    class_rows: np.ndarray

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ClassHierarchy:
        """Build from the shipped table: ``{"classes": [wnid]*1000, "synsets": {wnid: [name, [parent wnids]]}}``."""
        synsets = table["synsets"]
        wnids = tuple(sorted(synsets))
        row = {w: i for i, w in enumerate(wnids)}
        parents = tuple(tuple(row[p] for p in synsets[w][1]) for w in wnids)
        class_rows = np.asarray([row[w] for w in table["classes"]], dtype=np.int64)
        covers = np.zeros((len(wnids), len(class_rows)), dtype=bool)
        for c, start in enumerate(class_rows):
            todo = [int(start)]
            while todo:  # the class and every hypernym on every path up (WordNet is a DAG, not a tree)
                s = todo.pop()
                if not covers[s, c]:
                    covers[s, c] = True
                    todo += parents[s]
        return cls(wnids, tuple(synsets[w][0] for w in wnids), parents, covers, class_rows)

    @property
    def n_classes(self) -> int:
        return len(self.class_rows)

    def row(self, wnid: str) -> int:
        try:
            return self.wnids.index(wnid)
        except ValueError:
            raise ImgclustError(f"WordNet id {wnid!r} is not an ImageNet-1k class or one of their hypernyms",
                                fix="use an id of the shipped table (ClassHierarchy.wnids)") from None

    def ancestors(self, wnid: str) -> set[str]:
        """``wnid`` and all its hypernyms (every path up)."""
        seen: set[int] = set()
        todo = [self.row(wnid)]
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo += self.parents[s]
        return {self.wnids[s] for s in seen}

    def mass(self, class_probabilities: np.ndarray) -> np.ndarray:
        """(..., 1000) class probabilities → (..., n_synsets) summed probability of the classes below each synset."""
        return np.asarray(class_probabilities, dtype=np.float64) @ self.covers.T


@functools.cache
def imagenet_hierarchy() -> ClassHierarchy:
    """The shipped ImageNet-1k WordNet hierarchy (read once per process)."""
    with resources.files(__package__).joinpath(TABLE_FILE).open("rb") as raw, gzip.open(raw, "rt") as f:
        return ClassHierarchy.from_table(json.load(f))


@dataclass(frozen=True)
class ClusterName:
    """The name of one cluster.

    Attributes:
        cluster: the cluster label.
        name: short, unique among the clusters named together ("dog", "dog (2)").
        synset: the WordNet id the name comes from (``n02084071``).
        synset_name: that synset's own short name ("dog"), without the disambiguating suffix.
        mass: the cluster's mean probability of the ImageNet classes below that synset, in [0, 1].
        size: images in the cluster.
    """

    cluster: int
    name: str
    synset: str
    synset_name: str
    mass: float
    size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_probabilities(features: np.ndarray | torch.Tensor, head: nn.Module, batch_size: int = 4096,
                        device: str | torch.device = "cpu") -> np.ndarray:
    """Softmax of a class head over pooled features, in batches (a memory-mapped float16 cache is fine).

    Args:
        features: (N, D) pooled backbone features, D = the head's input size.
        head: maps float (n, D) to (n, C) logits (:meth:`Backbone.class_head`).
        batch_size: rows per step.
        device: where to compute.

    Returns:
        (N, C) float32 probabilities; rows sum to 1.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ImgclustError(f"features must be a non-empty (N, D) array to name clusters; got shape "
                            f"{tuple(features.shape)}", fix="pass the pooled features of the clustered images")
    head = head.to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, features.shape[0], batch_size):
            block = torch.as_tensor(np.array(features[start:start + batch_size], dtype=np.float32))
            out.append(torch.softmax(head(block.to(device)), dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def cluster_class_probabilities(probabilities: np.ndarray, labels: np.ndarray, n_clusters: int | None = None
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Mean class probabilities of each cluster.

    Args:
        probabilities: (N, C) per-image class probabilities.
        labels: (N,) cluster labels 0..K-1; negative labels (unassigned) are left out.
        n_clusters: K; default ``labels.max() + 1``.

    Returns:
        ``(means, sizes)``: (K, C) float64 means (zeros for an empty cluster) and (K,) int64 cluster sizes.
    """
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels).astype(np.int64, copy=False)
    if probabilities.ndim != 2 or labels.shape != (probabilities.shape[0],):
        raise ImgclustError(f"probabilities {probabilities.shape} and labels {labels.shape} do not match",
                            fix="pass one probability row and one cluster label per image")
    k = int(n_clusters if n_clusters is not None else labels.max(initial=-1) + 1)
    keep = (labels >= 0) & (labels < k)
    sums = np.zeros((k, probabilities.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[keep], probabilities[keep])
    sizes = np.bincount(labels[keep], minlength=k).astype(np.int64)
    return sums / np.maximum(sizes, 1)[:, None], sizes


def choose_synset(class_probabilities: np.ndarray, hierarchy: ClassHierarchy | None = None,
                  min_mass: float = DEFAULT_MIN_MASS) -> tuple[str, float]:
    """The most specific synset holding at least ``min_mass`` of a probability vector (module docstring).

    Args:
        class_probabilities: (1000,) probabilities of the ImageNet classes (a cluster's mean).
        hierarchy: default: the shipped ImageNet-1k hierarchy.
        min_mass: in (0, 1].

    Returns:
        ``(wnid, mass)`` of the chosen synset.
    """
    hierarchy = hierarchy or imagenet_hierarchy()
    if not 0 < min_mass <= 1:
        raise ImgclustError(f"min_mass must lie in (0, 1]; got {min_mass}", fix=f"use e.g. {DEFAULT_MIN_MASS}")
    mass = hierarchy.mass(class_probabilities)
    # Probabilities summing to slightly under 1 (float32) must still let the root qualify.
    candidates = np.flatnonzero(mass >= min(min_mass, mass.max()) - 1e-9)
    n_covered = hierarchy.covers[candidates].sum(axis=1)
    best = candidates[np.lexsort((-mass[candidates], n_covered))[0]]
    return hierarchy.wnids[best], float(mass[best])


def unique_names(names: list[str]) -> list[str]:
    """Number repeated names in order: ["dog", "cat", "dog"] → ["dog", "cat", "dog (2)"]."""
    taken = set(names)
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 1:
            out.append(name)
            continue
        n = seen[name]
        while f"{name} ({n})" in taken:  # never collide with a name that has a number of its own
            n += 1
        seen[name] = n
        taken.add(f"{name} ({n})")
        out.append(f"{name} ({n})")
    return out


def name_clusters(probabilities: np.ndarray, labels: np.ndarray, n_clusters: int | None = None,
                  min_mass: float = DEFAULT_MIN_MASS, hierarchy: ClassHierarchy | None = None
                  ) -> list[ClusterName]:
    """Name every cluster from per-image ImageNet-1k class probabilities.

    Repeated names are numbered, the cluster holding more of the shared synset's mass keeping the plain name.
    An empty cluster is named by its number.

    Args:
        probabilities: (N, 1000) per-image class probabilities (:func:`class_probabilities`).
        labels: (N,) cluster labels 0..K-1 (negative: unassigned, ignored).
        n_clusters: K; default ``labels.max() + 1``.
        min_mass: see :func:`choose_synset`.
        hierarchy: default: the shipped ImageNet-1k hierarchy.

    Returns:
        One :class:`ClusterName` per cluster 0..K-1, in cluster order.
    """
    hierarchy = hierarchy or imagenet_hierarchy()
    if np.asarray(probabilities).shape[-1] != hierarchy.n_classes:
        raise ImgclustError(f"expected probabilities of the {hierarchy.n_classes} ImageNet-1k classes, got "
                            f"{np.asarray(probabilities).shape[-1]} columns",
                            fix="use the backbone's ImageNet-1k class head (Backbone.class_head())")
    means, sizes = cluster_class_probabilities(probabilities, labels, n_clusters)
    chosen = [choose_synset(m, hierarchy, min_mass) if size else ("", 0.0) for m, size in zip(means, sizes)]
    bases = [hierarchy.names[hierarchy.row(w)] if w else str(c) for c, (w, _) in enumerate(chosen)]
    # Plain name to the cluster with the most mass on it: number the others in order of decreasing mass.
    order = sorted(range(len(chosen)), key=lambda c: (-chosen[c][1], c))
    numbered = dict(zip(order, unique_names([bases[c] for c in order])))
    return [ClusterName(c, numbered[c], w, bases[c] if w else "", round(m, 4), int(sizes[c]))
            for c, (w, m) in enumerate(chosen)]


def name_clusters_with_head(features: np.ndarray | torch.Tensor, labels: np.ndarray, head: nn.Module | None,
                            n_clusters: int | None = None, min_mass: float = DEFAULT_MIN_MASS,
                            device: str | torch.device = "cpu") -> list[ClusterName] | None:
    """:func:`name_clusters` from pooled features and a class head; None when there is no ImageNet-1k head.

    Args:
        features: (N, D) pooled features of the clustered images (the cache of the backbone ``head`` belongs to).
        labels: (N,) cluster labels.
        head: ``backbone.class_head()``; None (no head) → None.
        n_clusters, min_mass: see :func:`name_clusters`.
        device: where the head runs.
    """
    if head is None:
        return None
    probabilities = class_probabilities(features, head, device=device)
    if probabilities.shape[1] != N_IMAGENET_CLASSES:
        return None
    return name_clusters(probabilities, labels, n_clusters, min_mass)
