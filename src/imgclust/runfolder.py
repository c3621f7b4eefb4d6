"""The run folder: every file name an ``imgclust cluster`` run writes, and reading/writing them.

One place knows the layout, so the run, the report, ``export`` and ``predict`` agree on it, and a new run into a
used folder can remove exactly what an earlier run wrote (never a file this tool did not write)::

    report.html            self-contained report              plots/*.png          figures (--plots)
    assignments.csv        path, cluster, … per input         run.json             configuration, timings
    metrics.json           ACC/NMI/ARI (labels only)          k_selection.json/png choice of K (estimated K)
    model.json             settings to rebuild the model      model.safetensors    learned tensors
    duplicates.csv         duplicate groups                   outliers.csv         least typical images
    train_log.jsonl        per-epoch log (trained methods)    checkpoints/         resumable training state
    candidate-<method>/    the same, per candidate of --method auto
    .imgclust.lock         held while a command writes here
    .imgclust-output       marks the folder as imgclust's: a source folder's walk skips it

Every write is atomic (:mod:`imgclust._io`): a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._io import mark_output_folder, write_json, write_text
from .errors import ImgclustError

ASSIGNMENTS = "assignments.csv"
METRICS = "metrics.json"
RUN_INFO = "run.json"
MODEL_JSON = "model.json"
MODEL_TENSORS = "model.safetensors"
K_SELECTION_JSON = "k_selection.json"
K_SELECTION_PNG = "k_selection.png"
REPORT = "report.html"
PLOTS = "plots"
DUPLICATES = "duplicates.csv"
OUTLIERS = "outliers.csv"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
LOCK = ".imgclust.lock"

#: Files and folders a run writes, removed before a new run writes the same folder (the training state only
#: when the new run does not resume it).
RESULT_FILES = (ASSIGNMENTS, METRICS, RUN_INFO, MODEL_JSON, MODEL_TENSORS, K_SELECTION_JSON, K_SELECTION_PNG,
                REPORT, DUPLICATES, OUTLIERS)
RESULT_FOLDERS = (PLOTS,)
TRAINING_STATE = (TRAIN_LOG, CHECKPOINTS)
#: ``--method auto`` trains each candidate in its own sub-folder ``candidate-<method>/`` (training state too).
CANDIDATE_PREFIX = "candidate-"


@dataclass(frozen=True)
class Assignments:
    """The rows of ``assignments.csv``: one per input (cluster -1 and NaNs for inputs that were skipped)."""

    items: list[str]
    clusters: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray
    labels: list[str] | None = None
    cluster_names: list[str] | None = None


class RunFolder:
    """A run's output folder (it need not exist yet)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- checks and clean-up -----------------------------------------------------------------------------
    def check_writable(self, option: str = "--out") -> None:
        """Refuse, before any work, a folder that cannot be made: an existing file, a path under a file, or a
        place without write permission."""
        check_output_folder(self.path, option)

    def clear_previous(self, keep_training_state: bool = False) -> list[Path]:
        """Remove what an earlier run wrote here (only the names in :data:`RESULT_FILES`, :data:`RESULT_FOLDERS`
        and, unless ``keep_training_state``, :data:`TRAINING_STATE`); return the removed paths.

        Anything else in the folder is the user's and stays. Called with the folder's lock held.
        """
        removed = []
        names = RESULT_FILES + RESULT_FOLDERS
        if not keep_training_state:
            names += TRAINING_STATE + tuple(p.name for p in self.path.glob(f"{CANDIDATE_PREFIX}*") if p.is_dir())
        for name in names:
            path = self.path / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                continue
            removed.append(path)
        return removed

    def mark(self) -> None:
        """Mark the folder as imgclust's own (a walk of a source folder that contains it skips it)."""
        mark_output_folder(self.path, "run folder")

    def exists(self) -> bool:
        return (self.path / ASSIGNMENTS).is_file()

    def require(self) -> "RunFolder":
        """This folder, or ImgclustError when it holds no finished run."""
        if not self.path.is_dir():
            raise ImgclustError(f"run folder {self.path} does not exist", "pass the --out folder of `imgclust cluster`")
        if not self.exists():
            raise ImgclustError(f"{self.path} is not an imgclust run folder (no {ASSIGNMENTS})",
                                "point at the --out folder of a finished `imgclust cluster` run")
        return self

    # -- assignments.csv ---------------------------------------------------------------------------------
    def write_assignments(self, rows: Assignments) -> Path:
        """One row per input: path, cluster (-1 if skipped), [cluster_name,] confidence, distance[, label]."""
        return write_assignments_csv(self.path / ASSIGNMENTS, rows)

    def read_assignments(self) -> Assignments:
        path = self.require().path / ASSIGNMENTS
        items, clusters, confidence, distance, labels, names = [], [], [], [], [], {}
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            try:
                for row in reader:
                    items.append(row["path"])
                    cluster = int(row["cluster"])
                    clusters.append(cluster)
                    confidence.append(float(row["confidence"]) if row["confidence"] else np.nan)
                    distance.append(float(row["distance"]) if row["distance"] else np.nan)
                    if "label" in fields:
                        labels.append(row["label"] or "")
                    if "cluster_name" in fields and cluster >= 0:
                        names[cluster] = row["cluster_name"]
            except (KeyError, ValueError) as err:
                raise ImgclustError(f"{path} is malformed ({err})", "re-run `imgclust cluster` to rewrite it") from err
        cluster_names = None
        if names:
            cluster_names = [names.get(c, str(c)) for c in range(max(names) + 1)]
        return Assignments(items, np.asarray(clusters, dtype=np.int64), np.asarray(confidence, dtype=np.float64),
                           np.asarray(distance, dtype=np.float64), labels if "label" in fields else None,
                           cluster_names)

    # -- JSON files --------------------------------------------------------------------------------------
    def write_json(self, name: str, payload: Any) -> Path:
        path = self.path / name
        write_json(path, payload)
        return path

    def read_json(self, name: str) -> Any:
        """The JSON file ``name`` of this folder, or ``None`` when absent."""
        path = self.path / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ImgclustError(f"cannot read {path}: {err}", "re-run `imgclust cluster` to rewrite the run folder"
                                ) from err

    # -- CSV tables (duplicates, outliers) ---------------------------------------------------------------
    def write_table(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        path = self.path / name
        write_text(path, buffer.getvalue())
        return path


def write_assignments_csv(path: str | os.PathLike, rows: Assignments) -> Path:
    """``assignments.csv`` (or a prediction's CSV): path, cluster (-1 if skipped), [cluster_name,] confidence,
    distance[, label] per input."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["path", "cluster"] + (["cluster_name"] if rows.cluster_names else []) + ["confidence", "distance"]
    if rows.labels is not None:
        header.append("label")
    writer.writerow(header)
    for i, item in enumerate(rows.items):
        cluster = int(rows.clusters[i])
        row: list[Any] = [item, cluster]
        if rows.cluster_names:
            row.append(rows.cluster_names[cluster] if cluster >= 0 else "")
        row += ["" if np.isnan(rows.confidence[i]) else f"{rows.confidence[i]:.6f}",
                "" if np.isnan(rows.distance[i]) else f"{rows.distance[i]:.6f}"]
        if rows.labels is not None:
            row.append(rows.labels[i])
        writer.writerow(row)
    write_text(path, buffer.getvalue())
    return Path(path)


def check_output_folder(path: str | os.PathLike, option: str) -> None:
    """ImgclustError (naming ``option``) when ``path`` cannot be a folder this tool writes: it is a file, it
    lies under a file, or the nearest existing folder above it is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ImgclustError(f"{option} {path} is an existing file, not a folder", f"choose another {option} folder")
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ImgclustError(f"{option} {path} cannot be created: {parent} is a file", f"choose another {option} folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ImgclustError(f"{option} {path}: no permission to write in {parent}",
                            f"choose a {option} folder you can write to")


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """ImgclustError when ``path`` cannot be written as a file: it is a folder, it lies under a file, or its
    folder is not writable."""
    path = Path(path)
    if path.is_dir():
        raise ImgclustError(f"{option} {path} is a folder", f"give {option} a file name, e.g. {path / 'out.csv'}")
    check_output_folder(path.parent if str(path.parent) else Path("."), option)


def refuse_source_root(path: str | os.PathLike, source: str | os.PathLike, option: str) -> None:
    """ImgclustError when ``path`` is the source folder itself: its files would mix with the user's images.

    A folder *inside* the source is allowed: it gets :data:`~imgclust._io.OUTPUT_MARKER`, and the folder walk skips
    such sub-folders, so the next run of the source clusters the same images.
    """
    if _inside(path, source, or_below=False):
        raise ImgclustError(f"{option} {path} is the source folder itself", f"choose an {option} folder outside "
                            f"{source}, or a new sub-folder of it (imgclust skips its own output folders)")


def refuse_inside_source(path: str | os.PathLike, source: str | os.PathLike, option: str) -> None:
    """ImgclustError when ``path`` is the source folder or lies inside it (used for exports: their links or copies
    of the images would be clustered again, each image twice, by the next run of the source)."""
    if _inside(path, source, or_below=True):
        raise ImgclustError(f"{option} {path} lies inside the run's source folder {source}: the next run of that "
                            "folder would cluster every exported image a second time",
                            f"choose an {option} folder outside {source}")


def _inside(path: str | os.PathLike, folder: str | os.PathLike, or_below: bool) -> bool:
    """``path`` is ``folder`` (or, with ``or_below``, lies under it), symbolic links resolved."""
    resolved, root = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return resolved == root or (or_below and root in resolved.parents)
