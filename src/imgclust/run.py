"""The whole of ``imgclust cluster`` as one Python call: ``run_cluster(source, out)``.

Check every setting before any work → lock the run folder and clear what an earlier run wrote there → encode
once, estimate K (when not given), fit (:class:`~imgclust.estimator.ImageClusterer`) → write the folder
(:class:`~imgclust.runfolder.RunFolder`) and the report from what is in memory. The CLI only parses arguments
and calls :func:`run_cluster`; a Python user gets the same folder::

    from imgclust import run_cluster
    result = run_cluster("photos/", out="runs/photos")        # K estimated
    result.clusterer.labels_, result.out / "report.html"
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import distributed
from ._io import RunLock
from .data import DEFAULT_MAX_PIXELS
from .estimator import ImageClusterer
from .kselect import KSelection
from .methods import DEFAULT_METHOD, validate_options
from .report.html import RunData, write_report
from .report.plots import k_selection_figure, save_png
from .duplicates import (DuplicateReport, dataset_digests, duplicate_rows, find_duplicates_and_outliers, outlier_rows,
                         perceptual_hashes)
from .runfolder import (DUPLICATES, K_SELECTION_JSON, K_SELECTION_PNG, METRICS, OUTLIERS, RUN_INFO, Assignments,
                        RunFolder, refuse_source_root)


@dataclass
class RunResult:
    """What :func:`run_cluster` did: the fitted clusterer, the folder and the files written, the timings."""

    clusterer: ImageClusterer
    folder: RunFolder
    timings: dict[str, float]
    paths: dict[str, Path] = field(default_factory=dict)
    duplicates: DuplicateReport | None = None

    @property
    def out(self) -> Path:
        return self.folder.path


def default_out(source: str, method: str, n_clusters: int | str) -> Path:
    """``runs/<source name>-<method>-k<K|auto>`` (the source's own folder name for ``.`` and ``..``)."""
    name = Path(source.rstrip("/")).name if not source.startswith("builtin:") else source
    if name in ("", ".", ".."):
        name = Path(os.path.abspath(os.path.expanduser(source))).name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return Path("runs") / f"{slug}-{method}-k{n_clusters}"


def run_cluster(source: Any, out: str | os.PathLike | None = None, *, n_clusters: int | str = "auto",
                method: str = DEFAULT_METHOD, method_options: dict[str, Any] | None = None,
                backbone: str = "efficientnet_lite0", weights: str | None = None, device: str = "auto",
                precision: str = "auto", batch_size: int = 64, num_workers: int | None = None,
                cache_dir: str | os.PathLike | None = None, shard_size: int = 2048, seed: int = 0,
                k_range: Any = None, k_criterion: str | None = None, data_root: str | os.PathLike | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, engine: str = "auto", pooling: str = "auto",
                whitening: str = "auto", resume: bool = False, report: bool = True, plots: bool = False,
                progress: bool = True,
                command: dict[str, Any] | None = None) -> RunResult:
    """Cluster ``source`` and write the run folder ``out`` (what ``imgclust cluster`` does).

    Args:
        source: a folder, a ``.npy``/``.npz`` file, ``builtin:NAME[:SPLIT]``, a list of image paths, or an array.
        out: the run folder (default :func:`default_out`). Files an earlier run wrote there are replaced; any
            other file in it is left alone.
        n_clusters: K, or ``"auto"`` to estimate it (``k_range``, ``k_criterion``).
        resume: continue a killed training run in ``out`` (its checkpoints are kept).
        report: write ``report.html``; ``plots``: also its figures as PNG files.
        command: the command line's own settings, recorded in run.json (the CLI passes them).
        The other arguments are :class:`~imgclust.estimator.ImageClusterer`'s.

    Raises:
        ImgclustError: any bad setting, checked before any work; bad data found while working.
    """
    if data_root is not None:
        os.environ["IMGCLUST_DATA"] = str(data_root)
    source = os.path.expanduser(source) if isinstance(source, str) else source
    folder = RunFolder(out if out is not None else default_out(str(source), method, n_clusters))
    clusterer = ImageClusterer(
        n_clusters=n_clusters, method=method, backbone=backbone, weights=weights, device=device,
        batch_size=batch_size, num_workers=num_workers, cache_dir=None if cache_dir is None else str(cache_dir),
        shard_size=shard_size, random_state=seed, precision=precision, method_options=dict(method_options or {}),
        run_dir=str(folder.path), resume=resume, progress=progress and distributed.is_main_process(),
        k_range=k_range, k_criterion=k_criterion, max_pixels=max_pixels, engine=engine, pooling=pooling,
        whitening=whitening)
    check_settings(clusterer, source, folder)
    if not distributed.is_main_process():
        # Another torchrun process: the same fit on its share of every batch; rank 0 writes every file.
        clusterer.fit(source)
        return RunResult(clusterer, folder, dict(clusterer.timings_))

    started = time.perf_counter()
    with RunLock(folder.path, remove_when_done=True):
        folder.clear_previous(keep_training_state=resume)
        folder.mark()
        clusterer.fit(source)
        timings = dict(clusterer.timings_)
        settings = {**(command or {}), "source": _absolute_source(source), "out": str(folder.path.resolve()),
                    "n_clusters": clusterer.n_clusters_, "k_estimated": clusterer.k_selection_ is not None}
        found = duplicates_and_outliers(clusterer, timings)
        info = run_info(clusterer, settings, timings, found)
        paths = write_results(folder, clusterer, info, found)
        clusterer.save(folder.path)
        if report:
            report_started = time.perf_counter()
            paths.update(write_report(folder.path, data=run_data(folder, clusterer, info, found),
                                      features=clusterer.last_features_, dataset=clusterer.dataset_, plots=plots,
                                      progress=progress, seed=seed))
            timings["report"] = time.perf_counter() - report_started
        timings["total"] = time.perf_counter() - started
    return RunResult(clusterer, folder, timings, paths, found)


def check_settings(clusterer: ImageClusterer, source: Any, folder: RunFolder) -> None:
    """Every setting that can be checked without reading the data, before any work (or ImgclustError)."""
    validate_options(clusterer.method, clusterer.method_options or {})
    clusterer.check_params()
    folder.check_writable("--out")  # the cache folder is checked with the other extraction settings (check_params)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        refuse_source_root(folder.path, source, "--out")


def _absolute_source(source: Any) -> str:
    """run.json's record of the source: an absolute path for a path (so `imgclust report` works from anywhere)."""
    if isinstance(source, (str, os.PathLike)) and not str(source).startswith("builtin:"):
        return os.path.abspath(source)
    if isinstance(source, str):
        return source
    return f"<{type(source).__name__}>"


# -- the folder ---------------------------------------------------------------------------------------------

def write_results(folder: RunFolder, clusterer: ImageClusterer, info: dict[str, Any],
                  found: DuplicateReport | None) -> dict[str, Path]:
    """assignments.csv, metrics.json (labels only), k_selection.json/.png (estimated K), duplicates.csv and
    outliers.csv (images), run.json (``info``)."""
    paths = {"assignments": folder.write_assignments(assignments_of(clusterer))}
    if found is not None:
        items = [clusterer.items_[row] for row in clusterer.valid_indices_]
        for key, name, rows in (("duplicates", DUPLICATES, duplicate_rows(found.exact + found.near, items)),
                                ("outliers", OUTLIERS, outlier_rows(found.outliers, items))):
            header = list(rows[0]) if rows else (["group", "kind", "similarity", "item"] if key == "duplicates"
                                                 else ["rank", "item", "density", "z"])
            paths[key] = folder.write_table(name, header, [[row[column] for column in header] for row in rows])
    if clusterer.metrics_ is not None:
        paths["metrics"] = folder.write_json(METRICS, clusterer.metrics_)
    if clusterer.k_selection_ is not None:
        written = write_k_selection(folder, clusterer.k_selection_)
        paths["k_selection"], paths["k_selection_plot"] = written["json"], written["png"]
    paths["run"] = folder.write_json(RUN_INFO, info)
    return paths


def write_k_selection(folder: RunFolder, selection: KSelection) -> dict[str, Path]:
    """``k_selection.json`` (the curves and the resolution profile) and ``k_selection.png`` (their plot)."""
    as_dict = selection.to_dict()
    return {"json": folder.write_json(K_SELECTION_JSON, as_dict),
            "png": save_png(k_selection_figure(as_dict), folder / K_SELECTION_PNG)}


def assignments_of(clusterer: ImageClusterer) -> Assignments:
    labels = None
    if clusterer.true_labels_ is not None:
        names = clusterer.class_names_
        labels = ["" if t < 0 else (names[t] if names else str(t)) for t in clusterer.true_labels_.tolist()]
    return Assignments(list(clusterer.items_), clusterer.labels_, clusterer.confidence_, clusterer.distance_,
                       labels, clusterer.cluster_names_)


def duplicates_and_outliers(clusterer: ImageClusterer, timings: dict[str, float]) -> DuplicateReport | None:
    """Exact duplicates (same bytes), near-duplicates and outliers among the clustered images (rows index the
    clustered rows); ``None`` for bring-your-own embeddings, where there are no images to compare."""
    encoded = clusterer.encoded_
    if not encoded.feature_sets:
        return None
    started = time.perf_counter()
    dataset = clusterer.dataset_
    digests = dataset_digests(dataset)
    valid = clusterer.valid_indices_
    found = find_duplicates_and_outliers(encoded.feature_sets[0].features, digests=[digests[row] for row in valid],
                                         hashes=lambda rows: perceptual_hashes(dataset, valid[rows]))
    timings["duplicates"] = time.perf_counter() - started
    return found


def run_info(clusterer: ImageClusterer, settings: dict[str, Any], timings: dict[str, float],
             found: DuplicateReport | None) -> dict[str, Any]:
    valid = clusterer.labels_ >= 0
    encoded = clusterer.encoded_
    caches = [str(entry.path) for entry in getattr(encoded, "feature_sets", []) if entry.path]
    return {
        "source": settings["source"],
        "config": settings,
        "versions": package_versions(),
        "device": str(clusterer.device_),
        "timings_seconds": timings,
        "n_items": len(clusterer.items_),
        "n_clustered": int(valid.sum()),
        "n_skipped": len(clusterer.skipped_),
        "skipped": clusterer.skipped_,
        "cluster_sizes": np.bincount(clusterer.labels_[valid], minlength=clusterer.n_clusters_).tolist(),
        # the first backbone's cache entry (the report's 2-D map), and every space's
        "feature_cache": caches[0] if caches else None,
        "feature_caches": caches,
        "spaces": list(getattr(encoded, "space_names", [])),
        "whitened": clusterer.whitening_ is not None,
        "fit_info": clusterer.fit_info_,
        "quality": clusterer.quality_,
        "candidates": candidates_of(clusterer),
        "cluster_names": clusterer.cluster_names_,
        "duplicates": None if found is None else {
            "exact_groups": len(found.exact), "near_groups": len(found.near), "outliers": len(found.outliers),
            "near_duplicate_threshold": found.near_duplicate_threshold, "outlier_rule": found.outlier_rule},
    }


def candidates_of(clusterer: ImageClusterer) -> list[dict[str, Any]] | None:
    """The candidates ``--method auto`` compared (each with its score; ``chosen`` on the one kept), else None."""
    info = clusterer.fit_info_ or {}
    if not info.get("candidates"):
        return None
    return [{"name": c["method"], "kappa": c["score"], "chosen": c["method"] == info.get("winner"),
             "fit_seconds": round(c["fit_seconds"], 1), "cluster_sizes": c["cluster_sizes"]}
            for c in info["candidates"]]


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide the numbers, for run.json."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("imgclust", "torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "faiss-cpu",
                 "pillow", "safetensors", "onnxruntime"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_data(folder: RunFolder, clusterer: ImageClusterer, info: dict[str, Any],
             found: DuplicateReport | None) -> RunData:
    """The report's view of the run, from memory (nothing is read back from the files just written)."""
    rows = assignments_of(clusterer)
    row_of = clusterer.valid_indices_  # duplicates and outliers index the clustered rows; the report, every row
    return RunData(run_dir=folder.path, items=rows.items, clusters=rows.clusters,
                   confidence=rows.confidence.astype(np.float64), distance=rows.distance.astype(np.float64),
                   labels=rows.labels, n_clusters=clusterer.n_clusters_,
                   run=info, metrics=clusterer.metrics_,
                   k_selection=None if clusterer.k_selection_ is None else clusterer.k_selection_.to_dict(),
                   model={"method": clusterer.method, "backbone": {"name": clusterer.backbone}},
                   cluster_names=clusterer.cluster_names_, quality=clusterer.quality_,
                   candidates=candidates_of(clusterer),
                   duplicates=None if found is None else [
                       {"kind": group.kind, "items": [int(row_of[i]) for i in group.items],
                        "similarity": group.similarity} for group in found.exact + found.near],
                   outliers=None if found is None else [
                       {"row": int(row_of[o.item]), "score": -o.z} for o in found.outliers])


__all__ = ["RunResult", "default_out", "run_cluster", "check_settings"]
