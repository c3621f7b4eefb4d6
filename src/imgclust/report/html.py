"""``report.html``: a self-contained visual report of a run folder.

It opens from disk with no network (a Content-Security-Policy forbids any fetch): thumbnails and figures are
embedded as base64 data URIs. Contents: a summary, cluster sizes, a 2-D map of the embeddings coloured by
cluster, the choice of K (when K was estimated), metrics and a confusion matrix (when the data had labels), one
section per cluster with its most central and least confident images, the skipped files, and the run's
configuration. Every file name, label and setting is HTML-escaped.

Everything is read back from the run folder (assignments.csv, run.json, metrics.json, k_selection.json,
model.json), so ``imgclust report RUN_DIR`` rebuilds it at any time; the features for the map come from the
feature cache (or are passed in by the caller that has them).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ImgclustError

_logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
PLOTS_DIR = "plots"
THUMB_SIZE = 96
#: At most this many thumbnails in all (per-cluster counts shrink for large K to keep the file small).
MAX_THUMBNAILS = 1600


@dataclass
class RunData:
    """What a run folder holds, as the report needs it."""

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


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ImgclustError(f"cannot read {path}: {err}", "re-run `imgclust cluster` to rewrite the run folder"
                            ) from err


def read_assignments(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    """``assignments.csv`` → (items, clusters, confidence, distance, label names or None)."""
    if not path.exists():
        raise ImgclustError(f"{path.parent} is not an imgclust run folder (no assignments.csv)",
                            "point at the --out folder of a finished `imgclust cluster` run")
    items, clusters, conf, dist, labels = [], [], [], [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        has_label = "label" in (reader.fieldnames or [])
        try:
            for row in reader:
                items.append(row["path"])
                clusters.append(int(row["cluster"]))
                conf.append(float(row["confidence"]) if row["confidence"] else np.nan)
                dist.append(float(row["distance"]) if row["distance"] else np.nan)
                if has_label:
                    labels.append(row["label"] or "")
        except (KeyError, ValueError) as err:
            raise ImgclustError(f"{path} is malformed ({err})", "re-run `imgclust cluster` to rewrite it") from err
    return (items, np.asarray(clusters, dtype=np.int64), np.asarray(conf, dtype=np.float64),
            np.asarray(dist, dtype=np.float64), labels if has_label else None)


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read a run folder written by ``imgclust cluster``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ImgclustError(f"run folder {run_dir} does not exist", "pass the --out folder of `imgclust cluster`")
    items, clusters, conf, dist, labels = read_assignments(run_dir / "assignments.csv")
    run = _read_json(run_dir / "run.json") or {}
    model = _read_json(run_dir / "model.json")
    k = len(run.get("cluster_sizes") or [])
    if not k and model:
        k = int(model.get("model_config", {}).get("n_clusters", 0))
    k = max(k, int(clusters.max()) + 1 if clusters.size else 0)
    return RunData(run_dir=run_dir, items=items, clusters=clusters, confidence=conf, distance=dist,
                   labels=labels, n_clusters=k, run=run, metrics=_read_json(run_dir / "metrics.json"),
                   k_selection=_read_json(run_dir / "k_selection.json"), model=model)


# -- images -------------------------------------------------------------------------------------------------

class _ImageOpener:
    """Opens the image of a row: the file itself when the item is a path, else through the run's source."""

    def __init__(self, data: RunData, dataset: Any = None):
        self.data = data
        self.dataset = dataset
        self._index: dict[str, int] | None = None
        self._failed = False

    def _from_dataset(self, item: str) -> Any:
        if self.dataset is None and not self._failed:
            try:
                from ..data import load_source

                self.dataset = load_source(self.data.run.get("source", ""),
                                           data_root=(self.data.run.get("config") or {}).get("data_root"))
            except Exception as err:  # no thumbnails for this source: the report says so
                _logger.info("report: cannot reopen the source for thumbnails: %s", err)
                self._failed = True
        if self.dataset is None or not hasattr(self.dataset, "load"):
            return None
        if self._index is None:
            self._index = {str(it): i for i, it in enumerate(self.dataset.items)}
        i = self._index.get(item)
        return None if i is None else self.dataset.load(i)

    def __call__(self, item: str) -> Any:
        from ..data import open_image

        try:
            if os.path.isfile(item):
                return open_image(item)
            return self._from_dataset(item)
        except Exception as err:  # a thumbnail that can't be made is left out, never fatal
            _logger.debug("report: no thumbnail for %s: %s", item, err)
            return None


