"""``report.html``: a self-contained visual report of a run.

It opens from disk with no network (a Content-Security-Policy forbids any fetch): thumbnails and figures are
embedded as base64 data URIs, each thumbnail once. The page is rendered from Jinja2 templates
(``report/templates/``, one per section, autoescaping on): a summary (with the label-free quality and the
candidates compared, when the run has them), a 2-D map of the embeddings coloured by cluster, the cluster sizes,
the choice of K (when K was estimated), metrics and a confusion matrix (when the data had labels), one section
per cluster with its name, its most central and its least confident images, the duplicate groups and the
outliers (when found), the skipped files, and the run's configuration. Every file name, label and setting is
HTML-escaped.

Two ways in: ``imgclust cluster`` passes what it holds in memory (``write_report(out, data=RunData(...),
features=..., dataset=...)``); ``imgclust report RUN_DIR`` reads the folder back (:func:`load_run`) and takes the
features for the map from the feature cache recorded in run.json.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup
from PIL import Image
from tqdm.auto import tqdm

from .._io import atomic_path, write_text
from ..data import load_source, open_image
from ..data.base import EmbeddingDataset
from ..errors import ImgclustError
from ..features import FeatureCache
from ..kselect import resolution_range_text, steps_in_view
from ..methods.umap_pacmap_kmeans import KMEANS_KEPT, agreement_reading
from ..runfolder import DUPLICATES, K_SELECTION_JSON, METRICS, MODEL_JSON, OUTLIERS, PLOTS, REPORT, RUN_INFO, RunFolder
from . import plots as P

_logger = logging.getLogger(__name__)

REPORT_NAME = REPORT
PLOTS_DIR = PLOTS
THUMB_SIZE = 96
#: At most this many thumbnails in the cluster galleries (per-cluster counts shrink for large K to keep the file
#: small); the duplicates and outliers sections add at most their own caps below.
MAX_THUMBNAILS = 1600
MAX_DUPLICATE_GROUPS = 60
MAX_GROUP_THUMBNAILS = 8
MAX_OUTLIERS = 40
MAX_SKIPPED_ROWS = 500

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")
#: The source of a repeated thumbnail until the page's script copies the first one's (a 1×1 transparent GIF).
_PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


@dataclass
class RunData:
    """What the report shows of a run: from memory (``imgclust cluster``) or read back by :func:`load_run`.

    Row-wise arrays have one entry per input row of ``assignments.csv`` (``clusters`` is -1 for skipped rows).
    ``labels``: the label name of each row (``""`` when unlabelled), or ``None`` without labels.
    ``run``: run.json's content (``source``, ``config``, ``timings_seconds``, ``skipped``, ``cwd``…).
    Optional parts, each shown when present:
    ``cluster_names``: one short name per cluster; ``duplicates``: groups ``{"kind": "exact"|"near",
    "items": [row indices], "similarity": float}``; ``outliers``: ``{"row": int, "score": float}``, most unusual
    first (higher score = more unusual); ``quality``: the label-free score (``{"kappa": float, "per_space":
    ...}``); ``candidates``: one dict per candidate a method ``auto`` compared (its settings and ``kappa``;
    ``"chosen": True`` on the one kept). Row indices index ``items`` (every row, skipped ones included).
    """

    run_dir: Path
    items: list[str]
    clusters: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray
    labels: list[str] | None
    n_clusters: int
    run: dict[str, Any]
    metrics: dict[str, Any] | None
    k_selection: dict[str, Any] | None
    model: dict[str, Any] | None
    cluster_names: list[str] | None = None
    duplicates: list[dict[str, Any]] | None = None
    outliers: list[dict[str, Any]] | None = None
    quality: dict[str, Any] | None = None
    candidates: list[dict[str, Any]] | None = None


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read a run folder written by ``imgclust cluster``."""
    folder = RunFolder(run_dir).require()
    rows = folder.read_assignments()
    run = folder.read_json(RUN_INFO) or {}
    model = folder.read_json(MODEL_JSON)
    k = len(run.get("cluster_sizes") or [])
    if not k and model:
        k = int(model.get("model_config", {}).get("n_clusters", 0))
    k = max(k, int(rows.clusters.max()) + 1 if rows.clusters.size else 0)
    return RunData(run_dir=folder.path, items=rows.items, clusters=rows.clusters, confidence=rows.confidence,
                   distance=rows.distance, labels=rows.labels, n_clusters=k, run=run,
                   metrics=folder.read_json(METRICS), k_selection=folder.read_json(K_SELECTION_JSON), model=model,
                   cluster_names=rows.cluster_names, duplicates=_read_duplicates(folder / DUPLICATES, rows.items),
                   outliers=_read_outliers(folder / OUTLIERS, rows.items), quality=run.get("quality"),
                   candidates=run.get("candidates"))


