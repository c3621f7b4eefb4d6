"""How well does ``imgclust cluster`` without ``-k`` find the true number of classes?

Two parts, on two disjoint groups of labelled sets (``_kfeatures.py``; features from the default backbone
efficientnet_lite0, cached under benchmarks/cache/):

- ``dev``: the **development** sets — class subsets (K = 2, 4, 6, 7, 8; two class draws each) of CIFAR-10
  *train* and Fashion-MNIST *train*, 300 images per class. Every criterion of ``imgclust.kselect`` with its
  defaults, and a grid of graph sizes × resolutions of the ``modularity`` criterion (the same k-means runs as
  ``estimate_k``, scored on each graph). The default setting of ``imgclust.kselect`` was chosen here.
- ``eval``: the **evaluation** sets of the issue — CIFAR-10 *test* (300 per class, 3,000 images), its first 3
  and first 5 classes in alphabetical order (900 / 1,500), Fashion-MNIST *test* (300 per class, 3,000) and
  scikit-learn's digits (all 1,797) — scored with the chosen defaults only (nothing is tuned on them).

Each part repeats the estimate with seeds 0, 1, 2 over K = 2..30; labels are used only to score the estimate.
"default s" is the time of the default estimate alone (what `imgclust cluster` without -k adds); "true K on
profile" is the range of resolutions γ over which modularity chooses the true K (seed 0; "—": at none). Prints the
tables and writes its part into benchmarks/results/k_estimation.json (keeping the other part).

``--label-matched-k`` adds a reference that uses the labels: the K whose k-means partitions (the same runs as
``estimate_k``) agree best with the classes (mean adjusted mutual information). It chooses nothing; it shows
where the class structure sits among the partitions every criterion scores. When it is not the true K, the
features group the images otherwise than the classes do, and a label-free criterion that picks the true K
there would be picking a partition that matches the classes less well than another K's.

    .venv/bin/python benchmarks/k_estimation.py dev|eval [--k-range 2:30] [--sets a,b] [--seeds 0,1,2]
        [--backbone efficientnet_lite2 | efficientnet_lite0,efficientnet_lite2] [--no-grid]
        [--default-criterion-only] [--label-matched-k] [--out NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, git_commit, print_table, save_result  # noqa: E402
import _kfeatures  # noqa: E402
from _kfeatures import DEV_SETS, SETS  # noqa: E402

from imgclust.kselect import (CRITERIA, DEFAULT_CRITERION, DEFAULT_N_NEIGHBORS, DEFAULT_RESOLUTION,  # noqa: E402
                              estimate_k, graph_neighbors, k_values, kmeans_runs, modularity, parse_k_range,
                              resolution_range_text, single_threaded)
from imgclust.neighbors import nearest_neighbors, normalize_features  # noqa: E402
from sklearn.metrics import adjusted_mutual_info_score  # noqa: E402

GRID_NEIGHBORS = (10, 30, 40, 50, 60, 80)
GRID_RESOLUTIONS = tuple(round(v, 2) for v in np.arange(0.6, 1.201, 0.05))

Sets = dict[str, tuple[int, Callable[[], tuple[np.ndarray, np.ndarray]]]]


def score(choices: dict[str, list[int]], true_k: dict[str, int], n_seeds: int) -> dict[str, object]:
    """Exact and within-±20 % counts per seed and mean |log(K̂/K)| of ``choices`` (set → K per seed)."""
    exact = [sum(choices[s][i] == true_k[s] for s in choices) for i in range(n_seeds)]
    within = [sum(abs(choices[s][i] - true_k[s]) <= 0.2 * true_k[s] for s in choices) for i in range(n_seeds)]
    log_error = float(np.mean([abs(np.log(k / true_k[s])) for s in choices for k in choices[s]]))
    return {"exact_per_seed": exact, "within_20pct_per_seed": within, "mean_abs_log_ratio": round(log_error, 3),
            "n_sets": len(choices)}


def compare_criteria(sets: Sets, seeds: list[int], k_range: str, criteria: tuple[str, ...] = CRITERIA
                     ) -> tuple[list[dict], dict, dict]:
    """Each of ``criteria`` with the defaults on every set and seed: table rows, per-set details, summary."""
    rows, details = [], {}
    choices: dict[str, dict[str, list[int]]] = {}
    for name, (true_k, load) in sets.items():
        started = time.perf_counter()
        x, y = load()
        feature_seconds = time.perf_counter() - started
        choices[name] = {c: [] for c in criteria}
        runs, selections = [], []
        for seed in seeds:
            sel = estimate_k(x, k_range=k_range, criterion=DEFAULT_CRITERION, seed=seed,
                             extra_criteria=criteria, progress=True)
            for criterion in criteria:
                choices[name][criterion].append(sel.choice(criterion))
            runs.append(sel.to_dict())
            selections.append(sel)
            print(f"{name} seed {seed}: true K={true_k}  "
                  + "  ".join(f"{c}={sel.choice(c)}" for c in criteria) + f"  ({sel.seconds:.1f} s)", flush=True)
        # what `imgclust cluster` runs, timed alone (the first run is it already when no other criterion ran)
        default_only = (selections[0] if criteria == (DEFAULT_CRITERION,)
                        else estimate_k(x, k_range=k_range, seed=seeds[0]))
        assert default_only.k == choices[name][DEFAULT_CRITERION][0]
        row = {"set": name, "images": len(y), "true K": true_k}
        for criterion in criteria:
            got = choices[name][criterion]
            row[criterion] = choice_cell(got)
        row["default s"] = round(default_only.seconds, 1)
        # Where the true K is a level of the resolution profile (seed 0), if it is one at all.
        levels = [step for step in runs[0]["resolution_profile"] if step["k"] == true_k]
        row["true K on profile"] = ", ".join(f"γ {resolution_range_text(step)}" for step in levels) or "—"
        rows.append(row)
        details[name] = {"true_k": true_k, "n_images": int(len(y)), "feature_seconds": round(feature_seconds, 1),
                         "choices_per_seed": choices[name], "seeds": seeds,
                         "default_criterion_seconds": round(default_only.seconds, 2), "runs": runs}
    true_k = {name: sets[name][0] for name in choices}
    summary = {c: score({s: choices[s][c] for s in choices}, true_k, len(seeds)) for c in criteria}
    for label in SUMMARY_ROWS:
        rows.append({"set": label, **{c: summary_cell(label, summary[c]) for c in criteria}})
    return rows, details, summary


def choice_cell(got: list[int]) -> str:
    """Seed 0's K, with the range over seeds in brackets when it moved."""
    return f"{got[0]}" + (f" ({min(got)}–{max(got)})" if min(got) != max(got) else "")


