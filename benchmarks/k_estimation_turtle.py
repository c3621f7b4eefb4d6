"""Estimating K from TURTLE partitions instead of k-means ones (issue 17 item 6: "TURTLE partitions as the
partitions to score"), on the sets of ``k_estimation.py``.

For every K of the range, TURTLE (``imgclust.methods.turtle``, Lite0 + Lite2 as two spaces, ``--outer-steps``
outer steps) is fitted ``--restarts`` times (seed ``1000 * restart + K``). The partitions are cached under
benchmarks/cache/k_turtle/ (one file per set), since they are the slow part (about 7-10 minutes per set of
1,800-3,000 images on one core). Each K is then scored with the library's default criterion unchanged
(modularity, 60 neighbours, γ 0.85), on the kNN graph of the two L2-normalised spaces concatenated (what
``imgclust cluster --backbone a,b`` estimates K on), averaging the restarts' modularity terms, and also with each
restart alone. Two references use the labels and choose nothing: the K whose TURTLE partitions agree best with
the classes (mean AMI), and the restart stability (ARI between the two restarts). The k-means default on the
same sets is read from ``k_estimation-label-matched.json`` (run ``k_estimation.py dev|eval
--default-criterion-only --label-matched-k --out k_estimation-label-matched`` first).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/k_estimation_turtle.py dev|eval [--sets a,b] [--k-range 2:12]
        [--restarts 2] [--outer-steps 300]

Prints a table and writes its part into benchmarks/results/k_estimation_turtle.json (keeping the other part).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _kfeatures as kf  # noqa: E402
from _common import REPO, RESULTS, git_commit, print_table, save_result  # noqa: E402
from k_estimation import SUMMARY_ROWS, score, summary_cell  # noqa: E402

from imgclust.kselect import (DEFAULT_N_NEIGHBORS, DEFAULT_RESOLUTION, graph_neighbors,  # noqa: E402
                              modularity_terms, parse_k_range, single_threaded)
from imgclust.neighbors import nearest_neighbors  # noqa: E402

BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")
PARTITIONS = REPO / "benchmarks" / "cache" / "k_turtle"


def turtle_partitions(name: str, x: np.ndarray, widths: list[int], ks: list[int], restarts: int,
                      outer_steps: int) -> dict[str, np.ndarray]:
    """TURTLE's partition for every (K, restart), from the cache when it holds exactly these settings."""
    import torch

    from imgclust.methods.base import FitContext
    from imgclust.methods.turtle import fit_turtle

    path = PARTITIONS / f"{name}.npz"
    if path.exists():
        cached = dict(np.load(path))
        if (sorted(set(cached["k"].tolist())) == ks and int(cached["restart"].max()) + 1 == restarts
                and int(cached["outer_steps"]) == outer_steps and len(cached["labels"][0]) == len(x)):
            return cached
    torch.set_num_threads(1)
    out: dict[str, list] = {"labels": [], "k": [], "restart": [], "seconds": []}
    for k in ks:
        for restart in range(restarts):
            started = time.perf_counter()
            result = fit_turtle(FitContext(features=x, n_clusters=k, seed=1000 * restart + k,
                                           options=dict(outer_steps=outer_steps, spaces=widths)))
            out["labels"].append(np.asarray(result.assignment.labels, dtype=np.int16))
            out["k"].append(k)
            out["restart"].append(restart)
            out["seconds"].append(time.perf_counter() - started)
        print(f"{name}: K={k} fitted", flush=True)
    arrays = {key: np.asarray(value) for key, value in out.items()}
    arrays["outer_steps"] = np.asarray(outer_steps)
    PARTITIONS.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def k_of_best(ks: list[int], values: list[float]) -> int:
    return int(ks[int(np.argmax(values))])