def _read_table(path: Path) -> list[dict[str, str]] | None:
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ImgclustError(f"cannot read {path}: {err}", "re-run `imgclust cluster` to rewrite the run folder"
                            ) from err


def _read_duplicates(path: Path, items: list[str]) -> list[dict[str, Any]] | None:
    """duplicates.csv (one line per image: ``group``, ``kind``, ``similarity``, ``item``) as RunData groups."""
    table = _read_table(path)
    if table is None:
        return None
    row_of = {item: i for i, item in enumerate(items)}
    groups: dict[str, dict[str, Any]] = {}
    try:
        for line in table:
            group = groups.setdefault(line["group"], {"kind": line["kind"], "items": [],
                                                      "similarity": float(line["similarity"])})
            if line["item"] in row_of:
                group["items"].append(row_of[line["item"]])
    except (KeyError, ValueError) as err:
        raise ImgclustError(f"{path} is malformed ({err})", "re-run `imgclust cluster` to rewrite it") from err
    return list(groups.values())


def _read_outliers(path: Path, items: list[str]) -> list[dict[str, Any]] | None:
    """outliers.csv (``rank``, ``item``, ``density``, ``z``; most unusual first) as RunData outliers; the score
    is minus the robust z-score of the neighbour density (higher = more unusual)."""
    table = _read_table(path)
    if table is None:
        return None
    row_of = {item: i for i, item in enumerate(items)}
    try:
        return [{"row": row_of[line["item"]], "score": -float(line["z"])} for line in table if line["item"] in row_of]
    except (KeyError, ValueError) as err:
        raise ImgclustError(f"{path} is malformed ({err})", "re-run `imgclust cluster` to rewrite it") from err


# -- the source and its images --------------------------------------------------------------------------------

def resolve_source(run: dict[str, Any]) -> tuple[Any, str]:
    """The run's source as it can be opened from here, and ``""``; or ``None`` and why not.

    A relative path is taken against the folder the run was started from (run.json's ``cwd``), so
    ``imgclust report`` works from any directory; without a recorded ``cwd`` it is tried from here."""
    source = run.get("source")
    if not isinstance(source, str) or not source or source.startswith(("builtin:", "<")):
        return (source or None), ("" if source else "run.json records no source")
    path = os.path.expanduser(source)
    if os.path.isabs(path):
        return path, ""
    cwd = run.get("cwd")
    if cwd:
        return os.path.join(cwd, path), ""
    if os.path.exists(path):
        return path, ""
    return None, (f"the run's source {source!r} is a relative path and run.json does not record the folder it "
                  "was run from; run `imgclust report` from that folder")


def _open_source(data: RunData) -> Any:
    """The run's dataset, reopened from its source (ImgclustError when it cannot be)."""
    spec, why_not = resolve_source(data.run)
    if spec is None:
        raise ImgclustError(f"cannot reopen the source: {why_not}", "run `imgclust report` where the run was made")
    return load_source(spec, data_root=(data.run.get("config") or {}).get("data_root"))


