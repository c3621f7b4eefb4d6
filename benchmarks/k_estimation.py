"""How well does ``imgclust cluster`` without ``-k`` find the true number of classes?

Five labelled sets with a known K, features from the default backbone (efficientnet_lite0, cached under
benchmarks/cache/): CIFAR-10 test (300 per class, 3,000 images), its first 3 and first 5 classes in alphabetical
order (900 / 1,500 images), Fashion-MNIST test (300 per class, 3,000) and scikit-learn's digits (all 1,797).
Every criterion of ``imgclust.kselect`` is computed over K = 2..30 on each set, with seeds 0, 1, 2 (the table
shows the K chosen with seed 0 and, in brackets, the range over the seeds); the labels are used only to score
the estimate. "default s" is the time of the default estimate alone (what `imgclust cluster` without -k adds).
Prints a table and writes benchmarks/results/k_estimation.json.

    .venv/bin/python benchmarks/k_estimation.py [--k-range 2:30] [--sets cifar10-3,digits] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result  # noqa: E402
from _kfeatures import SETS  # noqa: E402

from imgclust.kselect import CRITERIA, DEFAULT_CRITERION, estimate_k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k-range", default="2:30")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0,1,2", help="estimate repeated with each seed (spread reported)")
    args = parser.parse_args()
    seeds = [int(v) for v in args.seeds.split(",")]

    rows, details = [], {}
    choices: dict[str, dict[str, list[int]]] = {}
    for name in args.sets.split(","):
        true_k, load = SETS[name]
        started = time.perf_counter()
        x, y = load()
        feature_seconds = time.perf_counter() - started
        choices[name] = {c: [] for c in CRITERIA}
        runs = []
        for seed in seeds:
            sel = estimate_k(x, k_range=args.k_range, criterion=DEFAULT_CRITERION, seed=seed,
                             extra_criteria="all", progress=True)
            for criterion in CRITERIA:
                choices[name][criterion].append(sel.choice(criterion))
            runs.append(sel.to_dict())
            print(f"{name} seed {seed}: true K={true_k}  "
                  + "  ".join(f"{c}={sel.choice(c)}" for c in CRITERIA) + f"  ({sel.seconds:.1f} s)", flush=True)
        default_only = estimate_k(x, k_range=args.k_range, seed=seeds[0])  # what `imgclust cluster` runs
        row = {"set": name, "images": len(y), "true K": true_k}
        for criterion in CRITERIA:
            got = choices[name][criterion]
            row[criterion] = f"{got[0]}" + (f" ({min(got)}–{max(got)})" if min(got) != max(got) else "")
        row["default s"] = round(default_only.seconds, 1)
        rows.append(row)
        details[name] = {"true_k": true_k, "n_images": int(len(y)), "feature_seconds": round(feature_seconds, 1),
                         "choices_per_seed": choices[name], "seeds": seeds,
                         "default_criterion_seconds": round(default_only.seconds, 2), "runs": runs}

    summary = {}
    n_sets = len(rows)
    for criterion in CRITERIA:
        per_seed_exact = [sum(choices[s][criterion][i] == SETS[s][0] for s in choices) for i in range(len(seeds))]
        per_seed_within = [sum(abs(choices[s][criterion][i] - SETS[s][0]) <= 0.2 * SETS[s][0] for s in choices)
                           for i in range(len(seeds))]
        log_error = float(np.mean([abs(np.log(k / SETS[s][0])) for s in choices for k in choices[s][criterion]]))
        summary[criterion] = {"exact_per_seed": per_seed_exact, "within_20pct_per_seed": per_seed_within,
                              "mean_abs_log_ratio": round(log_error, 3), "n_sets": n_sets}
    rows.append({"set": "exact (per seed)", **{c: "/".join(map(str, summary[c]["exact_per_seed"])) for c in CRITERIA}})
    rows.append({"set": "within ±20 % (per seed)",
                 **{c: "/".join(map(str, summary[c]["within_20pct_per_seed"])) for c in CRITERIA}})
    rows.append({"set": "mean \\|log(K̂/K)\\| (all seeds)",
                 **{c: f"{summary[c]['mean_abs_log_ratio']:.2f}" for c in CRITERIA}})
    print()
    table = print_table(rows, ["set", "images", "true K", *CRITERIA, "default s"])
    path = save_result("k_estimation", {"k_range": args.k_range, "default_criterion": DEFAULT_CRITERION,
                                        "backbone": "efficientnet_lite0", "seeds": seeds, "summary": summary,
                                        "table_markdown": table, "sets": details})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
