"""What every clustering method receives (FitContext) and returns (ClusterModel)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.base import ImageDataset


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
        features: (N, D) float32 backbone features of the clean view (L2-normalisation is the method's job).
        n_clusters: K.
        dataset: the decodable images (row i ↔ features[i]), or ``None`` for bring-your-own embeddings.
        backbone: the backbone that produced ``features``, or ``None`` for embeddings.
        labels: (N,) int64 ground truth when known, for logging purity/metrics per epoch only.
        run_dir: folder for checkpoints and the training log, or ``None`` (no checkpoints).
        resume: continue from ``run_dir/checkpoints/last.pt`` when it exists.
        options: method-specific settings (validated by the method).
        cache_dir, batch_size, num_workers, progress, shard_size, precision: for feature extraction.
    """

    features: np.ndarray
    n_clusters: int
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dataset: ImageDataset | None = None
    backbone: Any = None
    labels: np.ndarray | None = None
    run_dir: Path | None = None
    resume: bool = False
    cache_dir: Path | None = None
    batch_size: int = 64
    num_workers: int | None = None
    progress: bool = True
    shard_size: int = 2048
    precision: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)


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
