"""umap-kmeans (or ``--method pacmap-kmeans``) against k-means on the development sets (never the evaluation
sets): ACC, label-free score, seconds.

Development sets: ``_kfeatures.DEV_SETS`` (class subsets of CIFAR-10 *train* and Fashion-MNIST *train*, K = 2, 4,
6, 7, 8) and ``cifar10-train-10k`` (TURTLE's 10-class development split). Both methods run with the library's
defaults through ``fit_method``; each partition is scored as ``--method auto`` scores it, and the column
"auto(k-means, umap-kmeans)" is what ``--method auto --set candidates=kmeans,umap-kmeans`` keeps.
Results: ``benchmarks/results/umap_kmeans_dev_<backbones>.json`` (``pacmap_kmeans_dev_...`` with ``--method
pacmap-kmeans``; ``--out`` to write elsewhere).

    OMP_NUM_THREADS=1 python benchmarks/umap_kmeans_dev.py --backbones efficientnet_lite0
    OMP_NUM_THREADS=1 python benchmarks/umap_kmeans_dev.py --method pacmap-kmeans --sets dev,cifar10-train-10k
    OMP_NUM_THREADS=1 python benchmarks/umap_kmeans_dev.py --backbones efficientnet_lite0,efficientnet_lite2 \\
        --sets cifar10-train-10k --part 10k   # runs can be split into parts, then merged with --merge
    OMP_NUM_THREADS=1 python benchmarks/umap_kmeans_dev.py --set n_neighbors=100 --set restarts=3 --out NAME
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import _kfeatures as kf
from _common import RESULTS, print_table, save_result

LAYOUT_METHODS = ("umap-kmeans", "pacmap-kmeans", "umap-pacmap-kmeans")


def fit_and_score(name: str, backbones: list[str], seeds: list[int], method: str = "umap-kmeans",
                  layout_options: dict | None = None) -> list[dict]:
    from imgclust.methods import FitContext, fit_method
    from imgclust.metrics import cluster_accuracy
    from imgclust.score import partition_score

    k, load = (10, kf.cifar10_train_10k) if name == kf.TRAIN_10K else kf.DEV_SETS[name]
    features, y, spaces = kf.library_features(load, backbones)
    records = []
    for seed in seeds:
        record = {"set": name, "k": k, "n": len(y), "seed": seed}
        for fitted in ("kmeans", method):
            started = time.perf_counter()
            options = dict(layout_options or {}) if fitted == method else {}
            result = fit_method(fitted, FitContext(features=features, n_clusters=k, seed=seed, spaces=spaces,
                                                   options=options))
            seconds = time.perf_counter() - started
            labels = result.assignment.labels
            record[fitted] = {"acc": cluster_accuracy(y, labels), "seconds": round(seconds, 1),
                              "score": partition_score(features, labels, spaces=spaces, seed=seed).kappa,
                              **{key: value for key, value in result.info.items() if key in
                                 ("moved_by_readout", "readout_kept", "restart_scores", "restart_kept",
                                  "layout_agreement")}}
        print(name, seed, " ".join(f"{m} {record[m]['acc']:.3f} (score {record[m]['score']:.3f}, "
                                    f"{record[m]['seconds']:.0f} s)" for m in ("kmeans", method)), flush=True)
        records.append(record)
    return records


def summary(records: list[dict], method: str = "umap-kmeans") -> list[dict]:
    """Per set, means over seeds; the auto column keeps the higher-scored partition of each run (tie: k-means)."""
    rows = []
    auto_column = f"auto(k-means, {method})"
    for name in dict.fromkeys(r["set"] for r in records):
        runs = [r for r in records if r["set"] == name]
        auto = [r[method if r[method]["score"] > r["kmeans"]["score"] else "kmeans"]["acc"] for r in runs]
        rows.append({"set": name, "K": runs[0]["k"], "seeds": len(runs),
                     "k-means": float(np.mean([r["kmeans"]["acc"] for r in runs])),
                     method: float(np.mean([r[method]["acc"] for r in runs])),
                     auto_column: float(np.mean(auto)),
                     f"{method} s": float(np.mean([r[method]["seconds"] for r in runs]))})
    for row in rows:
        row["gain"] = row[method] - row["k-means"]
    mean = {"set": "mean", **{c: float(np.mean([r[c] for r in rows])) for c in
                              ("k-means", method, auto_column, "gain")}}
    return rows + [mean]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--method", default="umap-kmeans", choices=LAYOUT_METHODS)
    parser.add_argument("--sets", default="dev", help="comma-separated set names; 'dev' = the 20 class subsets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--part", default=None, help="write a part (merged later with --merge)")
    parser.add_argument("--merge", default=None, help="comma-separated parts to merge into the result")
    parser.add_argument("--out", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of --method other than its default (e.g. restarts=3); repeatable")
    args = parser.parse_args()
    from imgclust.cli import method_options

    layout_options = method_options(args.set)
    backbones = args.backbones.split(",")
    tag = "_".join(b.replace("efficientnet_", "") for b in backbones)
    out = args.out or f"{args.method.replace('-', '_')}_dev_{tag}"
    if args.merge:
        records = [r for part in args.merge.split(",")
                   for r in json.loads((RESULTS / f"{out}_part_{part}.json").read_text())["runs"]]
    else:
        names = [n for spec in args.sets.split(",") for n in (kf.DEV_SETS if spec == "dev" else [spec])]
        seeds = [int(s) for s in args.seeds.split(",")]
        records = [r for name in names for r in fit_and_score(name, backbones, seeds, args.method, layout_options)]
    rows = summary(records, args.method)
    table = print_table(rows, ["set", "K", "seeds", "k-means", args.method, "gain", f"auto(k-means, {args.method})",
                               f"{args.method} s"])
    name = f"{out}_part_{args.part}" if args.part else out
    path = save_result(name, {"backbones": backbones, "method": args.method, "options": layout_options,
                              "runs": records, "summary": rows, "table": table})
    print("wrote", path)


if __name__ == "__main__":
    main()
