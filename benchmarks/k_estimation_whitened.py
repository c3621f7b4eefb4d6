"""K estimated as a whitened run estimates it, on the evaluation sets of ``k_estimation.py``.

A run whose features are whitened (the default method, k-means) fits the whitening first and estimates K on the
whitened features with UMAP-layout partitions (``estimate_k(..., partitions="umap")``, γ 0.75; session 35, chosen
on the development sets: BENCHMARKS.md, "Estimating K"). This script does exactly that on each evaluation set's
images (``imgclust.features.whitening.fit_whitening`` on the set itself: its 4 augmented views of up to 1,000
rows are cached under benchmarks/cache/ like the features), seeds 0, 1, 2, and scores the choice as
``k_estimation.py eval`` scores the raw-feature default, which it prints beside it from
``results/k_estimation.json``. Labels are used only to score.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/k_estimation_whitened.py [--sets cifar10-3,digits] [--out NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, print_table, save_result  # noqa: E402
import _kfeatures as kf  # noqa: E402
from k_estimation import score  # noqa: E402

from imgclust.data import PathListDataset  # noqa: E402
from imgclust.features import FeatureSource  # noqa: E402
from imgclust.features.views import extract_clean  # noqa: E402
from imgclust.features.whitening import fit_whitening, whiten  # noqa: E402
from imgclust.kselect import estimate_k  # noqa: E402

SEEDS = (0, 1, 2)


def images(name: str) -> tuple[Any, int]:
    """The images of an evaluation set of ``_kfeatures.SETS`` (the same rows its features come from) and K."""
    true_k = kf.SETS[name][0]
    if name.startswith("cifar10"):
        return PathListDataset(kf.cifar10_paths(kf.PER_CLASS, "test", n_classes=true_k)[0]), true_k
    spec, per_class = {"fashion-mnist": ("builtin:fashion-mnist:test", kf.PER_CLASS),
                       "digits": ("builtin:digits", None)}[name]
    return kf.builtin_subset(spec, per_class)[0], true_k


def run_set(name: str) -> dict[str, Any]:
    dataset, true_k = images(name)
    source = FeatureSource.from_names("efficientnet_lite0", cache_dir=kf.CACHE, device="cpu", batch_size=64)
    started = time.perf_counter()
    clean = extract_clean(source, dataset)
    spaces = [(0, clean.shape[1])]
    whitened = whiten(clean, spaces, fit_whitening(source, dataset, clean, spaces))
    whitening_seconds = time.perf_counter() - started
    runs = []
    for seed in SEEDS:
        selection = estimate_k(whitened, seed=seed, partitions="umap")
        runs.append({"seed": seed, "k": selection.k, "seconds": round(selection.seconds, 1),
                     "settings": selection.settings, "k_values": selection.k_values,
                     "intra": selection.curves["modularity_intra"],
                     "expected": selection.curves["modularity_expected"]})
        print(f"{name} seed {seed}: K = {selection.k} ({selection.seconds:.1f} s)", flush=True)
    return {"true_k": true_k, "images": len(dataset), "whitening_seconds": round(whitening_seconds, 1),
            "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default=",".join(kf.SETS), help="comma-separated evaluation sets")
    parser.add_argument("--out", default="k_estimation_whitened", help="results file name (without .json)")
    args = parser.parse_args()
    per_set = {name: run_set(name) for name in args.sets.split(",")}
    chosen = {name: [r["k"] for r in v["runs"]] for name, v in per_set.items()}
    summary = score(chosen, {name: v["true_k"] for name, v in per_set.items()}, len(SEEDS))
    raw_path = RESULTS / "k_estimation.json"
    raw = json.loads(raw_path.read_text()).get("evaluation", {}) if raw_path.exists() else {}
    raw_choices = {name: detail["choices_per_seed"]["modularity"] for name, detail in raw.get("sets", {}).items()}
    rows = [{"set": name, "true K": v["true_k"], "images": v["images"],
             "whitened + UMAP partitions (seeds 0/1/2)": " / ".join(map(str, chosen[name])),
             "raw + k-means partitions (k_estimation.json)": " / ".join(map(str, raw_choices.get(name) or ["–"])),
             "whitening s": v["whitening_seconds"],
             "estimate s": round(float(np.mean([r["seconds"] for r in v["runs"]])), 1)}
            for name, v in per_set.items()]
    table = print_table(rows, list(rows[0]))
    print(f"exact per seed {summary['exact_per_seed']}, within ±20 % {summary['within_20pct_per_seed']}, "
          f"mean |log(K̂/K)| {summary['mean_abs_log_ratio']}")
    path = save_result(args.out, {"sets": per_set, "summary": summary, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
