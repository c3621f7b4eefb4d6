"""Clustering quality on CIFAR-10 (fit on train, score on test): k-means, ICBPL, SeCu, and a linear probe.

Every row goes through the same public API users call (``ImageClusterer``), with the default offline
backbone, features cached under ``benchmarks/cache``. Labels are used only to score (and by the supervised
linear probe / kNN rows, which are the ceiling for these features, not clustering methods).

    .venv/bin/python benchmarks/quality.py                         # full train split (50,000) — hours on a CPU
    .venv/bin/python benchmarks/quality.py --train-per-class 1000  # 10,000 train images, as in BENCHMARKS.md
    .venv/bin/python benchmarks/quality.py --rows kmeans,probe     # a subset of the rows

Writes ``benchmarks/results/quality.json`` and prints a markdown table (pasted into BENCHMARKS.md). The table of
every method on every evaluation set (issue 17) is ``quality_table.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, print_table, require_cifar10, save_result  # noqa: E402

from imgclust import ImageClusterer  # noqa: E402
from imgclust.cli import parse_option_value  # noqa: E402
from imgclust.data import PathListDataset  # noqa: E402
from imgclust.methods.consensus import ConsensusModel  # noqa: E402
from imgclust.metrics import evaluate  # noqa: E402
from imgclust.neighbors import mine_neighbors, neighbor_purity, normalize_features  # noqa: E402

CACHE = REPO / "benchmarks" / "cache"

ICBPL_HEAD = {"trainable_blocks": 0, "n_views": 4, "epochs": 30}
# Head mode on the clean features alone: no backbone pass beyond the clean one (what fits the full split on a CPU).
ICBPL_CLEAN = {"trainable_blocks": 0, "n_views": 0, "epochs": 30}
ICBPL_FINETUNE = {"trainable_blocks": 1, "n_views": 2, "epochs": 15}
SECU_HEAD = {"trainable_blocks": 0, "n_views": 4, "epochs": 30}
SECU_CLEAN = {"trainable_blocks": 0, "n_views": 0, "epochs": 30}
# On top of the default backbone with its last block fine-tuned: like ICBPL_FINETUNE (one view of each kind).
SECU_FINETUNE = {"trainable_blocks": 1, "n_views": 2, "epochs": 15}
# From scratch on a CPU budget: the authors' 400 epochs start with 1 held + 11 warm-up epochs; 3 epochs get
# no hold and 1 warm-up epoch instead.
SECU_SCRATCH = {"encoder": "resnet18_cifar", "epochs": 3, "hold_epochs": 0, "warmup_epochs": 1}

# name -> (method, options). The ablation rows switch one ICBPL loss off at a time (head mode).
CLUSTERING_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "kmeans": ("kmeans", {"n_init": 10}),
    "icbpl-head": ("icbpl", ICBPL_HEAD),
    "icbpl-finetune": ("icbpl", ICBPL_FINETUNE),
    # Step-view 1 is the clean input (the MMD spreads what prediction sees); see docs/methods/icbpl.md.
    "icbpl-finetune-clean-view": ("icbpl", {**ICBPL_FINETUNE, "clean_view": True}),
    "icbpl-head-no-mmd": ("icbpl", {**ICBPL_HEAD, "w_mmd": 0.0}),
    "icbpl-head-no-aug": ("icbpl", {**ICBPL_HEAD, "w_aug": 0.0}),
    "icbpl-head-no-knn": ("icbpl", {**ICBPL_HEAD, "w_knn": 0.0}),
    "icbpl-head-no-min": ("icbpl", {**ICBPL_HEAD, "w_min": 0.0}),
    "secu-head": ("secu", SECU_HEAD),
    "icbpl-head-clean": ("icbpl", ICBPL_CLEAN),
    # Five heads (seeds seed..seed+4) combined by consensus: single heads vary by several points with the seed.
    "icbpl-head-clean-r5": ("icbpl", {**ICBPL_CLEAN, "n_restarts": 5}),
    "icbpl-head-clean-no-mmd": ("icbpl", {**ICBPL_CLEAN, "w_mmd": 0.0}),
    "icbpl-head-clean-no-knn": ("icbpl", {**ICBPL_CLEAN, "w_knn": 0.0}),
    "icbpl-head-clean-no-min": ("icbpl", {**ICBPL_CLEAN, "w_min": 0.0}),
    "secu-head-clean": ("secu", SECU_CLEAN),
    "secu-scratch": ("secu", SECU_SCRATCH),
    "secu-finetune": ("secu", SECU_FINETUNE),
}


def cifar10(root: Path, split: str, per_class: int) -> PathListDataset:
    names = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        files = sorted((root / split / name).glob("*.jpg"))[:per_class]
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    return PathListDataset(paths, labels=np.asarray(labels), class_names=names, name=f"cifar10-{split}")


def supervised_rows(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
                    ) -> list[dict[str, Any]]:
    """The ceiling for these features: logistic regression and kNN (k=20) with the labels, and purity."""
    from sklearn.linear_model import LogisticRegression

    (x_train, y_train), (x_test, y_test) = train, test
    x_train, x_test = normalize_features(x_train), normalize_features(x_test)
    rows = []
    started = time.perf_counter()
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(x_train, y_train)
    rows.append({"row": "linear probe (supervised ceiling)", "acc": float((probe.predict(x_test) == y_test).mean()),
                 "seconds": time.perf_counter() - started})
    started = time.perf_counter()
    similarities = x_test @ x_train.T
    top = np.argsort(-similarities, axis=1)[:, :20]
    votes = np.array([np.bincount(y_train[t], minlength=10).argmax() for t in top])
    rows.append({"row": "kNN k=20 (supervised)", "acc": float((votes == y_test).mean()),
                 "seconds": time.perf_counter() - started})
    purity = neighbor_purity(mine_neighbors(x_train, 20), y_train)
    rows.append({"row": "neighbour purity k=20 (train)", "acc": float(purity)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-per-class", type=int, default=5000)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--rows", default=",".join(["probe", *CLUSTERING_ROWS]),
                        help="comma-separated rows: probe," + ",".join(CLUSTERING_ROWS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="ROW.KEY=VALUE",
                        help="override an option of one row, e.g. icbpl-head.epochs=5 or icbpl-finetune.amp=bf16 "
                             "(the value is read as JSON, else kept as a string)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="feature extraction precision (ImageClusterer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="quality", help="result file benchmarks/results/NAME.json")
    args = parser.parse_args()

    root = require_cifar10()
    train, test = cifar10(root, "train", args.train_per_class), cifar10(root, "test", args.test_per_class)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    rows_spec = {name: (method, dict(options)) for name, (method, options) in CLUSTERING_ROWS.items()}
    for override in args.overrides:
        key, value = override.split("=", 1)
        row, option = key.split(".", 1)
        if row not in rows_spec:
            parser.error(f"--set {override}: no row {row!r}; rows: {', '.join(rows_spec)}")
        rows_spec[row][1][option] = parse_option_value(value)

    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    base = ImageClusterer(n_clusters=10, cache_dir=str(CACHE), device=args.device, random_state=args.seed,
                          precision=args.precision)
    base.fit(train)  # k-means on the clean features; also caches them for every other row
    timings = {"features_train_and_kmeans": time.perf_counter() - started}
    started = time.perf_counter()
    test_assignment, _, _ = base.predict_assignment(test)
    timings["features_test"] = time.perf_counter() - started
    features = {"train": _features(base, train), "test": _features(base, test)}

    if "probe" in wanted:
        results += supervised_rows((features["train"], train.labels), (features["test"], test.labels))
    for name in wanted:
        if name == "probe":
            continue
        method, options = rows_spec[name]
        row_started = time.perf_counter()
        if name == "kmeans":
            clusterer, assignment = base, test_assignment
            fit_seconds = base.timings_["fit"]
        else:
            clusterer = ImageClusterer(n_clusters=10, method=method, method_options=options, cache_dir=str(CACHE),
                                       device=args.device, random_state=args.seed, precision=args.precision,
                                       run_dir=str(REPO / "benchmarks" / "cache" / "runs" / name))
            clusterer.fit(train)
            fit_seconds = clusterer.timings_["fit"]
            assignment, _, _ = clusterer.predict_assignment(test)
        metrics = evaluate(test.labels, assignment.labels, n_clusters=10)
        results.append({"row": name, "method": method, "options": options, "acc": metrics["acc"],
                        "nmi": metrics["nmi"], "ari": metrics["ari"],
                        "train_acc": clusterer.metrics_["acc"] if clusterer.metrics_ else None,
                        "fit_seconds": fit_seconds, "seconds": time.perf_counter() - row_started})
        if isinstance(clusterer.model_, ConsensusModel):  # each restart alone, scored the same way
            inputs, _, _ = clusterer.encode(test, encoder=clusterer.model_.input_encoder)
            results[-1]["restart_acc"] = [evaluate(test.labels, m.assign(inputs).labels, n_clusters=10)["acc"]
                                          for m in clusterer.model_.members]
            results[-1]["restart_agreement_nmi"] = clusterer.fit_info_["restart_agreement_nmi"]
        print(json.dumps(results[-1]), flush=True)

    kmeans_acc = next((r["acc"] for r in results if r["row"] == "kmeans"), None)
    probe_acc = next((r["acc"] for r in results if r["row"].startswith("linear probe")), None)
    for r in results:
        if kmeans_acc is not None and "nmi" in r:
            r["acc_minus_kmeans"] = r["acc"] - kmeans_acc
        if probe_acc and "nmi" in r:
            r["fraction_of_probe"] = r["acc"] / probe_acc
    table = print_table(results, ["row", "acc", "nmi", "ari", "acc_minus_kmeans", "fraction_of_probe",
                                  "fit_seconds", "seconds"])
    path = save_result(args.name, {"train_images": len(train), "test_images": len(test),
                                   "backbone": base.backbone, "precision": args.precision, "timings": timings, "rows": results,
                                   "table": table})
    print(f"wrote {path}")


def _features(clusterer: ImageClusterer, dataset: PathListDataset) -> np.ndarray:
    """Clean backbone features of every row (from the cache filled above)."""
    features, valid, _ = clusterer.encode(dataset)
    if len(valid) != len(dataset):
        raise SystemExit(f"{len(dataset) - len(valid)} CIFAR-10 images failed to decode")
    return np.asarray(features)


if __name__ == "__main__":
    main()