SUMMARY_ROWS = ("exact (per seed)", "within ±20 % (per seed)", "mean \\|log(K̂/K)\\| (all seeds)")


def summary_cell(label: str, summary: dict) -> str:
    """The cell of summary row ``label`` (one of :data:`SUMMARY_ROWS`) for one criterion's :func:`score`."""
    if label == SUMMARY_ROWS[0]:
        return "/".join(map(str, summary["exact_per_seed"]))
    if label == SUMMARY_ROWS[1]:
        return "/".join(map(str, summary["within_20pct_per_seed"]))
    return f"{summary['mean_abs_log_ratio']:.2f}"


def label_matched_k(sets: Sets, seeds: list[int], k_range: str) -> dict[str, dict]:
    """Per set and seed, the K of the range whose k-means runs (those of ``estimate_k``) have the highest mean
    AMI with the labels, and that AMI beside the AMI at the true K: a reference, not a criterion."""
    low, high = parse_k_range(k_range)
    out = {}
    for name, (true_k, load) in sets.items():
        features, labels = load()
        x = normalize_features(features)
        ks = k_values((low, high), len(x))
        chosen, best_ami, true_ami = [], [], []
        with single_threaded():
            for seed in seeds:
                ami = [float(np.mean([adjusted_mutual_info_score(labels, run.labels)
                                      for run in kmeans_runs(x, k, seed, n_runs=5, n_init=1)])) for k in ks]
                chosen.append(ks[int(np.argmax(ami))])
                best_ami.append(round(max(ami), 3))
                true_ami.append(round(ami[ks.index(true_k)], 3) if true_k in ks else None)
        out[name] = {"choices_per_seed": chosen, "best_ami_per_seed": best_ami, "true_k_ami_per_seed": true_ami}
        print(f"label-matched K: {name} true {true_k} -> {chosen} (AMI {best_ami}, at the true K {true_ami})",
              flush=True)
    return out


