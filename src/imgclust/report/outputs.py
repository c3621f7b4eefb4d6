"""assignments.csv, metrics.json and run.json of a clustering run (all written atomically)."""

from __future__ import annotations

import csv
import io
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_json, write_text


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide the numbers, for run.json."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("imgclust", "torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "faiss-cpu",
                 "pillow", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_assignments(path: Path, items: list[str], labels: np.ndarray, confidence: np.ndarray,
                      distance: np.ndarray, true_labels: np.ndarray | None = None,
                      class_names: list[str] | None = None) -> None:
    """One row per input: path, cluster (-1 if the image could not be decoded), confidence, distance, label."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["path", "cluster", "confidence", "distance"]
    if true_labels is not None:
        header.append("label")
    writer.writerow(header)
    for i, item in enumerate(items):
        row: list[Any] = [item, int(labels[i]),
                          "" if np.isnan(confidence[i]) else f"{confidence[i]:.6f}",
                          "" if np.isnan(distance[i]) else f"{distance[i]:.6f}"]
        if true_labels is not None:
            t = int(true_labels[i])
            row.append("" if t < 0 else (class_names[t] if class_names else t))
        writer.writerow(row)
    write_text(path, buffer.getvalue())


def write_run_outputs(out_dir: Path, clusterer: Any, config: dict[str, Any], timings: dict[str, float],
                      source_name: str) -> dict[str, Path]:
    """Write assignments.csv, metrics.json (when labels exist) and run.json; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"assignments": out_dir / "assignments.csv", "run": out_dir / "run.json"}
    write_assignments(paths["assignments"], clusterer.items_, clusterer.labels_, clusterer.confidence_,
                      clusterer.distance_, clusterer.true_labels_, clusterer.class_names_)
    if clusterer.metrics_ is not None:
        paths["metrics"] = out_dir / "metrics.json"
        write_json(paths["metrics"], clusterer.metrics_)
    valid = clusterer.labels_ >= 0
    sizes = np.bincount(clusterer.labels_[valid], minlength=clusterer.n_clusters).tolist()
    feature_set = getattr(clusterer, "last_feature_set_", None)
    write_json(paths["run"], {
        "source": source_name,
        "config": config,
        "versions": package_versions(),
        "device": str(clusterer.device_),
        "timings_seconds": timings,
        "n_items": len(clusterer.items_),
        "n_clustered": int(valid.sum()),
        "n_skipped": len(clusterer.skipped_),
        "skipped": clusterer.skipped_,
        "cluster_sizes": sizes,
        "feature_cache": str(feature_set.path) if feature_set is not None and feature_set.path else None,
        "fit_info": clusterer.fit_info_,
    })
    return paths
