"""TURTLE's free choices measured on the development sets only: preprocessing of each space and the number of
outer steps / the label-free stopping rule (docs/methods/turtle.md says what was chosen from this).

Development sets: ``_kfeatures.DEV_SETS`` (class subsets of CIFAR-10 *train* and Fashion-MNIST *train*, K in
2, 4, 6, 7, 8; never the evaluation sets). Each run logs, every ``--check-every`` outer steps, the ACC (labels
used for this table only), the fraction of rows that changed cluster since the previous check (the stopping
rule's signal) and the TURTLE objective; the table gives the mean ACC over the sets at each step and the ACC
where each stopping threshold would have stopped.

    python benchmarks/turtle_dev.py --backbones efficientnet_lite0 --sets cifar10-train
    python benchmarks/turtle_dev.py --backbones efficientnet_lite0,efficientnet_lite2 --sets cifar10-train
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import _kfeatures as kf
from _common import print_table, save_result

THRESHOLDS = (0.005, 0.01, 0.02, 0.05)
OBJECTIVE_THRESHOLDS = (0.001, 0.005, 0.02)


def load_set(name: str, backbones: list[str]) -> tuple[int, np.ndarray, np.ndarray, list[int]]:
    k, load = kf.DEV_SETS[name]
    return (k, *kf.side_by_side(load, backbones))


def run(name: str, k: int, x: np.ndarray, y: np.ndarray, widths: list[int], preprocess: str, seed: int,
        outer_steps: int, check_every: int, extra: dict) -> dict:
    from imgclust.methods.base import FitContext
    from imgclust.methods.turtle import fit_turtle
    from imgclust.metrics import evaluate

    started = time.perf_counter()
    result = fit_turtle(FitContext(features=x, n_clusters=k, seed=seed, labels=y, options=dict(
        preprocess=preprocess, outer_steps=outer_steps, check_every=check_every, spaces=widths, **extra)))
    seconds = time.perf_counter() - started
    curve = [{"step": (h["epoch"] + 1) * max(1, len(x) // min(10000, len(x))), "acc": h.get("acc"),
              "change": h.get("assignment_change"), "objective": h.get("selection_score")}
             for h in result.info["history"] if "selection_score" in h]
    return {"set": name, "k": k, "n": len(x), "preprocess": preprocess, "seed": seed, "seconds": round(seconds, 1),
            "final_acc": float(evaluate(y, result.assignment.labels)["acc"]), "curve": curve}


def stop_step(curve: list[dict], threshold: float) -> dict:
    """The check where the rule ``change < threshold`` fires (the last check if it never does)."""
    for point in curve:
        if point["change"] is not None and point["change"] < threshold:
            return point
    return curve[-1]


def objective_stop(curve: list[dict], threshold: float) -> dict:
    """The check where the objective improved by less than ``threshold`` (relative) since the previous one."""
    for before, point in zip(curve, curve[1:]):
        if (before["objective"] - point["objective"]) < threshold * abs(point["objective"]):
            return point
    return curve[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--sets", default="", help="comma-separated prefixes of DEV_SETS names (default: all)")
    parser.add_argument("--draws", type=int, default=kf.DEV_DRAWS, help="class draws per (domain, K)")
    parser.add_argument("--preprocess", default="raw,center,l2,whiten")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--outer-steps", type=int, default=1000)
    parser.add_argument("--check-every", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="further TURTLE option (e.g. gamma=5), repeatable")
    parser.add_argument("--out", default="turtle_dev")
    args = parser.parse_args()
    backbones = args.backbones.split(",")
    prefixes = [p for p in args.sets.split(",") if p]
    names = [n for n in kf.DEV_SETS if not prefixes or any(n.startswith(p) for p in prefixes)]
    seen: dict[str, int] = {}
    for n in list(names):  # the first --draws class draws of each (domain, K)
        group = n.split(":")[0]
        seen[group] = seen.get(group, 0) + 1
        if seen[group] > args.draws:
            names.remove(n)
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        extra[key] = type(eval(value))(eval(value)) if value[:1].isdigit() or value in ("True", "False") else value

    runs = []
    for name in names:
        k, x, y, widths = load_set(name, backbones)
        for preprocess in args.preprocess.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                r = run(name, k, x, y, widths, preprocess, seed, args.outer_steps, args.check_every, extra)
                runs.append(r)
                print(name, preprocess, seed, f"acc {r['final_acc']:.3f}", f"{r['seconds']}s",
                      [(p["step"], round(p["acc"], 3), None if p["change"] is None else round(p["change"], 3))
                       for p in r["curve"]], flush=True)
                save_result(args.out, {"backbones": backbones, "sets": names, "outer_steps": args.outer_steps,
                                       "check_every": args.check_every, "options": extra, "runs": runs,
                                       "partial": True})  # a stopped run keeps what it finished

    rows = []
    for preprocess in args.preprocess.split(","):
        mine = [r for r in runs if r["preprocess"] == preprocess]
        if not mine:
            continue
        row = {"preprocess": preprocess, "runs": len(mine), "final": float(np.mean([r["final_acc"] for r in mine]))}
        longest = max((r["curve"] for r in mine), key=len)
        for i, point in enumerate(longest):  # a run stopped early keeps its last labels
            row[f"T={point['step']}"] = float(np.mean([r["curve"][min(i, len(r["curve"]) - 1)]["acc"] for r in mine]))
        for threshold in THRESHOLDS:
            stops = [stop_step(r["curve"], threshold) for r in mine]
            row[f"stop<{threshold:g}"] = float(np.mean([s["acc"] for s in stops]))
            row[f"steps<{threshold:g}"] = float(np.mean([s["step"] for s in stops]))
        for threshold in OBJECTIVE_THRESHOLDS:
            stops = [objective_stop(r["curve"], threshold) for r in mine]
            row[f"obj<{threshold:g}"] = float(np.mean([s["acc"] for s in stops]))
            row[f"objsteps<{threshold:g}"] = float(np.mean([s["step"] for s in stops]))
        rows.append(row)
    columns = list(rows[0]) if rows else []
    table = print_table(rows, columns)
    path = save_result(args.out, {"backbones": backbones, "sets": names, "outer_steps": args.outer_steps,
                                  "check_every": args.check_every, "options": extra, "runs": runs,
                                  "summary": rows, "table": table})
    print("wrote", path)


if __name__ == "__main__":
    main()