class _ImageOpener:
    """Opens the image of a row: the file itself when the item is a path, else through the run's dataset
    (reopened from the source when the caller did not pass it)."""

    def __init__(self, data: RunData, dataset: Any = None):
        self.data = data
        self.dataset = dataset
        self.note = ""
        self._index: dict[str, int] | None = None

    def _from_dataset(self, item: str) -> Any:
        if self.dataset is None and not self.note:
            try:
                self.dataset = _open_source(self.data)
            except ImgclustError as err:
                self.note = f"Some thumbnails are missing: {err.message}."
                _logger.info("report: %s", self.note)
        if self.dataset is None or not hasattr(self.dataset, "load"):
            return None
        if self._index is None:
            self._index = {str(it): i for i, it in enumerate(self.dataset.items)}
        i = self._index.get(item)
        return None if i is None else self.dataset.load(i)

    def __call__(self, item: str) -> Any:
        try:
            if os.path.isfile(item):
                return open_image(item)
            return self._from_dataset(item)
        except Exception as err:  # a thumbnail that can't be made is left out, never fatal
            _logger.debug("report: no thumbnail for %s: %s", item, err)
            return None


def thumbnail_data_uri(image: Any, size: int = THUMB_SIZE) -> str:
    """A JPEG data URI of ``image`` fitted into ``size``×``size`` (small images are enlarged)."""
    im = image.convert("RGB")
    w, h = im.size
    scale = size / max(w, h)
    if scale < 1:
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
    elif scale > 1:
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                       Image.Resampling.NEAREST if max(w, h) <= 16 else Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _make_thumbnails(data: RunData, rows: Iterable[int], dataset: Any, progress: bool) -> tuple[dict[int, str], str]:
    """``{row: data URI}`` of the rows whose image could be opened, and a note when some could not."""
    opener = _ImageOpener(data, dataset)
    wanted = sorted(set(rows))
    thumbs: dict[int, str] = {}
    for i in tqdm(wanted, desc="report thumbnails", unit="img", leave=False, disable=not progress):
        image = opener(data.items[i])
        if image is not None:
            try:
                thumbs[i] = thumbnail_data_uri(image)
            except Exception as err:  # never let one odd image stop the report
                _logger.debug("report: thumbnail of %s failed: %s", data.items[i], err)
    return thumbs, opener.note


# -- features for the map -------------------------------------------------------------------------------------

#: Gets the map's features of a run when the caller has none: (N_clustered, D) array, or ``None``, or
#: ImgclustError saying why not.
FeatureLoader = Callable[[RunData], "np.ndarray | None"]


def cached_features(data: RunData) -> np.ndarray:
    """Features of the clustered rows (cluster ≥ 0, in order) without running a backbone: the feature-cache
    entry recorded in run.json, or the embeddings of an embedding source.

    Raises:
        ImgclustError: saying why they cannot be had (the report shows it in place of the map)."""
    clustered = np.flatnonzero(data.clusters >= 0)
    features = _feature_cache_entry(data, clustered) if data.run.get("feature_cache") else _embeddings(data)
    if len(features) != len(clustered):
        raise ImgclustError(f"the features hold {len(features)} rows for the run's {len(clustered)} clustered "
                            "images", _RERUN)
    return features


_RERUN = "re-run `imgclust cluster` to rebuild the run folder"


def _feature_cache_entry(data: RunData, clustered: np.ndarray) -> np.ndarray:
    entry = Path(data.run["feature_cache"])
    try:
        manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
        feature_set = FeatureCache(entry.parent, manifest["identity"], manifest["items"]).load_complete()
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ImgclustError(f"the feature cache {entry} cannot be read ({err})", _RERUN) from err
    if feature_set is None or feature_set.path != entry or not np.array_equal(feature_set.valid_indices, clustered):
        raise ImgclustError(f"the feature cache {entry} no longer holds this run's features", _RERUN)
    return np.asarray(feature_set.features)


def _embeddings(data: RunData) -> np.ndarray:
    dataset = _open_source(data)
    if not isinstance(dataset, EmbeddingDataset):
        raise ImgclustError("run.json records no feature cache for this run", _RERUN)
    features = np.asarray(dataset.features, dtype=np.float32)
    if len(features) != len(data.clusters):
        raise ImgclustError(f"the source {data.run.get('source')} changed since the run", _RERUN)
    return features[data.clusters >= 0]