def modularity_grid(sets: Sets, seeds: list[int], k_range: str) -> dict[str, dict]:
    """The K the ``modularity`` criterion chooses for every (neighbours, resolution) of the grid.

    The k-means runs are those of ``estimate_k`` (same seeds, ``kmeans_runs``); only the graph and γ vary, so
    a cell equals ``estimate_k(x, n_neighbors=…, resolution=…)`` without re-running k-means per cell.
    """
    low, high = parse_k_range(k_range)
    choices: dict[tuple[int, float], dict[str, list[int]]] = {}
    for name, (true_k, load) in sets.items():
        x = normalize_features(load()[0])
        ks = k_values((low, high), len(x))
        with single_threaded():
            graph = nearest_neighbors(x, graph_neighbors(max(GRID_NEIGHBORS), len(x))).indices
            for seed in seeds:
                curves = np.zeros((len(GRID_NEIGHBORS), len(GRID_RESOLUTIONS), len(ks)))
                for i, k in enumerate(ks):
                    labels = [run.labels for run in kmeans_runs(x, k, seed, n_runs=5, n_init=1)]
                    for a, n_neighbors in enumerate(GRID_NEIGHBORS):
                        g = graph[:, :graph_neighbors(n_neighbors, len(x))]
                        for b, resolution in enumerate(GRID_RESOLUTIONS):
                            curves[a, b, i] = np.mean([modularity(g, lab, resolution) for lab in labels])
                for a, n_neighbors in enumerate(GRID_NEIGHBORS):
                    for b, resolution in enumerate(GRID_RESOLUTIONS):
                        cell = choices.setdefault((n_neighbors, resolution), {})
                        cell.setdefault(name, []).append(ks[int(np.argmax(curves[a, b]))])
        print(f"grid: {name} done", flush=True)
    true_k = {name: sets[name][0] for name in sets}
    return {f"{n_neighbors}/{resolution}": {"n_neighbors": n_neighbors, "resolution": resolution,
                                           "choices_per_seed": cell, **score(cell, true_k, len(seeds))}
            for (n_neighbors, resolution), cell in choices.items()}