def evaluate_set(name: str, true_k: int, load, ks: list[int], restarts: int, outer_steps: int) -> dict:
    x, y, widths = kf.side_by_side(load, list(BACKBONES))
    partitions = turtle_partitions(name, x, widths, ks, restarts, outer_steps)
    unit = kf.unit_concat(kf.split_spaces(x, widths))
    graph = nearest_neighbors(unit, graph_neighbors(DEFAULT_N_NEIGHBORS, len(unit))).indices
    modularity_each = np.zeros((restarts, len(ks)))  # restart x K; Q is linear in the terms, so means commute
    agreement, stability = [], []
    for column, k in enumerate(ks):
        labels = [partitions["labels"][i] for i in np.flatnonzero(partitions["k"] == k)]
        for restart, lab in enumerate(labels):
            intra, expected = modularity_terms(graph, lab)
            modularity_each[restart, column] = intra - DEFAULT_RESOLUTION * expected
        agreement.append(float(np.mean([adjusted_mutual_info_score(y, lab) for lab in labels])))
        stability.append(float(adjusted_rand_score(labels[0], labels[1])) if len(labels) > 1 else float("nan"))
    modularity_mean = modularity_each.mean(axis=0).tolist()
    return {"true_k": true_k, "n_images": int(len(y)), "k_values": ks,
            "turtle_modularity": k_of_best(ks, modularity_mean),
            "turtle_modularity_per_restart": [k_of_best(ks, m) for m in modularity_each],
            "label_matched_k": k_of_best(ks, agreement),
            "curves": {"modularity": modularity_mean, "modularity_per_restart": modularity_each.tolist(),
                       "ami_with_classes": agreement, "restart_ari": stability},
            "turtle_seconds": round(float(np.sum(partitions["seconds"])), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("dev", "eval"))
    parser.add_argument("--sets", default=None, help="comma-separated subset of the part's sets")
    parser.add_argument("--k-range", default="2:12")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--outer-steps", type=int, default=300)
    args = parser.parse_args()
    all_sets = kf.DEV_SETS if args.part == "dev" else kf.SETS
    sets = {name: all_sets[name] for name in (args.sets.split(",") if args.sets else all_sets)}
    low, high = parse_k_range(args.k_range)
    ks = list(range(low, high + 1))
    kmeans_part = json.loads((RESULTS / "k_estimation-label-matched.json").read_text())[
        "dev" if args.part == "dev" else "evaluation"]["sets"]

    details, rows = {}, []
    with single_threaded():
        for name, (true_k, load) in sets.items():
            got = evaluate_set(name, true_k, load, ks, args.restarts, args.outer_steps)
            got["kmeans_default"] = kmeans_part[name]["choices_per_seed"]["modularity"]
            details[name] = got
            rows.append({"set": name, "images": got["n_images"], "true K": true_k,
                         "k-means (default)": " / ".join(map(str, got["kmeans_default"])),
                         "TURTLE, restarts averaged": got["turtle_modularity"],
                         "TURTLE, each restart": " / ".join(map(str, got["turtle_modularity_per_restart"])),
                         "K the labels pick (TURTLE)": got["label_matched_k"],
                         "TURTLE s": got["turtle_seconds"]})
            print(rows[-1], flush=True)
    true_k = {name: sets[name][0] for name in details}
    summary = {
        "kmeans_default": score({s: d["kmeans_default"] for s, d in details.items()}, true_k, 3),
        "turtle_modularity": score({s: [d["turtle_modularity"]] for s, d in details.items()}, true_k, 1),
        "turtle_modularity_per_restart": score({s: d["turtle_modularity_per_restart"] for s, d in details.items()},
                                               true_k, args.restarts),
        "label_matched_k": score({s: [d["label_matched_k"]] for s, d in details.items()}, true_k, 1)}
    columns = {"k-means (default)": "kmeans_default", "TURTLE, restarts averaged": "turtle_modularity",
               "TURTLE, each restart": "turtle_modularity_per_restart",
               "K the labels pick (TURTLE)": "label_matched_k"}
    for label in SUMMARY_ROWS:
        rows.append({"set": label, **{column: summary_cell(label, summary[key]) for column, key in columns.items()}})
    print()
    table = print_table(rows, ["set", "images", "true K", *columns, "TURTLE s"])
    path = RESULTS / "k_estimation_turtle.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    parts = {key: kept[key] for key in ("dev", "evaluation") if key in kept}
    parts["evaluation" if args.part == "eval" else "dev"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit(), "k_range": args.k_range,
        "restarts": args.restarts, "outer_steps": args.outer_steps, "summary": summary, "table_markdown": table,
        "sets": details}
    criterion = {"name": "modularity", "n_neighbors": DEFAULT_N_NEIGHBORS, "resolution": DEFAULT_RESOLUTION}
    written = save_result("k_estimation_turtle", {"backbones": list(BACKBONES), "criterion": criterion, **parts})
    print(f"\nwritten {written}")


if __name__ == "__main__":
    main()