def _map_features(data: RunData, features: Any, load_features: FeatureLoader | None) -> tuple[np.ndarray | None, str]:
    """The features for the map (``features`` when usable, else ``load_features(data)``), or ``None`` and a note
    saying why there is no map."""
    usable = _usable_features(data, features)
    if usable is not None or not (data.clusters >= 0).any():
        return usable, ""
    try:
        usable = _usable_features(data, (load_features or cached_features)(data))
    except ImgclustError as err:
        _logger.warning("report: no 2-D map (%s)", err.message)
        return None, f"No 2-D map: {err.message}."
    return usable, "" if usable is not None else "No 2-D map: the features of this run could not be read."


# -- figures ----------------------------------------------------------------------------------------------------

def _make_figures(data: RunData, features: np.ndarray | None, map_method: str, seed: int, progress: bool
                  ) -> dict[str, bytes]:
    """PNG bytes of every figure the run has data for (``embedding_map`` only with ``features``)."""
    k = data.n_clusters
    valid = data.clusters >= 0
    figures: dict[str, bytes] = {}
    if k:
        sizes, confidence = _cluster_sizes(data)
        figures["cluster_sizes"] = P.png_bytes(P.cluster_sizes_figure(sizes.tolist(), confidence,
                                                                      data.cluster_names))
    if features is not None:
        if progress:
            _logger.info("report: laying out the 2-D map of %d images", min(len(features), P.MAX_MAP_POINTS))
        rows, xy, used = P.embedding_2d(np.asarray(features), method=map_method, seed=seed)
        figures["embedding_map"] = P.png_bytes(P.embedding_map_figure(xy, data.clusters[valid][rows], k, used,
                                                                      data.cluster_names))
    if data.k_selection:
        figures["k_selection"] = P.png_bytes(P.k_selection_figure(data.k_selection))
    if data.metrics and data.metrics.get("confusion"):
        figures["confusion"] = P.png_bytes(P.confusion_figure(
            data.metrics["confusion"], data.metrics.get("class_names"),
            data.metrics.get("confusion_clusters") or list(range(k))))
    return figures


def _cluster_sizes(data: RunData) -> tuple[np.ndarray, list[float]]:
    """Images per cluster and each cluster's mean confidence (NaN when empty)."""
    valid = data.clusters >= 0
    sizes = np.bincount(data.clusters[valid], minlength=data.n_clusters)
    confidence = [float(np.nanmean(data.confidence[data.clusters == c])) if sizes[c] else float("nan")
                  for c in range(data.n_clusters)]
    return sizes, confidence


def _usable_features(data: RunData, features: Any) -> np.ndarray | None:
    """``features`` when they are the (N_clustered, D) rows the map needs, else ``None``."""
    if features is None or np.ndim(features) != 2 or np.shape(features)[1] == 0:
        return None  # e.g. a method trained on pixels: the map uses the backbone's features instead
    return features if len(features) == int((data.clusters >= 0).sum()) else None


# -- which images are shown -------------------------------------------------------------------------------------