def grid_tables(grid: dict[str, dict]) -> str:
    """Two markdown tables (neighbours × resolution): mean |log(K̂/K)|, then within-±20 % / exact totals."""
    header = "| neighbours | " + " | ".join(f"γ={r:g}" for r in GRID_RESOLUTIONS) + " |"
    rule = "|---" * (len(GRID_RESOLUTIONS) + 1) + "|"
    tables = []
    for what in ("log", "counts"):
        lines = [header, rule]
        for n_neighbors in GRID_NEIGHBORS:
            cells = []
            for resolution in GRID_RESOLUTIONS:
                c = grid[f"{n_neighbors}/{resolution}"]
                cells.append(f"{c['mean_abs_log_ratio']:.2f}" if what == "log" else
                             f"{sum(c['within_20pct_per_seed'])}/{sum(c['exact_per_seed'])}")
            lines.append(f"| {n_neighbors} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("dev", "eval"))
    parser.add_argument("--k-range", default="2:30")
    parser.add_argument("--sets", default=None, help="comma-separated subset of the part's sets")
    parser.add_argument("--seeds", default="0,1,2", help="estimate repeated with each seed (spread reported)")
    parser.add_argument("--backbone", default=_kfeatures.BACKBONE,
                        help="features from this backbone, or a comma-separated list (each space L2-normalised, "
                             "concatenated, as `imgclust cluster --backbone a,b`); the estimator's setting is not "
                             "changed; results of other backbones go to k_estimation-A+B.json")
    parser.add_argument("--default-criterion-only", action="store_true",
                        help=f"only the default criterion ({DEFAULT_CRITERION}): minutes instead of an hour")
    parser.add_argument("--label-matched-k", action="store_true",
                        help="add the K whose k-means partitions best match the labels (a reference, not a criterion)")
    parser.add_argument("--out", default=None,
                        help="results file name (default k_estimation, or k_estimation-A+B for other backbones)")
    parser.add_argument("--no-grid", action="store_true",
                        help="dev: skip the neighbours x resolution grid (the defaults' choices only)")
    args = parser.parse_args()
    _kfeatures.BACKBONE = args.backbone
    seeds = [int(v) for v in args.seeds.split(",")]
    all_sets = DEV_SETS if args.part == "dev" else SETS
    sets = {name: all_sets[name] for name in (args.sets.split(",") if args.sets else all_sets)}

    criteria = (DEFAULT_CRITERION,) if args.default_criterion_only else CRITERIA
    rows, details, summary = compare_criteria(sets, seeds, args.k_range, criteria)
    columns = ["set", "images", "true K", *criteria, "default s", "true K on profile"]
    matched = label_matched_k(sets, seeds, args.k_range) if args.label_matched_k else None
    if matched is not None:
        true_k = {name: sets[name][0] for name in sets}
        summary["label_matched_k"] = score({s: matched[s]["choices_per_seed"] for s in matched}, true_k, len(seeds))
        for row in rows:
            if row["set"] in matched:
                row["label-matched K"] = choice_cell(matched[row["set"]]["choices_per_seed"])
            else:
                row["label-matched K"] = summary_cell(row["set"], summary["label_matched_k"])
        columns.append("label-matched K")
    print()
    table = print_table(rows, columns)
    part = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit(), "k_range": args.k_range,
            "seeds": seeds, "summary": summary, "table_markdown": table, "sets": details}
    if matched is not None:
        part["label_matched_k"] = matched
    if args.part == "dev" and not args.no_grid:
        part["modularity_grid"] = modularity_grid(sets, seeds, args.k_range)
        part["modularity_grid_markdown"] = grid_tables(part["modularity_grid"])
        print("\nmodularity: mean |log(K̂/K)|, then within ±20 % / exact (summed over sets and seeds)\n")
        print(part["modularity_grid_markdown"])
        default_cell = part["modularity_grid"].get(f"{DEFAULT_N_NEIGHBORS}/{DEFAULT_RESOLUTION}")
        if default_cell and DEFAULT_CRITERION == "modularity":  # the grid must reproduce estimate_k
            same = all(default_cell["choices_per_seed"][s] == details[s]["choices_per_seed"]["modularity"]
                       for s in details)
            print(f"grid cell of the default reproduces estimate_k: {same}")
            part["grid_reproduces_estimate_k"] = same

    name = args.out or ("k_estimation" if args.backbone == _kfeatures.DEFAULT_BACKBONE
                        else f"k_estimation-{args.backbone.replace(',', '+')}")
    previous = RESULTS / f"{name}.json"
    kept = json.loads(previous.read_text()) if previous.exists() else {}
    parts = {key: kept[key] for key in ("dev", "evaluation") if key in kept}
    parts["evaluation" if args.part == "eval" else "dev"] = part
    path = save_result(name, {
        "default": {"criterion": DEFAULT_CRITERION, "n_neighbors": DEFAULT_N_NEIGHBORS,
                    "resolution": DEFAULT_RESOLUTION},
        "backbone": args.backbone, **parts})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
