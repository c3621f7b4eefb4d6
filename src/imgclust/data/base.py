"""The two kinds of dataset every later stage consumes: images decoded lazily, or ready-made embeddings."""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image


class ImageDataset(abc.ABC):
    """N images addressed by index; nothing is decoded until :meth:`load` is called.

    Attributes:
        name: short human name of the source (folder path, ``cifar10:train``…).
        items: one identifier per image: an absolute file path, or ``"<name>[i]"`` for array rows.
        labels: int64 array (N,) of class indices, or ``None`` when the source is unlabelled.
            Labels are used only for evaluation, never for fitting.
        class_names: names of the label indices, or ``None``.
    """

    name: str
    items: list[str]
    labels: np.ndarray | None
    class_names: list[str] | None

    def __len__(self) -> int:
        return len(self.items)

    @abc.abstractmethod
    def load(self, index: int) -> Image.Image:
        """Return image ``index`` as an RGB PIL image; raise :class:`BadImageError` if it cannot be used."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hex digest that changes whenever the images (or their order) change; keys the feature cache."""

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        return SubsetImageDataset(self, np.asarray(indices, dtype=np.int64))


class SubsetImageDataset(ImageDataset):
    """A view on some rows of another image dataset (used for the valid rows and for test subsets)."""

    def __init__(self, parent: ImageDataset, indices: np.ndarray):
        self.parent = parent
        self.indices = indices
        self.name = parent.name
        self.items = [parent.items[i] for i in indices]
        self.labels = None if parent.labels is None else parent.labels[indices]
        self.class_names = parent.class_names

    def load(self, index: int) -> Image.Image:
        return self.parent.load(int(self.indices[index]))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.parent.fingerprint().encode())
        digest.update(self.indices.tobytes())
        return digest.hexdigest()


@dataclass
class EmbeddingDataset:
    """Ready-made feature vectors (bring-your-own embeddings): the backbone stage is skipped.

    Attributes:
        features: float32 array (N, D), finite.
        labels: int64 array (N,) or ``None``.
        items: one identifier per row.
    """

    name: str
    features: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    items: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.items:
            self.items = [f"{self.name}[{i}]" for i in range(len(self.features))]

    def __len__(self) -> int:
        return len(self.features)