def thumbnail_data_uri(image: Any, size: int = THUMB_SIZE) -> str:
    """A JPEG data URI of ``image`` fitted into ``size``×``size`` (small images are enlarged)."""
    from PIL import Image

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


# -- features for the map -------------------------------------------------------------------------------------

def features_for_run(data: RunData, device: str = "cpu", progress: bool = False) -> np.ndarray | None:
    """Backbone features of the clustered rows (those with cluster ≥ 0, in order), from the feature cache.

    Returns ``None`` (with a log line) when they cannot be had (no saved model, source gone...)."""
    from ..data import load_source
    from ..data.base import EmbeddingDataset

    source = data.run.get("source")
    if not source:
        return None
    try:
        dataset = load_source(source, data_root=(data.run.get("config") or {}).get("data_root"))
        if isinstance(dataset, EmbeddingDataset):
            feats = np.asarray(dataset.features, dtype=np.float32)
            return feats[data.clusters >= 0] if len(feats) == len(data.clusters) else None
        from ..estimator import ImageClusterer, resolve_device

        clusterer = ImageClusterer.load(data.run_dir)
        clusterer.progress = progress
        clusterer.device_ = resolve_device(device)
        # the dataset object just opened (same items, same fingerprint, so the feature cache is hit)
        feats, valid, _ = clusterer.encode(dataset)
    except ImgclustError as err:
        _logger.warning("report: no 2-D map (%s)", err.message)
        return None
    if len(valid) != int((data.clusters >= 0).sum()):
        _logger.warning("report: no 2-D map (the source changed since the run)")
        return None
    return np.asarray(feats)


# -- the page -------------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def _table(rows: list[tuple[Any, Any]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _resolution_profile_html(selection: dict[str, Any]) -> str:
    """The levels of structure the modularity criterion sees (K per resolution γ), as a sentence and a table."""
    from ..kselect import resolution_range_text, steps_in_view

    steps = steps_in_view(selection.get("resolution_profile") or [])
    if not steps:
        return ""
    resolution = (selection.get("settings") or {}).get("resolution")
    rows = [(f"K = {step['k']}" + (" (chosen)" if step["k"] == selection["k"] else ""),
             f"γ {resolution_range_text(step)}") for step in steps]
    return (f"<p>The K that modularity chooses at each resolution γ (the estimate uses γ = {_e(resolution)}; a "
            "lower γ prefers fewer, larger clusters). A K that holds over a wide range of γ is a stable level of "
            "structure; the steps next to the chosen K are the natural alternatives when its clusters look "
            "too coarse or too fine: re-run with -k.</p>" + _table(rows))


def _name(item: str) -> str:
    return os.path.basename(item) or item


