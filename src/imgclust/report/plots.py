"""Figures of a run (matplotlib, drawn off-screen with the Agg canvas: no display, no global pyplot state),
and the 2-D map of the embeddings they show.

Every ``*_figure`` function takes plain data (arrays, lists, the k-selection dict of ``KSelection.to_dict()``) and
returns a ``matplotlib.figure.Figure``; :func:`png_bytes` / :func:`save_png` render it.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from .._io import atomic_path
from ..kselect import PROFILE_VIEW, steps_in_view
from ..neighbors import normalize_features

_logger = logging.getLogger(__name__)

#: Points placed on the 2-D map at most (a fixed random subsample beyond that): t-SNE of 3,000 points takes
#: ~15-35 s on a 2-core CPU.
MAX_MAP_POINTS = 3000
MAP_METHODS = ("auto", "tsne", "umap", "pca")


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(fig, dpi))
    return path


def cluster_colors(k: int) -> np.ndarray:
    """(K, 4) RGBA colours, distinct for up to 20 clusters, then cycling through a continuous map."""
    from matplotlib import colormaps

    if k <= 10:
        return colormaps["tab10"](np.arange(k))
    if k <= 20:
        return colormaps["tab20"](np.arange(k))
    return colormaps["gist_ncar"](np.linspace(0.02, 0.95, k))


def cluster_color_hex(k: int) -> list[str]:
    from matplotlib.colors import to_hex

    return [to_hex(c) for c in cluster_colors(k)]


# -- 2-D map ----------------------------------------------------------------------------------------------

def embedding_2d(features: np.ndarray, method: str = "auto", max_points: int = MAX_MAP_POINTS, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, str]:
    """A 2-D map of (N, D) features: ``(rows used, (n, 2) coordinates, method used)``.

    Rows are L2-normalised, reduced to 50 dimensions by PCA, then laid out by t-SNE (``"tsne"``, scikit-learn)
    or UMAP (``"umap"``, umap-learn, cosine). ``"auto"`` = t-SNE (no extra dependency, no JIT warm-up).
    At most ``max_points`` rows (a fixed random subsample) are placed.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"unknown map method {method!r}; choose one of {MAP_METHODS}")
    # One thread: t-SNE's Barnes-Hut loop is 1,000 short OpenMP sections, which on a busy CPU spend far more
    # time waiting for each other than computing (measured: 23 s → well under 1 s for a few hundred points).
    with threadpool_limits(limits=1):
        return _embedding_2d(features, method, max_points, seed)


def _embedding_2d(features: np.ndarray, method: str, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    x = normalize_features(features)
    n = x.shape[0]
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        x = x[rows]
    n = x.shape[0]
    if n < 4:
        return rows, np.zeros((n, 2), dtype=np.float32), "none"
    dims = int(min(50, n - 1, x.shape[1]))
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x)
    if method == "pca" or n < 10:
        return rows, reduced[:, :2].astype(np.float32), "pca"
    if method == "umap":
        import umap

        xy = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_neighbors=min(15, n - 1), n_jobs=1
                       ).fit_transform(reduced)
        return rows, np.asarray(xy, dtype=np.float32), "umap"
    xy = TSNE(n_components=2, perplexity=float(min(30, (n - 1) / 3)), init="pca", random_state=seed,
              learning_rate="auto").fit_transform(reduced)
    return rows, xy.astype(np.float32), "tsne"


# -- figures ----------------------------------------------------------------------------------------------

def cluster_labels(n_clusters: int, names: Sequence[str] | None = None) -> list[str]:
    """``"3"``, or ``"3 tabby cat"`` when the clusters have names."""
    if not names:
        return [str(c) for c in range(n_clusters)]
    return [f"{c} {names[c]}" if c < len(names) and names[c] else str(c) for c in range(n_clusters)]


def embedding_map_figure(xy: np.ndarray, clusters: np.ndarray, n_clusters: int, method: str = "",
                         names: Sequence[str] | None = None) -> Any:
    """Scatter of the 2-D map coloured by cluster, each cluster's number written at its median point, and a
    legend of the cluster names when there are names."""
    from matplotlib.lines import Line2D

    legend_columns = 0 if not names else 1 if n_clusters <= 16 else 2 if n_clusters <= 40 else 0
    fig = _new_figure(6.0 + 2.2 * legend_columns, 5.2)
    ax = fig.add_subplot()
    colors = cluster_colors(n_clusters)
    size = float(np.clip(3000 / max(len(xy), 1), 2, 30))
    ax.scatter(xy[:, 0], xy[:, 1], c=colors[clusters], s=size, linewidths=0, alpha=0.8)
    for c in range(n_clusters):
        mine = xy[clusters == c]
        if len(mine):
            cx, cy = np.median(mine, axis=0)
            ax.text(cx, cy, str(c), fontsize=11, fontweight="bold", ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colors[c], "alpha": 0.85})
    ax.set_xticks([])
    ax.set_yticks([])
    shown = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}.get(method, method or "none")
    ax.set_title(f"{len(xy)} images: 2-D map ({shown} of the features), coloured by cluster", fontsize=10)
    if legend_columns:
        handles = [Line2D([], [], marker="o", linestyle="", color=colors[c], label=label[:28])
                   for c, label in enumerate(cluster_labels(n_clusters, names))]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=legend_columns,
                  frameon=False, handletextpad=0.2, borderaxespad=0)
    return fig


