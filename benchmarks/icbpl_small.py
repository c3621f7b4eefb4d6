"""ICBPL head mode (``n_views=0``) against k-means on small and many-class development sets (issue 17, item 5).

Every set is a development set: class subsets of CIFAR-10 *train* and Fashion-MNIST *train* (the first images
of each class, features cached by ``_kfeatures.py``) and scikit-learn's digits; never an evaluation set.
Rows: k-means, ICBPL head with the settings before the fix (``BEFORE``), ICBPL head with today's defaults
(``AFTER``); every row through ``ImageClusterer`` on the feature arrays, seeds 0..S-1, mean ± sd.

    .venv/bin/python benchmarks/icbpl_small.py                      # every set, 3 seeds
    .venv/bin/python benchmarks/icbpl_small.py --sets cifar-5x60,cifar-10x50 --seeds 1
    .venv/bin/python benchmarks/icbpl_small.py --sets cifar-10x1000  # the 10,000-image guard (slow on a CPU)

Writes ``benchmarks/results/icbpl_small[-SUFFIX].json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _kfeatures as kf  # noqa: E402
from _common import print_table, save_result  # noqa: E402

from imgclust import ImageClusterer  # noqa: E402
from imgclust.metrics import cluster_accuracy  # noqa: E402

# The head mode of issue 17 as it was (50 epochs whatever N: one optimiser step per epoch below 512 images).
BEFORE: dict[str, Any] = {"n_views": 0, "epochs": 50, "min_steps": 0, "init": "random"}
# Today's defaults.
AFTER: dict[str, Any] = {"n_views": 0}


def first_per_class(load: Callable[[], tuple[np.ndarray, np.ndarray]], n_classes: int, per_class: int
                    ) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """The first ``per_class`` rows of each of the first ``n_classes`` classes (fixed, not picked)."""
    def subset() -> tuple[np.ndarray, np.ndarray]:
        x, y = load()
        keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(n_classes)])
        return x[keep], y[keep]
    return subset


def two_domains(per_class: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """20 classes: the 10 CIFAR-10 train classes and the 10 Fashion-MNIST train classes, ``per_class`` each."""
    def load() -> tuple[np.ndarray, np.ndarray]:
        xa, ya = first_per_class(kf.cifar10_train, 10, per_class)()
        xb, yb = first_per_class(kf.builtin("builtin:fashion-mnist:train"), 10, per_class)()
        return np.concatenate([xa, xb]), np.concatenate([ya, yb + 10])
    return load


FASHION = kf.builtin("builtin:fashion-mnist:train")
SETS: dict[str, tuple[int, Callable[[], tuple[np.ndarray, np.ndarray]]]] = {
    "cifar-5x60": (5, first_per_class(kf.cifar10_train, 5, 60)),
    "cifar-10x50": (10, first_per_class(kf.cifar10_train, 10, 50)),
    "fashion-10x50": (10, first_per_class(FASHION, 10, 50)),
    "cifar+fashion-20x50": (20, two_domains(50)),
    "digits": (10, kf.builtin("builtin:digits", None)),
    "cifar-10x250": (10, first_per_class(kf.cifar10_train, 10, 250)),
    "cifar-10x1000": (10, lambda: kf.cifar10(1000, split="train")),
}
DEFAULT_SETS = [name for name in SETS if name != "cifar-10x1000"]


def run(x: np.ndarray, y: np.ndarray, k: int, method: str, options: dict[str, Any], seed: int
        ) -> tuple[float, float]:
    started = time.perf_counter()
    est = ImageClusterer(n_clusters=k, method=method, method_options=dict(options), random_state=seed,
                         progress=False).fit(x)
    return cluster_accuracy(y, est.labels_), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", default="kmeans,icbpl-before,icbpl-after")
    parser.add_argument("--name", default="icbpl_small", help="result file benchmarks/results/NAME.json")
    args = parser.parse_args()
    rows_spec = {"kmeans": ("kmeans", {}), "icbpl-before": ("icbpl", BEFORE), "icbpl-after": ("icbpl", AFTER)}
    rows, results = [], []
    for name in args.sets.split(","):
        k, load = SETS[name]
        x, y = load()
        for row in args.rows.split(","):
            method, options = rows_spec[row]
            accs, secs = [], []
            for seed in range(args.seeds):
                acc, sec = run(x, y, k, method, options, seed)
                accs.append(acc)
                secs.append(sec)
                print(f"{name} {row} seed {seed}: ACC {acc:.3f} ({sec:.0f} s)", file=sys.stderr, flush=True)
            results.append({"set": name, "k": k, "n": len(y), "row": row, "method": method, "options": options,
                            "acc": accs, "fit_s": secs})
            rows.append({"set": f"{name} (N={len(y)}, K={k})", "row": row,
                         "ACC mean ± sd": f"{np.mean(accs):.3f} ± {np.std(accs):.3f}",
                         "seeds": " ".join(f"{a:.3f}" for a in accs), "fit s": float(np.mean(secs))})
            print(json.dumps(results[-1]), flush=True)
    table = print_table(rows, ["set", "row", "ACC mean ± sd", "seeds", "fit s"])
    path = save_result(args.name, {"backbone": kf.BACKBONE, "seeds": args.seeds, "results": results,
                                   "table": table, "note": "2 CPU cores shared with other jobs: fit seconds are noisy"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