def _pick_rows(data: RunData, n_central: int, n_uncertain: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per cluster: the ``n_central`` rows nearest its centre and the ``n_uncertain`` least confident others."""
    picked = {}
    for c in range(data.n_clusters):
        members = np.flatnonzero(data.clusters == c)
        if not members.size:
            picked[c] = (members, members)
            continue
        dist = np.nan_to_num(data.distance[members], nan=np.inf)
        central = members[np.argsort(dist, kind="stable")[:n_central]]
        rest = np.setdiff1d(members, central)  # an image is shown once per cluster
        order = np.argsort(np.nan_to_num(data.confidence[rest], nan=np.inf), kind="stable")
        picked[c] = (central, rest[order[:n_uncertain]])
    return picked


def _gallery_sizes(k: int, n_central: int, n_uncertain: int) -> tuple[int, int]:
    """Thumbnails per cluster, reduced for large K so that all galleries hold at most :data:`MAX_THUMBNAILS`."""
    per = max(2, MAX_THUMBNAILS // max(k, 1))
    if n_central + n_uncertain > per:
        return max(1, per * 3 // 5), max(1, per * 2 // 5)
    return n_central, n_uncertain


def _shown_duplicates(data: RunData) -> list[dict[str, Any]]:
    return list(data.duplicates or [])[:MAX_DUPLICATE_GROUPS]


def _shown_outliers(data: RunData) -> list[dict[str, Any]]:
    return list(data.outliers or [])[:MAX_OUTLIERS]


def _rows_shown(data: RunData, picked: dict[int, tuple[np.ndarray, np.ndarray]]) -> set[int]:
    rows = {int(i) for central, uncertain in picked.values() for i in (*central, *uncertain)}
    rows |= {int(i) for group in _shown_duplicates(data) for i in group["items"][:MAX_GROUP_THUMBNAILS]}
    rows |= {int(entry["row"]) for entry in _shown_outliers(data)}
    return {i for i in rows if 0 <= i < len(data.items)}


# -- the page ---------------------------------------------------------------------------------------------------

def _html_value(value: Any) -> Markup:
    """How templates print every value: escaped by the standard library's ``html.escape`` (quotes too), which
    spells ``"`` and ``'`` as ``&quot;`` and ``&#x27;``; markup built by the templates passes through; ``None``
    prints nothing."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def _fmt(value: Any, decimals: int | None = None) -> str:
    """A value as table text: floats to 4 significant digits (or ``decimals`` places), lists and dicts as JSON."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}" if decimals is None else f"{value:.{decimals}f}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def _basename(item: str) -> str:
    return os.path.basename(item) or item


def _path_breaks(path: str) -> Markup:
    """The escaped path with a line-break opportunity after every separator, so a long path wraps between its
    folders instead of inside a name."""
    escaped = html.escape(str(path), quote=True)
    return Markup(escaped.replace("/", "/<wbr>").replace("\\", "\\<wbr>"))


_ENV = jinja2.Environment(loader=jinja2.PackageLoader("imgclust.report", "templates"), autoescape=True,
                          finalize=_html_value, undefined=jinja2.StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True)
_ENV.filters.update(fmt=_fmt, basename=_basename, path_breaks=_path_breaks)


@dataclass
class _Section:
    anchor: str
    title: str
    template: str
    data: dict[str, Any]


class _Pictures:
    """The page's thumbnails, each embedded once: the first ``<img>`` of a row carries its data URI and an id,
    later ones name that id and the page's script copies the source (a row may be in a gallery and among the
    outliers)."""

    def __init__(self, thumbs: dict[int, str]):
        self.thumbs = thumbs
        self.placed: set[int] = set()

    def __call__(self, row: int) -> dict[str, str | None] | None:
        row = int(row)
        uri = self.thumbs.get(row)
        if uri is None:
            return None
        anchor = f"thumb-{row}"
        if row in self.placed:
            return {"src": _PLACEHOLDER, "id": None, "copy_of": anchor}
        self.placed.add(row)
        return {"src": uri, "id": anchor, "copy_of": None}


def _names(data: RunData) -> list[str]:
    names = list(data.cluster_names or [])
    return [names[c] if c < len(names) and names[c] else "" for c in range(data.n_clusters)]


def _header(data: RunData) -> dict[str, Any]:
    config = data.run.get("config") or {}
    method = config.get("method") or (data.model or {}).get("method", "")
    backbone = config.get("backbone") or ((data.model or {}).get("backbone") or {}).get("name", "")
    total = (data.run.get("timings_seconds") or {}).get("total")
    subtitle = (f"{int((data.clusters >= 0).sum())} images → {data.n_clusters} clusters · method {method} · "
                f"backbone {backbone}" + (f" · {total:.1f} s" if isinstance(total, (int, float)) else ""))
    return {"source": data.run.get("source", ""), "subtitle": subtitle, "run_dir": data.run_dir.resolve()}


def _summary(data: RunData) -> dict[str, Any]:
    valid = data.clusters >= 0
    sizes, _ = _cluster_sizes(data)
    k = data.n_clusters
    rows = [("images clustered", int(valid.sum())), ("clusters", k), ("skipped (unreadable)", int((~valid).sum())),
            ("smallest / largest cluster", f"{sizes.min() if k else 0} / {sizes.max() if k else 0}"),
            ("mean confidence", float(np.nanmean(data.confidence[valid])) if valid.any() else None)]
    if data.k_selection:
        rows.append(("K", f"estimated: {data.k_selection['k']} ({data.k_selection['criterion']})"))
    if data.quality:
        rows.append(("label-free quality (κ)", data.quality.get("kappa")))
    fit_info = data.run.get("fit_info") or {}
    agreement = fit_info.get("layout_agreement")  # umap-pacmap-kmeans
    if agreement is not None:
        rows.append(("the two layouts agree (adjusted Rand index, 1 = the same clusters)", agreement))
        rows.append(("what such agreement meant on the development sets", agreement_reading(agreement)))
        if fit_info.get("partition_from") == "k-means":
            rows.append(("clusters taken from", KMEANS_KEPT))
    if data.duplicates:
        rows.append(("duplicate groups", len(data.duplicates)))
    if data.outliers is not None:
        rows.append(("outliers", len(data.outliers)))
    return {"rows": rows, "quality": _quality_rows(data.quality), "candidates": _candidates_table(data.candidates)}


def _quality_rows(quality: dict[str, Any] | None) -> list[tuple[str, Any]] | None:
    """The details of the label-free score beside the summary (its κ is in the summary's table)."""
    if not quality:
        return None
    rows: list[tuple[str, Any]] = []
    per_space = quality.get("per_space")
    spaces = per_space.items() if isinstance(per_space, dict) else enumerate(per_space or [])
    if per_space is not None and len(per_space) > 1:
        rows += [(f"κ in space {name}", value) for name, value in spaces]
    rows += [(key, value) for key, value in quality.items() if key not in ("kappa", "per_space") and value is not None]
    return rows


def _candidates_table(candidates: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The candidates as a table: the union of their keys (in order of appearance) as columns."""
    if not candidates:
        return None
    columns = list(dict.fromkeys(key for candidate in candidates for key in candidate if key != "chosen"))
    rows = [{"chosen": bool(candidate.get("chosen")), "cells": [candidate.get(column) for column in columns]}
            for candidate in candidates]
    return {"columns": columns, "rows": rows}


def _map_section(figures: dict[str, bytes], map_note: str) -> dict[str, Any]:
    if "embedding_map" in figures:
        return {"uri": _png_uri(figures["embedding_map"]), "note": ""}
    return {"uri": None, "note": map_note or "No 2-D map for this run."}


def _sizes_section(data: RunData, figures: dict[str, bytes]) -> dict[str, Any]:
    sizes, confidence = _cluster_sizes(data)
    names = _names(data)
    clusters = [{"index": c, "name": names[c], "size": int(sizes[c]), "confidence": confidence[c]}
                for c in range(data.n_clusters)]
    uri = _png_uri(figures["cluster_sizes"]) if "cluster_sizes" in figures else None
    return {"uri": uri, "named": any(names), "clusters": clusters}


def _k_selection_section(data: RunData, figures: dict[str, bytes]) -> dict[str, Any]:
    selection = data.k_selection or {}
    chosen = selection["k"]
    profile = [(f"K = {step['k']}" + (" (chosen)" if step["k"] == chosen else ""), f"γ {resolution_range_text(step)}")
               for step in steps_in_view(selection.get("resolution_profile") or [])]
    return {"k": chosen, "description": selection.get("description", selection["criterion"]),
            "k_first": selection["k_values"][0], "k_last": selection["k_values"][-1],
            "n_samples": selection.get("n_samples"), "resolution": (selection.get("settings") or {}).get("resolution"),
            "profile": profile, "uri": _png_uri(figures["k_selection"]) if "k_selection" in figures else None}


def _metrics_section(data: RunData, figures: dict[str, bytes]) -> dict[str, Any]:
    m = data.metrics or {}
    rows = [("ACC (Hungarian)", m.get("acc")), ("NMI", m.get("nmi")), ("ARI", m.get("ari")), ("AMI", m.get("ami")),
            ("ACC (majority per cluster)", m.get("acc_majority")), ("classes", m.get("n_classes")),
            ("labelled images", m.get("n_samples"))]
    return {"rows": rows, "uri": _png_uri(figures["confusion"]) if "confusion" in figures else None}


def _cluster_badges(data: RunData, members: np.ndarray) -> list[str]:
    if not members.size:
        return ["0 images", "empty"]
    badges = [f"{len(members)} images", f"mean confidence {float(np.nanmean(data.confidence[members])):.2f}"]
    if data.labels is not None:
        names, counts = np.unique([data.labels[i] for i in members], return_counts=True)
        top = int(counts.argmax())
        badges.append(f"most common label: {names[top] or '?'} ({counts[top] / members.size:.0%})")
    return badges


def _clusters_section(data: RunData, per_cluster: dict[int, tuple[np.ndarray, np.ndarray]], note: str
                      ) -> dict[str, Any]:
    colors = P.cluster_color_hex(max(data.n_clusters, 1))
    names = _names(data)
    clusters = []
    for c in range(data.n_clusters):
        central, uncertain = per_cluster.get(c, (np.array([], int), np.array([], int)))
        clusters.append({"index": c, "name": names[c], "color": colors[c],
                         "badges": _cluster_badges(data, np.flatnonzero(data.clusters == c)),
                         "central": [(int(i), f"dist {data.distance[i]:.3f}") for i in central],
                         "uncertain": [(int(i), f"conf {data.confidence[i]:.2f}") for i in uncertain]})
    return {"clusters": clusters, "note": note}


def _cluster_caption(data: RunData, row: int) -> str:
    c = int(data.clusters[row])
    if c < 0:
        return "skipped"
    names = _names(data)
    return f"cluster {c}" + (f" · {names[c]}" if names[c] else "")


def _duplicates_section(data: RunData) -> dict[str, Any]:
    groups = []
    for group in _shown_duplicates(data):
        rows = [int(i) for i in group["items"] if 0 <= int(i) < len(data.items)]
        kind = "exact" if group.get("kind") == "exact" else "near"
        groups.append({"kind": kind, "size": len(rows), "similarity": group.get("similarity"),
                       "shown": [(i, _cluster_caption(data, i)) for i in rows[:MAX_GROUP_THUMBNAILS]],
                       "more": max(0, len(rows) - MAX_GROUP_THUMBNAILS)})
    kinds = [group.get("kind") for group in data.duplicates or []]
    return {"groups": groups, "exact": kinds.count("exact"), "near": len(kinds) - kinds.count("exact"),
            "more": len(kinds) - len(groups)}


def _outliers_section(data: RunData) -> dict[str, Any]:
    shown = [(int(entry["row"]), f"score {float(entry['score']):.3g} · {_cluster_caption(data, int(entry['row']))}")
             for entry in _shown_outliers(data) if 0 <= int(entry["row"]) < len(data.items)]
    return {"shown": shown, "more": max(0, len(data.outliers or []) - len(_shown_outliers(data)))}


def _skipped_section(skipped: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [{"item": entry.get("item", ""), "reason": entry.get("reason", "")} for entry in skipped[:MAX_SKIPPED_ROWS]]
    return {"rows": rows, "more": max(0, len(skipped) - MAX_SKIPPED_ROWS)}


def _config_section(run: dict[str, Any]) -> dict[str, Any]:
    environment = [("device", run.get("device")), ("feature cache", run.get("feature_cache"))]
    return {"settings": sorted((run.get("config") or {}).items()),
            "timings": list((run.get("timings_seconds") or {}).items()),
            "environment": environment + list((run.get("versions") or {}).items())}


def _sections(data: RunData, figures: dict[str, bytes], per_cluster: dict[int, tuple[np.ndarray, np.ndarray]],
              map_note: str, thumbnail_note: str) -> list[_Section]:
    """The page's sections in order, each with the data its template shows; absent parts leave theirs out."""
    skipped = data.run.get("skipped") or []
    wanted = [
        ("overview", "Overview", "summary", lambda: _summary(data), True),
        ("map", "2-D map", "map", lambda: _map_section(figures, map_note), True),
        ("sizes", "Cluster sizes", "sizes", lambda: _sizes_section(data, figures), data.n_clusters > 0),
        ("k", "Choosing K", "k_selection", lambda: _k_selection_section(data, figures), bool(data.k_selection)),
        ("metrics", "Metrics", "metrics", lambda: _metrics_section(data, figures), bool(data.metrics)),
        ("clusters", "Clusters", "clusters", lambda: _clusters_section(data, per_cluster, thumbnail_note), True),
        ("duplicates", "Duplicates", "duplicates", lambda: _duplicates_section(data), bool(data.duplicates)),
        ("outliers", "Outliers", "outliers", lambda: _outliers_section(data), bool(data.outliers)),
        ("skipped", f"Skipped files ({len(skipped)})", "skipped", lambda: _skipped_section(skipped), bool(skipped)),
        ("config", "Configuration", "config", lambda: _config_section(data.run), True),
    ]
    return [_Section(anchor, title, f"{template}.html.j2", build()) for anchor, title, template, build, shown in wanted
            if shown]


def build_report_html(data: RunData, figures: dict[str, bytes], thumbs: dict[int, str],
                      per_cluster: dict[int, tuple[np.ndarray, np.ndarray]], map_note: str = "",
                      thumbnail_note: str = "") -> str:
    """The HTML text (a pure function of its inputs; every string from the data is escaped by the templates)."""
    return _ENV.get_template("page.html.j2").render(
        csp=Markup(_CSP), header=_header(data), written=time.strftime("%Y-%m-%d %H:%M"), items=data.items,
        pictures=_Pictures(thumbs), sections=_sections(data, figures, per_cluster, map_note, thumbnail_note))


# -- writing ----------------------------------------------------------------------------------------------------

def write_report(run_dir: str | os.PathLike, *, data: RunData | None = None, features: np.ndarray | None = None,
                 dataset: Any = None, load_features: FeatureLoader | None = None, plots: bool = False,
                 progress: bool = True, map_method: str = "auto", seed: int = 0, n_central: int = 10,
                 n_uncertain: int = 10) -> dict[str, Path]:
    """Write ``report.html`` (and, with ``plots``, the figures as PNG files in ``plots/``) into ``run_dir``.

    Args:
        run_dir: the run folder.
        data: the run as the caller holds it in memory; ``None``: read back from ``run_dir`` (:func:`load_run`).
        features: (N_clustered, D) features of the rows with cluster ≥ 0, in order, for the 2-D map;
            ``None`` (or features of another shape, e.g. pixels): ``load_features(data)``.
        dataset: the run's dataset, to draw thumbnails of non-file items (arrays, built-in sets);
            ``None``: files are opened by path, anything else through the run's source.
        load_features: how to get the map's features when ``features`` are not usable (default
            :func:`cached_features`: the feature cache, never a backbone); ``None`` or an ImgclustError leaves
            the map out with a note.
        plots: also write ``plots/*.png``.
        progress: progress bar while making thumbnails.
        map_method: ``"auto"`` (t-SNE), ``"tsne"``, ``"umap"`` or ``"pca"``.
        n_central, n_uncertain: thumbnails per cluster (reduced for large K, :data:`MAX_THUMBNAILS` in all).

    Returns:
        ``{"report": path, "plots/<name>": path, ...}``.
    """
    data = load_run(run_dir) if data is None else data
    features, map_note = _map_features(data, features, load_features)
    figures = _make_figures(data, features, map_method, seed, progress)
    picked = _pick_rows(data, *_gallery_sizes(data.n_clusters, n_central, n_uncertain))
    thumbs, thumbnail_note = _make_thumbnails(data, _rows_shown(data, picked), dataset, progress)

    out = Path(run_dir)
    paths = {"report": out / REPORT_NAME}
    write_text(paths["report"], build_report_html(data, figures, thumbs, picked, map_note, thumbnail_note))
    if plots:
        for name, png in figures.items():
            path = out / PLOTS_DIR / f"{name}.png"
            with atomic_path(path) as tmp:
                tmp.write_bytes(png)
            paths[f"plots/{name}"] = path
    return paths
