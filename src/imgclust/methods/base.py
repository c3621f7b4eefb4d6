"""What every clustering method receives (FitContext) and returns (ClusterModel)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.base import ImageDataset
from ..features.source import FeatureSource


@dataclass
class Assignment:
    """Cluster assignment of N samples.

    Attributes:
        labels: (N,) int64 cluster index.
        confidence: (N,) float in [0, 1], the probability of the assigned cluster under the method's own model.
        distance: (N,) float, cosine distance 1 − cos to the assigned cluster's centre/centroid.
    """

    labels: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray


@dataclass
class FitContext:
    """Everything a method may use to fit. Labels are for logging/evaluation only, never for fitting.

    Attributes:
        features: (N, D) float32 clean features (L2-normalisation is the method's job), or what the method's
            ``fit_input`` asked for (e.g. uint8 (N, 3, S, S) pixels).
        n_clusters: K.
        dataset: the decodable images (row i ↔ features[i]), or ``None`` for bring-your-own embeddings.
        source: the feature source that produced ``features`` (backbones and extraction settings, to compute
            augmented views or fine-tune), or ``None`` for embeddings.
        spaces: column ranges ``(start, stop)`` of the representation spaces in ``features`` (one per
            backbone); default: one space of all columns.
        labels: (N,) int64 ground truth when known, for logging purity/metrics per epoch only.
        run_dir: folder for checkpoints and the training log, or ``None`` (no checkpoints).
        resume: continue from ``run_dir/checkpoints/last.pt`` when it exists.
        options: method-specific settings (resolved by the method's declared options).
    """

    features: np.ndarray
    n_clusters: int
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dataset: ImageDataset | None = None
    source: FeatureSource | None = None
    spaces: list[tuple[int, int]] = field(default_factory=list)
    labels: np.ndarray | None = None
    run_dir: Path | None = None
    resume: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.spaces and np.ndim(self.features) == 2:
            self.spaces = [(0, int(np.shape(self.features)[1]))]


class ClusterModel(abc.ABC):
    """A fitted clustering that can assign new samples and be saved as safetensors + JSON.

    ``input_encoder`` says what :meth:`assign` consumes: ``"backbone"`` = clean-view backbone features;
    a fine-tuned model may instead declare its own (e.g. ``"trunk-2"`` with ``backbone_state``), so that
    prediction on new images reproduces training.
    """

    method: str = ""
    input_encoder: str = "backbone"

    @abc.abstractmethod
    def assign(self, inputs: np.ndarray, device: torch.device | str = "cpu") -> Assignment:
        """Assign (N, ...) inputs of the kind named by ``input_encoder``."""

    @abc.abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """All learned tensors (saved with safetensors)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings needed to rebuild the model with :meth:`from_state`."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "ClusterModel":
        """Rebuild a saved model."""


@dataclass
class FitResult:
    """A fitted model plus the assignment of its training samples and what the method logged."""

    model: ClusterModel
    assignment: Assignment
    info: dict[str, Any] = field(default_factory=dict)