def cluster_sizes_figure(sizes: Sequence[int], mean_confidence: Sequence[float] | None = None,
                         names: Sequence[str] | None = None) -> Any:
    """Bars of the cluster sizes (confidence written on each bar when given; names under the bars, turned,
    when the clusters have names)."""
    k = len(sizes)
    fig = _new_figure(max(4.5, min(14.0, 0.45 * k + 2)), 4.8 if names else 3.6)
    ax = fig.add_subplot()
    bars = ax.bar(np.arange(k), sizes, color=cluster_colors(k))
    ax.set_xticks(np.arange(k))
    if names:
        ax.set_xticklabels([label[:24] for label in cluster_labels(k, names)], fontsize=7 if k > 20 else 8,
                           rotation=60, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticklabels([str(i) for i in range(k)], fontsize=8 if k > 20 else 10)
    ax.set_xlabel("cluster")
    ax.set_ylabel("images")
    ax.set_title("cluster sizes" + (" (mean confidence on top)" if mean_confidence is not None else ""))
    if mean_confidence is not None and k <= 30:
        for bar, conf in zip(bars, mean_confidence):
            if np.isfinite(conf):
                ax.annotate(f"{conf:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    return fig


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str] | None,
                     clusters: Sequence[int]) -> Any:
    """Heat map of true class × cluster counts (clusters ordered as given, e.g. by the Hungarian matching)."""
    counts = np.asarray(confusion, dtype=np.int64)
    c, k = counts.shape
    names = list(class_names) if class_names else [str(i) for i in range(c)]
    fig = _new_figure(max(5.0, min(16.0, 0.5 * k + 3)), max(3.5, min(12.0, 0.4 * c + 1.8)))
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues", aspect="auto")
    ax.set_xticks(np.arange(k))
    ax.set_xticklabels([str(j) for j in clusters], fontsize=8)
    ax.set_yticks(np.arange(c))
    ax.set_yticklabels([n[:24] for n in names], fontsize=8)
    ax.set_xlabel("cluster")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix", fontsize=11)
    if c * k <= 400:
        top = counts.max() or 1
        for i in range(c):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if counts[i, j] > 0.6 * top else "black")
    return fig


def _resolution_profile_panel(profile_ax: Any, steps: list[dict[str, Any]], selection: dict[str, Any]) -> None:
    """K chosen by modularity over the resolution γ, as stairs on a log axis, the estimate's γ marked."""
    from matplotlib.ticker import MaxNLocator, NullFormatter

    low, high = PROFILE_VIEW
    edges = [max(step["resolution_from"], low) for step in steps] + [
        min(steps[-1]["resolution_to"] or high, high)]
    levels = [step["k"] for step in steps]
    profile_ax.stairs(levels, edges, color="#2ca02c", linewidth=2, baseline=None)
    for step, left, right in zip(steps, edges[:-1], edges[1:]):
        profile_ax.annotate(str(step["k"]), (np.sqrt(left * right), step["k"]), textcoords="offset points",
                            xytext=(0, 4), ha="center", fontsize=8)
    resolution = (selection.get("settings") or {}).get("resolution")
    if resolution is not None and low <= resolution <= high:
        profile_ax.axvline(resolution, color="#d62728", linestyle="--", linewidth=1)
        profile_ax.annotate(f"γ = {resolution:g}", (resolution, max(levels)), textcoords="offset points",
                            xytext=(4, -12), color="#d62728")
    profile_ax.set_xscale("log")
    profile_ax.set_xlim(low, high)
    ticks = [t for t in (0.25, 0.5, 1.0, 2.0, 4.0) if low <= t <= high]
    profile_ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    profile_ax.xaxis.set_minor_formatter(NullFormatter())
    profile_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    profile_ax.set_xlabel("resolution γ (log scale; lower = coarser)")
    profile_ax.set_ylabel("K chosen by modularity")
    profile_ax.set_title("levels of structure: K over the resolution")


def k_selection_figure(selection: dict[str, Any]) -> Any:
    """The criterion's curve over K with the chosen K marked (``selection`` = ``KSelection.to_dict()``), and
    beside it, when the selection has one, the K that modularity chooses at each resolution γ."""
    from matplotlib.ticker import MaxNLocator

    ks = np.asarray(selection["k_values"])
    scores = np.asarray([np.nan if s is None else s for s in selection["scores"]], dtype=float)
    steps = steps_in_view(selection.get("resolution_profile") or [])
    fig = _new_figure(11.0 if steps else 6.5, 3.6)
    ax = fig.add_subplot(1, 2, 1) if steps else fig.add_subplot()
    ax.plot(ks, scores, "o-", color="#1f77b4", markersize=4)
    chosen = selection["k"]
    ax.axvline(chosen, color="#d62728", linestyle="--", linewidth=1)
    ax.annotate(f"K = {chosen}", (chosen, np.nanmax(scores)), textcoords="offset points", xytext=(6, -12),
                color="#d62728", fontweight="bold")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("K (number of clusters)")
    ax.set_ylabel(f"{selection['criterion']} (higher is better)")
    ax.set_title(f"choosing K: {selection['criterion']} over K = {ks[0]}..{ks[-1]}")
    if steps:
        _resolution_profile_panel(fig.add_subplot(1, 2, 2), steps, selection)
    return fig
