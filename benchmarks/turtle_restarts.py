"""Restarts for TURTLE: is the best of R runs, kept by a label-free criterion, better and steadier than one run?

Two criteria, both label-free: the TURTLE objective (``TurtleModel.objective``: the runs with seeds s..s+R-1 all
judged on the rows and inner draws of seed s, the lowest kept, as k-means keeps its lowest-inertia init) and the
library's partition score (``imgclust.score``, as ``--method auto`` compares candidates; the highest kept). The
benchmark fits single runs with the library's defaults, seeds 0..S+R-2, records each run's objective under every
judging seed that can use it, and derives the R-run result for seeds 0..S-1 from them (R-1 fewer fits per seed
than fitting each R-run anew). Each single run is cached under benchmarks/cache/turtle_restarts/ (partition,
scores, objectives).

Sets: ``cifar10-train-10k`` (development: CIFAR-10 *train* rows 1,000-1,999 of every class, fitted and scored
on the same images, as in ``turtle_variants.py``) and the sets of ``quality_table.py`` (evaluation: only for a
setting chosen on development data). Features: Lite0+Lite2 as the library hands them over (``--spaces``).

    OMP_NUM_THREADS=1 python benchmarks/turtle_restarts.py --set cifar10-train-10k --runs 0,2,4   # one process
    OMP_NUM_THREADS=1 python benchmarks/turtle_restarts.py --set cifar10-train-10k --runs 1,3     # another
    python benchmarks/turtle_restarts.py --set cifar10-train-10k --seeds 0,1,2 --restarts 3        # the table
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

import _kfeatures as kf
import quality_table as qt
from _common import REPO, print_table, save_result

from imgclust.methods import FitContext, fit_method

RUNS = REPO / "benchmarks" / "cache" / "turtle_restarts"


def load(set_name: str, spaces_name: str) -> tuple[int, qt.Split, qt.Split | None]:
    if set_name == kf.TRAIN_10K:
        return 10, qt.load_split(kf.cifar10_train_10k, spaces_name), None
    k, load_fit, load_test = qt.SETS[set_name]
    return k, qt.load_split(load_fit, spaces_name), None if load_test is None else qt.load_split(load_test,
                                                                                                   spaces_name)


def single_run(set_name: str, spaces_name: str, k: int, fit: qt.Split, test: qt.Split | None, seed: int,
               judges: list[int]) -> dict[str, Any]:
    """One TURTLE run (cached) with its objective judged as a restart fit with each seed of ``judges`` would."""
    path = RUNS / f"{set_name}-{spaces_name.replace('+', '_')}-s{seed}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if all(str(j) in cached["objective"] for j in judges):
            return cached
    started = time.perf_counter()
    result = fit_method("turtle", FitContext(features=fit[0], n_clusters=k, seed=seed, spaces=fit[2]))
    seconds = time.perf_counter() - started
    labels = result.assignment.labels
    scored_labels = labels if test is None else result.model.assign(test[0]).labels
    record = {"seed": seed, "fit_s": seconds, "outer_steps": result.info["outer_steps_done"],
              "objective": {str(j): result.model.objective(fit[0], seed=j) for j in judges},
              "fit": qt._scored(fit[1], labels),
              "scored": qt._scored((fit if test is None else test)[1], scored_labels),
              "labels": labels.tolist()}
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default=kf.TRAIN_10K, help=f"{kf.TRAIN_10K} or a set of quality_table.py")
    parser.add_argument("--spaces", default="Lite0+Lite2", choices=sorted(qt.BACKBONES))
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the R-restart fits (s uses runs s..s+R-1)")
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--runs", default="", help="fit only these single-run seeds (for several processes)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    run_seeds = sorted({s + r for s in seeds for r in range(args.restarts)})
    k, fit, test = load(args.set, args.spaces)
    runs = {}
    for r in ([int(s) for s in args.runs.split(",")] if args.runs else run_seeds):
        judges = [s for s in seeds if s <= r < s + args.restarts]
        runs[r] = single_run(args.set, args.spaces, k, fit, test, r, judges)
        print(f"{args.set} seed {r}: ACC {runs[r]['scored']['acc']:.4f} objective {runs[r]['objective']} "
              f"{runs[r]['fit_s']:.0f} s", time.strftime("%X"), flush=True)
    if args.runs:
        return
    for r, run in runs.items():  # the partition score of each run, as auto computes it (seed = the run's)
        run["score"] = qt.score(fit, np.asarray(run["labels"]), r)
    picks: dict[str, list[dict[str, Any]]] = {"objective": [], "score": []}
    for s in seeds:
        members = [runs[s + r] for r in range(args.restarts)]
        for criterion, best in (("objective", int(np.argmin([m["objective"][str(s)] for m in members]))),
                                ("score", int(np.argmax([m["score"] for m in members])))):
            picks[criterion].append({"seed": s, "chosen_run": s + best, "scored": members[best]["scored"],
                                     "fit_s": sum(m["fit_s"] for m in members)})
    rows = []
    for name, rs in (("1 run", [runs[s] for s in seeds]),
                     *((f"best of {args.restarts} by {c}", picks[c]) for c in picks)):
        accs = np.array([r["scored"]["acc"] for r in rs])
        rows.append({"set": args.set, "TURTLE": name, "ACC": float(accs.mean()), "sd": float(accs.std(ddof=1)),
                     "per seed": " / ".join(f"{a:.3f}" for a in accs),
                     "NMI": float(np.mean([r["scored"]["nmi"] for r in rs])),
                     "fit s": float(np.mean([r["fit_s"] for r in rs]))})
    table = print_table(rows, ["set", "TURTLE", "ACC", "sd", "per seed", "NMI", "fit s"])
    out = args.out or f"turtle_restarts_{args.set}"
    print(json.dumps({"wrote": str(save_result(out, {
        "set": args.set, "spaces": args.spaces, "seeds": seeds, "restarts": args.restarts, "summary": rows,
        "chosen": picks, "runs": [{k_: v for k_, v in runs[r].items() if k_ != "labels"} for r in run_seeds],
        "table": table}))}))


if __name__ == "__main__":
    main()
