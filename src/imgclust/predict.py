"""``imgclust predict``: assign new images to the clusters of a finished run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ImgclustError
from .estimator import ImageClusterer
from .runfolder import Assignments, write_assignments_csv


@dataclass
class Prediction:
    """Assignments of new images.

    Attributes:
        items: path (or id) of every input row.
        labels: (N,) cluster, -1 where the image could not be decoded.
        confidence, distance: (N,) floats, NaN where undecodable.
        skipped: ``{"item", "reason"}`` per undecodable image.
        n_clusters: K of the run.
    """

    items: list[str]
    labels: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray
    skipped: list[dict[str, str]]
    n_clusters: int


def _source(inputs: Sequence[str]) -> Any:
    """One folder / array file / builtin spec as is; several paths (or one image file) as a list of files."""
    if not inputs:
        raise ImgclustError("no images to predict", "pass a folder or image files after the run folder")
    expanded = [os.path.expanduser(p) for p in inputs]
    if len(expanded) == 1:
        only = expanded[0]
        if only.startswith("builtin:") or os.path.isdir(only) or only.lower().endswith((".npy", ".npz")):
            return only
    for path in expanded:
        if os.path.isdir(path):
            raise ImgclustError(f"{path} is a folder; pass either one folder or a list of image files",
                                "run predict once per folder")
        if not os.path.exists(path):
            raise ImgclustError(f"{path} does not exist", "check the path")
    return expanded


def predict_images(run_dir: str | os.PathLike, inputs: Sequence[str], device: str | None = None,
                   batch_size: int | None = None, progress: bool = True) -> Prediction:
    """Load the model saved in ``run_dir`` and assign ``inputs`` (a folder, image files, or any source)."""
    clusterer = ImageClusterer.load(run_dir)
    clusterer.progress = progress
    if device is not None:
        clusterer.device = device
    if batch_size is not None:
        clusterer.batch_size = batch_size
    assignment, items, skipped = clusterer.predict_assignment(_source(list(inputs)))
    k = int(clusterer.n_clusters_)
    return Prediction(items=items, labels=assignment.labels, confidence=assignment.confidence,
                      distance=assignment.distance, skipped=skipped, n_clusters=k)


def write_prediction(path: str | os.PathLike, prediction: Prediction) -> Path:
    """``path, cluster, confidence, distance`` per row (the format of the run's assignments.csv)."""
    path = Path(path)
    write_assignments_csv(path, Assignments(prediction.items, prediction.labels, prediction.confidence,
                                            prediction.distance))
    return path


def format_prediction(prediction: Prediction, limit: int = 20, more_hint: bool = True) -> str:
    """A table of the first ``limit`` rows and the count per cluster, for the terminal."""
    lines = []
    width = min(60, max((len(os.path.basename(i)) for i in prediction.items), default=4))
    reasons = {s["item"]: s["reason"] for s in prediction.skipped}
    for item, c, conf in list(zip(prediction.items, prediction.labels, prediction.confidence))[:limit]:
        name = os.path.basename(item) or item
        shown = f"unreadable: {reasons.get(item, 'could not be decoded')}" if c < 0 else \
            f"cluster {c:<3d} confidence {conf:.2f}"
        lines.append(f"  {name[:width]:<{width}}  {shown}")
    if 0 < limit < len(prediction.items):
        lines.append(f"  … {len(prediction.items) - limit} more"
                     + (" (use --out FILE.csv to save them all)" if more_hint else ""))
    valid = prediction.labels >= 0
    counts = np.bincount(prediction.labels[valid], minlength=prediction.n_clusters)
    lines.append("per cluster: " + " ".join(f"{c}:{n}" for c, n in enumerate(counts) if n))
    if prediction.skipped:
        lines.append(f"{len(prediction.skipped)} unreadable file(s): "
                     + ", ".join(s["item"] for s in prediction.skipped[:5]))
    return "\n".join(lines)
