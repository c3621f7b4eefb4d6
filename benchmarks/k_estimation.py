"""How well does ``imgclust cluster`` without ``-k`` find the true number of classes?

Five labelled sets with a known K, features from the default backbone (efficientnet_lite0, cached under
benchmarks/cache/): CIFAR-10 test (300 per class, 3,000 images), its first 3 and first 5 classes in alphabetical
order (900 / 1,500 images), Fashion-MNIST test (300 per class, 3,000) and scikit-learn's digits (all 1,797).
Every criterion of ``imgclust.kselect`` is computed over K = 2..30 on each set; the labels are used only to
score the estimate. Prints a table and writes benchmarks/results/k_estimation.json.

    .venv/bin/python benchmarks/k_estimation.py [--k-range 2:30] [--sets cifar10-3,digits]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result  # noqa: E402
from _kfeatures import SETS  # noqa: E402

from imgclust.kselect import CRITERIA, DEFAULT_CRITERION, estimate_k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k-range", default="2:30")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows, details = [], {}
    for name in args.sets.split(","):
        true_k, load = SETS[name]
        started = time.perf_counter()
        x, y = load()
        feature_seconds = time.perf_counter() - started
        sel = estimate_k(x, k_range=args.k_range, criterion=DEFAULT_CRITERION, seed=args.seed,
                         extra_criteria="all", progress=True)
        row = {"set": name, "images": len(y), "true K": true_k}
        for criterion in CRITERIA:
            row[criterion] = sel.choice(criterion)
        row["seconds"] = round(sel.seconds, 1)
        rows.append(row)
        details[name] = {"true_k": true_k, "n_images": int(len(y)), "feature_seconds": round(feature_seconds, 1),
                         **sel.to_dict()}
        print(f"{name}: true K={true_k}  " + "  ".join(f"{c}={row[c]}" for c in CRITERIA)
              + f"  ({sel.seconds:.1f} s)", flush=True)

    summary = {}
    for criterion in CRITERIA:
        exact = sum(r[criterion] == r["true K"] for r in rows)
        within = sum(abs(r[criterion] - r["true K"]) <= 0.2 * r["true K"] for r in rows)
        summary[criterion] = {"exact": exact, "within_20pct": within, "n_sets": len(rows)}
    rows.append({"set": "**exact / within ±20 %**", "images": "", "true K": "",
                 **{c: f"{summary[c]['exact']}/{len(rows)} · {summary[c]['within_20pct']}/{len(rows)}"
                    for c in CRITERIA}})
    print()
    table = print_table(rows, ["set", "images", "true K", *CRITERIA, "seconds"])
    path = save_result("k_estimation", {"k_range": args.k_range, "default_criterion": DEFAULT_CRITERION,
                                        "backbone": "efficientnet_lite0", "summary": summary,
                                        "table_markdown": table, "sets": details})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
