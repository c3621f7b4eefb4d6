"""TURTLE on CIFAR-10 (issue 17's target): fit on the first ``--per-class`` train images of every class, assign the
first ``--test-per-class`` test images with the fitted model, score ACC/NMI/ARI there. Rows: k-means and TURTLE
(``--methods`` adds umap-kmeans, pacmap-kmeans, umap-pacmap-kmeans) with EfficientNet-Lite0, and with Lite0 + Lite2
as two spaces (k-means and the layout methods: the concatenation of the L2-normalised spaces); three seeds, mean ± sd,
fit seconds.
Every method runs with the library's defaults (TURTLE's chosen on the development sets by ``turtle_dev.py``, never
here).

    python benchmarks/turtle_cifar.py                       # the issue's setting: 10,000 train / 10,000 test
    python benchmarks/turtle_cifar.py --per-class 300 --test-per-class 300
    python benchmarks/turtle_cifar.py --per-class 5000 --test-per-class 1000 --rows Lite0+Lite2 \
        --out turtle_cifar_full_Lite0_Lite2                # the full split: 50,000 train / 10,000 test
    # one (row, seed) per process, then one table from the parts:
    python benchmarks/turtle_cifar.py --rows Lite0 --seeds 0 --out turtle_cifar_part_lite0_0 ...
    python benchmarks/turtle_cifar.py --merge turtle_cifar_part_lite0_0 turtle_cifar_part_lite0_1 ...

Features come from the shared cache (``benchmarks/cache/features``), extracted on first use.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import _kfeatures as kf
from _common import RESULTS, print_table, save_result

ROWS = {"Lite0": ["efficientnet_lite0"], "Lite0+Lite2": ["efficientnet_lite0", "efficientnet_lite2"]}


def features(backbones: list[str], split: str, per_class: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    return kf.side_by_side(lambda: kf.cifar10(per_class, split), backbones)


def scores(y: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from imgclust.metrics import evaluate

    result = evaluate(y, labels)
    return {k: float(result[k]) for k in ("acc", "nmi", "ari")}


TARGETS = {"Lite0+Lite2 turtle test ACC mean": 0.60, "sd": 0.02, "fit seconds": 600}


def summarise(runs: list[dict]) -> list[dict]:
    """Mean ± sd over seeds of every (features, method)."""
    rows = []
    for row in dict.fromkeys(r["row"] for r in runs):
        for method in dict.fromkeys(r["method"] for r in runs):
            mine = [r for r in runs if r["row"] == row and r["method"] == method]
            if not mine:
                continue
            accs = np.array([r["test"]["acc"] for r in mine])
            rows.append({"features": row, "method": method, "seeds": len(mine), "test ACC mean": float(accs.mean()),
                         "sd": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                         "test NMI": float(np.mean([r["test"]["nmi"] for r in mine])),
                         "train ACC": float(np.mean([r["train"]["acc"] for r in mine])),
                         "fit s": float(np.mean([r["fit_seconds"] for r in mine])),
                         "outer steps": float(np.mean([r.get("outer_steps_done", 0) for r in mine]))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=1000, help="train images per class (fit)")
    parser.add_argument("--test-per-class", type=int, default=1000, help="test images per class (scored)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--methods", default="kmeans,turtle", help="of kmeans, turtle, umap-kmeans, pacmap-kmeans, umap-pacmap-kmeans")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="TURTLE option other than the default (recorded), repeatable")
    parser.add_argument("--out", default="turtle_cifar", help="result name (benchmarks/results/NAME.json)")
    parser.add_argument("--merge", nargs="+", metavar="NAME",
                        help="build the table from these result files' runs instead of running")
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads((RESULTS / f"{name}.json").read_text()) for name in args.merge]
        runs = [run for part in parts for run in part["runs"]]
        rows = summarise(runs)
        table = print_table(rows, list(rows[0]))
        first = parts[0]
        path = save_result(args.out, {"per_class": first["per_class"], "test_per_class": first["test_per_class"],
                                      "seeds": sorted({r["seed"] for r in runs}), "options": first["options"],
                                      "merged_from": args.merge, "part_machines": [p["machine"] for p in parts],
                                      "rows": rows, "runs": runs, "table": table, "targets": TARGETS})
        print("wrote", path)
        return

    from imgclust.methods import fit_method
    from imgclust.methods.base import FitContext
    from imgclust.methods.kmeans import KMeansModel, kmeans
    from imgclust.methods.turtle import fit_turtle

    options = {}
    for item in args.set:
        key, value = item.split("=", 1)
        options[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []

    def save(**extra: Any) -> Path:
        return save_result(args.out, {"per_class": args.per_class, "test_per_class": args.test_per_class,
                                      "seeds": seeds, "options": options, "rows": summarise(runs), "runs": runs,
                                      "targets": TARGETS, **extra})

    for row in args.rows.split(","):
        backbones = ROWS[row]
        train_x, train_y, widths = features(backbones, "train", args.per_class)
        test_x, test_y, _ = features(backbones, "test", args.test_per_class)
        # the spaces as k-means and umap-kmeans get them from the library (TURTLE takes them apart)
        train_unit, test_unit = (kf.unit_concat(kf.split_spaces(x, widths)) for x in (train_x, test_x))
        for method in args.methods.split(","):
            for seed in seeds:
                started = time.perf_counter()
                if method == "kmeans":
                    fitted = kmeans(train_unit, 10, seed=seed)
                    seconds = time.perf_counter() - started
                    test_labels = KMeansModel(fitted.centers).assign(test_unit).labels
                    train_labels, info = fitted.labels, {}
                elif method.endswith("-kmeans"):  # the layout methods, with the library's defaults, on the
                    # spaces as the library combines them
                    result = fit_method(method, FitContext(features=train_unit, n_clusters=10, seed=seed))
                    seconds = time.perf_counter() - started
                    test_labels = result.model.assign(test_unit).labels
                    train_labels, info = result.assignment.labels, {method.replace("-", "_"): result.info}
                else:
                    result = fit_turtle(FitContext(features=train_x, n_clusters=10, seed=seed,
                                                   options={"spaces": widths, **options}))
                    seconds = time.perf_counter() - started
                    test_labels = result.model.assign(test_x).labels
                    train_labels = result.assignment.labels
                    info = {"outer_steps_done": result.info["outer_steps_done"],
                            "stopped_early": result.info["stopped_early"],
                            "config": result.info["config"]}
                run = {"row": row, "method": method, "seed": seed, "fit_seconds": round(seconds, 1),
                       "train": scores(train_y, train_labels), "test": scores(test_y, test_labels), **info}
                runs.append(run)
                print(row, method, seed, f"test acc {run['test']['acc']:.3f}", f"train acc {run['train']['acc']:.3f}",
                      f"{seconds:.0f}s", info.get("outer_steps_done", ""), flush=True)
                save(partial=True)  # after every run: a long run stopped early still leaves the finished ones
    rows = summarise(runs)
    print("wrote", save(table=print_table(rows, list(rows[0]))))


if __name__ == "__main__":
    main()
