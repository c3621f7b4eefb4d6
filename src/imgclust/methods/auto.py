"""``--method auto``: fit a few methods on the same features and keep the partition with the best label-free
score (:func:`imgclust.score.partition_score`, chance-corrected cross-validated linear accuracy).

No method wins everywhere: ICBPL's head mode lost to k-means on small and many-class sets, TURTLE beats
k-means on CIFAR-10 but needs its outer steps set, and a head's partition depends on its seed. A user without
labels cannot tell which run to trust; the score can, because it is computed from each partition alone.

The kept model is the winner's own (its ``method`` names the winner, so a saved run reloads and predicts as a
run of that method would). ``FitResult.info`` holds every candidate's score, fit seconds and cluster sizes
(never a label-based number) under ``candidates``, the winner's name under ``winner`` and the winner's own
info under ``winner_info``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ..errors import ImgclustError
from ..runfolder import CANDIDATE_PREFIX
from ..score import partition_score
from .base import ClusterModel, FitContext, FitResult
from .options import Option, OptionSet
from .registry import available_methods, get_method, register_method

#: Candidates in the order they are fitted; a tie on the score keeps the earlier (k-means: the cheapest).
DEFAULT_CANDIDATES = ("kmeans", "turtle", "icbpl")


def _candidate_options(method: str, n_restarts: int) -> dict[str, Any]:
    """Each candidate's settings: its defaults, network methods in head mode on the clean features."""
    if method == "icbpl":
        return {"trainable_blocks": 0, "n_views": 0, "n_restarts": n_restarts}
    if method == "secu":
        return {"trainable_blocks": 0, "n_views": 0}
    return {}


AUTO_OPTIONS = OptionSet("auto", [
    Option("method", "candidates", list(DEFAULT_CANDIDATES), list[str] | str,
           "methods tried, comma-separated (kmeans, turtle, icbpl, secu); network methods run in head mode"),
    Option("fit", "n_restarts", 3, int, "ICBPL heads (seeds seed..seed+R-1) combined by consensus"),
    Option("method", "score_folds", 5, int, "cross-validation folds of the score"),
    Option("method", "score_samples", 5000, int, "rows scored at most (a seeded random subsample past it)"),
])


def _candidates(value: list[str] | str) -> list[str]:
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    allowed = [m for m in ("kmeans", "turtle", "icbpl", "secu") if m in available_methods()]
    unknown = [n for n in names if n not in allowed]
    if not names or unknown or len(set(names)) != len(names):
        raise ImgclustError(f"auto candidates {names} are not a list of distinct methods among {allowed}",
                            f"e.g. --set candidates={','.join(m for m in DEFAULT_CANDIDATES if m in allowed)}")
    return names


def _auto_input(options: Any) -> str:
    return "backbone"  # every candidate runs on the clean backbone features


@register_method("auto", model=ClusterModel, options=AUTO_OPTIONS, fit_input=_auto_input, whitening="never",
                 summary="fits k-means, TURTLE and ICBPL heads and keeps the partition with the best label-free score")
def fit_auto(context: FitContext) -> FitResult:
    """Registry entry point: every candidate on ``context``; the best by :func:`partition_score` is kept.

    Each candidate writes its checkpoints in ``run_dir/candidate-<method>/`` (so ``resume`` resumes each), and
    every candidate's score uses the same folds and subsample (``context.seed``), so they compare.
    """
    opts = AUTO_OPTIONS.resolve(context.options)
    names = _candidates(opts["method"]["candidates"])
    n_restarts = int(opts["fit"]["n_restarts"])
    if n_restarts < 1:
        raise ImgclustError(f"n_restarts must be >= 1, got {n_restarts}", "use e.g. n_restarts=3")
    results, summaries = [], []
    for name in names:
        options = _candidate_options(name, n_restarts)
        candidate = dataclasses.replace(
            context, options=options,
            run_dir=None if context.run_dir is None else context.run_dir / f"{CANDIDATE_PREFIX}{name}")
        started = time.perf_counter()
        result = get_method(name).fit(candidate)
        fitted = time.perf_counter() - started
        started = time.perf_counter()
        score = partition_score(context.features, result.assignment.labels, spaces=context.spaces,
                                n_folds=int(opts["method"]["score_folds"]), seed=context.seed,
                                max_samples=int(opts["method"]["score_samples"]))
        results.append(result)
        summaries.append({"method": name, "options": options, "score": score.kappa, "score_detail": score.to_dict(),
                          "fit_seconds": fitted, "score_seconds": time.perf_counter() - started,
                          "cluster_sizes": np.bincount(result.assignment.labels,
                                                       minlength=context.n_clusters).tolist()})
    best = int(np.argmax([s["score"] for s in summaries]))  # argmax keeps the first of equal scores
    winner = results[best]
    info = {"winner": names[best], "score": summaries[best]["score"], "candidates": summaries,
            "winner_info": winner.info}
    return FitResult(model=winner.model, assignment=winner.assignment, info=info)


def describe_candidates(info: dict[str, Any]) -> list[str]:
    """One line per candidate of an auto run's ``info`` (for the terminal summary), the winner marked."""
    return [f"{'*' if c['method'] == info['winner'] else ' '} {c['method']:<7} score {c['score']:.3f}  "
            f"fit {c['fit_seconds']:.0f} s" for c in info["candidates"]]