def _figure_html(uri: str, alt: str) -> str:
    return f'<img class="fig" src="{uri}" alt="{_e(alt)}">'


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:16px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;opacity:.9}nav{padding:8px 28px;background:#e8ecf1;position:sticky;top:0;z-index:2}
nav a{margin-right:14px;color:#1f3a5f;text-decoration:none;font-weight:600}main{padding:8px 28px 40px}
section{background:#fff;border-radius:8px;padding:14px 18px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{margin:4px 0 10px;font-size:19px}h3{margin:6px 0;font-size:16px}h4{margin:10px 0 4px;font-size:13px;color:#555}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.fig{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}table.kv th{color:#555;font-weight:600}td{word-break:break-all}
.gallery{display:flex;flex-wrap:wrap;gap:6px}.gallery figure{margin:0;width:100px;text-align:center}
.gallery img{width:96px;height:96px;object-fit:contain;background:#111;border-radius:3px;display:block;margin:auto}
.gallery figcaption{font-size:10px;color:#555;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.cluster{border-left:6px solid #999;padding-left:12px}.badge{display:inline-block;padding:1px 8px;border-radius:10px;
background:#eef;margin-right:6px;font-size:12px}.muted{color:#777;font-size:12px}
"""

# Counts the <img> elements that decoded (naturalWidth > 0) and records it on <body> for tests and tools.
_JS = """
function imgclustCheck(){var imgs=document.images,ok=0;for(var i=0;i<imgs.length;i++){
if(imgs[i].complete&&imgs[i].naturalWidth>0){ok++;}}
document.body.setAttribute('data-images-loaded',ok+'/'+imgs.length);
document.body.setAttribute('data-images-ok',ok===imgs.length?'true':'false');}
window.addEventListener('load',imgclustCheck);
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")


def _gallery(rows: np.ndarray, data: RunData, thumbs: dict[int, str], show: Callable[[int], str]) -> str:
    figs = []
    for i in rows:
        item = data.items[i]
        uri = thumbs.get(int(i))
        img = (f'<img src="{uri}" alt="{_e(_name(item))}" title="{_e(item)}">' if uri
               else '<div class="muted" style="height:96px">(no image)</div>')
        figs.append(f"<figure>{img}<figcaption title=\"{_e(item)}\">{_e(_name(item))}<br>{_e(show(int(i)))}"
                    "</figcaption></figure>")
    return f'<div class="gallery">{"".join(figs)}</div>'


def build_report_html(data: RunData, figures: dict[str, bytes], thumbs: dict[int, str],
                      per_cluster: dict[int, tuple[np.ndarray, np.ndarray]], map_note: str = "") -> str:
    """The HTML text (pure function of its inputs; every string from the data is escaped)."""
    run = data.run
    config = run.get("config") or {}
    valid = data.clusters >= 0
    k = data.n_clusters
    sizes = np.bincount(data.clusters[valid], minlength=k)
    source = run.get("source", "")
    method = config.get("method") or (data.model or {}).get("method", "")
    backbone = config.get("backbone") or ((data.model or {}).get("backbone") or {}).get("name", "")
    total = (run.get("timings_seconds") or {}).get("total")
    from .plots import cluster_color_hex

    colors = cluster_color_hex(max(k, 1))

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>imgclust report: {_e(source)}</title><style>{_CSS}</style></head><body>"]
    subtitle = (f"{int(valid.sum())} images → {k} clusters · method {method} · backbone {backbone}"
                + (f" · {total:.1f} s" if isinstance(total, (int, float)) else ""))
    parts.append(f"<header><h1>imgclust report</h1><p>{_e(source)}</p><p>{_e(subtitle)}</p>"
                 f"<p class=\"muted\" style=\"color:#cfd8e3\">run folder: {_e(data.run_dir.resolve())}</p></header>")
    nav = [("overview", "Overview")]
    if data.k_selection:
        nav.append(("k", "Choosing K"))
    if data.metrics:
        nav.append(("metrics", "Metrics"))
    nav += [("clusters", "Clusters")]
    if run.get("skipped"):
        nav.append(("skipped", "Skipped files"))
    nav.append(("config", "Configuration"))
    parts.append("<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in nav) + "</nav><main>")

    # overview
    parts.append('<section id="overview"><h2>Overview</h2><div class="row">')
    if "embedding_map" in figures:
        parts.append(_figure_html(_png_uri(figures["embedding_map"]), "2-D map of the embeddings"))
    elif map_note:
        parts.append(f'<p class="muted">{_e(map_note)}</p>')
    if "cluster_sizes" in figures:
        parts.append(_figure_html(_png_uri(figures["cluster_sizes"]), "cluster sizes"))
    parts.append("</div>")
    overview = [("images clustered", int(valid.sum())), ("clusters", k),
                ("skipped (unreadable)", int((~valid).sum())),
                ("smallest / largest cluster", f"{sizes.min() if k else 0} / {sizes.max() if k else 0}"),
                ("mean confidence", float(np.nanmean(data.confidence[valid])) if valid.any() else None)]
    if data.k_selection:
        overview.append(("K", f"estimated: {data.k_selection['k']} ({data.k_selection['criterion']})"))
    parts.append(_table(overview) + "</section>")

    if data.k_selection:
        sel = data.k_selection
        parts.append('<section id="k"><h2>Choosing K</h2>')
        parts.append(f"<p>K = <b>{_e(sel['k'])}</b>, chosen by {_e(sel.get('description', sel['criterion']))}, "
                     f"over K = {_e(sel['k_values'][0])}..{_e(sel['k_values'][-1])} on {_e(sel.get('n_samples'))} "
                     "images. The full curve is in k_selection.json.</p>")
        if "k_selection" in figures:
            parts.append(_figure_html(_png_uri(figures["k_selection"]), "K selection curve"))
        parts.append(_resolution_profile_html(sel))
        parts.append("</section>")

    if data.metrics:
        m = data.metrics
        parts.append('<section id="metrics"><h2>Metrics</h2><p class="muted">Against the labels that came with '
                     "the data (used only for scoring, never for clustering).</p><div class=\"row\">")
        parts.append(_table([("ACC (Hungarian)", m.get("acc")), ("NMI", m.get("nmi")), ("ARI", m.get("ari")),
                             ("AMI", m.get("ami")), ("ACC (majority per cluster)", m.get("acc_majority")),
                             ("classes", m.get("n_classes")), ("labelled images", m.get("n_samples"))]))
        if "confusion" in figures:
            parts.append(_figure_html(_png_uri(figures["confusion"]), "confusion matrix"))
        parts.append("</div></section>")

    # clusters
    parts.append('<section id="clusters"><h2>Clusters</h2><p class="muted">Per cluster: the images closest to '
                 "its centre (most typical), then the least confident ones (closest to another cluster). "
                 "Hover a thumbnail for its full path.</p>")
    for c in range(k):
        members = np.flatnonzero(data.clusters == c)
        mean_conf = float(np.nanmean(data.confidence[members])) if members.size else float("nan")
        badges = [f"{len(members)} images", f"mean confidence {mean_conf:.2f}" if members.size else "empty"]
        if data.labels is not None and members.size:
            names, counts = np.unique([data.labels[i] for i in members], return_counts=True)
            top = int(counts.argmax())
            badges.append(f"most common label: {names[top] or '?'} ({counts[top] / members.size:.0%})")
        parts.append(f'<div class="cluster" id="cluster-{c}" style="border-color:{colors[c]}">'
                     f"<h3>Cluster {c}</h3>" + "".join(f'<span class="badge">{_e(b)}</span>' for b in badges))
        central, uncertain = per_cluster.get(c, (np.array([], int), np.array([], int)))
        if central.size:
            parts.append("<h4>most central</h4>" + _gallery(central, data, thumbs,
                                                            lambda i: f"dist {data.distance[i]:.3f}"))
        if uncertain.size:
            parts.append("<h4>least confident</h4>" + _gallery(uncertain, data, thumbs,
                                                               lambda i: f"conf {data.confidence[i]:.2f}"))
        parts.append("</div>")
    parts.append("</section>")

    skipped = run.get("skipped") or []
    if skipped:
        rows = "".join(f"<tr><td>{_e(s.get('item', ''))}</td><td>{_e(s.get('reason', ''))}</td></tr>"
                       for s in skipped[:500])
        more = f"<p class=\"muted\">… and {len(skipped) - 500} more (run.json)</p>" if len(skipped) > 500 else ""
        parts.append(f'<section id="skipped"><h2>Skipped files ({len(skipped)})</h2><table><tr><th>file</th>'
                     f"<th>reason</th></tr>{rows}</table>{more}</section>")

    parts.append('<section id="config"><h2>Configuration</h2><div class="row">')
    parts.append("<div><h4>settings</h4>" + _table(sorted(config.items())) + "</div>")
    timings = run.get("timings_seconds") or {}
    if timings:
        parts.append("<div><h4>time (s)</h4>" + _table(list(timings.items())) + "</div>")
    extra = [("device", run.get("device")), ("feature cache", run.get("feature_cache"))]
    versions = run.get("versions") or {}
    parts.append("<div><h4>environment</h4>" + _table(extra + list(versions.items())) + "</div>")
    parts.append("</div></section>")
    parts.append(f'</main><footer class="muted" style="padding:0 28px 20px">written by imgclust on '
                 f"{_e(time.strftime('%Y-%m-%d %H:%M'))}</footer><script>{_JS}</script></body></html>")
    return "\n".join(parts)


def _pick_rows(data: RunData, n_central: int, n_uncertain: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
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


def write_report(run_dir: str | os.PathLike, *, features: np.ndarray | None = None, dataset: Any = None,
                 plots: bool = False, progress: bool = True, map_method: str = "auto", seed: int = 0,
                 n_central: int = 10, n_uncertain: int = 10, device: str = "cpu") -> dict[str, Path]:
    """Write ``report.html`` (and, with ``plots``, the figures as PNG files in ``plots/``) into ``run_dir``.

    Args:
        run_dir: a folder written by ``imgclust cluster`` (assignments.csv and run.json at least).
        features: (N_clustered, D) features of the rows with cluster ≥ 0, in order, for the 2-D map;
            ``None``: read from the feature cache (re-extracted if the cache is gone).
        dataset: the run's dataset, to draw thumbnails of non-file items (arrays, built-in sets);
            ``None``: files are opened by path, anything else through the run's source.
        plots: also write ``plots/*.png``.
        progress: progress bar while making thumbnails.
        map_method: ``"auto"`` (t-SNE), ``"tsne"``, ``"umap"`` or ``"pca"``.
        n_central, n_uncertain: thumbnails per cluster (reduced for large K, :data:`MAX_THUMBNAILS` in all).

    Returns:
        ``{"report": path, "plots/<name>": path, ...}``.
    """
    from . import plots as P

    data = load_run(run_dir)
    k = data.n_clusters
    valid = data.clusters >= 0
    sizes = np.bincount(data.clusters[valid], minlength=k)
    mean_conf = [float(np.nanmean(data.confidence[data.clusters == c])) if sizes[c] else float("nan")
                 for c in range(k)]
    per = max(2, MAX_THUMBNAILS // max(k, 1))
    if n_central + n_uncertain > per:
        n_central, n_uncertain = max(1, per * 3 // 5), max(1, per * 2 // 5)
    picked = _pick_rows(data, n_central, n_uncertain)

    figures: dict[str, bytes] = {}
    if k:
        figures["cluster_sizes"] = P.png_bytes(P.cluster_sizes_figure(sizes.tolist(), mean_conf))
    map_note = ""
    if features is not None and (np.ndim(features) != 2 or np.shape(features)[1] == 0):
        features = None  # e.g. a method trained on pixels: the map uses the backbone's features instead
    if features is None and valid.any():
        features = features_for_run(data, device=device, progress=progress)
    if features is not None and len(features) == int(valid.sum()) and valid.any():
        if progress:
            _logger.info("report: laying out the 2-D map of %d images", min(len(features), P.MAX_MAP_POINTS))
        rows, xy, used = P.embedding_2d(np.asarray(features), method=map_method, seed=seed)
        figures["embedding_map"] = P.png_bytes(P.embedding_map_figure(xy, data.clusters[valid][rows], k, used))
    else:
        map_note = "No 2-D map: the features of this run could not be read back (see the log)."
    if data.k_selection:
        figures["k_selection"] = P.png_bytes(P.k_selection_figure(data.k_selection))
    if data.metrics and data.metrics.get("confusion"):
        figures["confusion"] = P.png_bytes(P.confusion_figure(
            data.metrics["confusion"], data.metrics.get("class_names"),
            data.metrics.get("confusion_clusters") or list(range(k))))

    opener = _ImageOpener(data, dataset)
    wanted = sorted({int(i) for a, b in picked.values() for i in (*a, *b)})
    iterator: Any = wanted
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(wanted, desc="report thumbnails", unit="img", leave=False)
    thumbs: dict[int, str] = {}
    for i in iterator:
        image = opener(data.items[i])
        if image is not None:
            try:
                thumbs[i] = thumbnail_data_uri(image)
            except Exception as err:  # never let one odd image stop the report
                _logger.debug("report: thumbnail of %s failed: %s", data.items[i], err)

    from .._io import write_text

    paths = {"report": data.run_dir / REPORT_NAME}
    write_text(paths["report"], build_report_html(data, figures, thumbs, picked, map_note))
    if plots:
        from .._io import atomic_path

        for name, png in figures.items():
            path = data.run_dir / PLOTS_DIR / f"{name}.png"
            with atomic_path(path) as tmp:
                tmp.write_bytes(png)
            paths[f"plots/{name}"] = path
    return paths
