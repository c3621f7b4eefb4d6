"""Ideas for TURTLE that are not library options, measured against the library's TURTLE on development data only
(issue 17: a steadier, better TURTLE on 10 classes). Variants:

- ``default``: the library's TURTLE (``preprocess=auto``, cold start, 1,000 steps).
- ``warm_start``: the authors' ``--warm_start`` (a library option).
- ``kmeans_init``: the task encoder starts at the k-means partition: each space's head is the nearest-centroid
  classifier of the spherical k-means clusters (W_k = a mu_k, b_k = -a |mu_k|^2 / 2, a scaling the logits to unit
  spread per row), so that TURTLE starts from k-means' labels instead of a random labeling.
- ``umap_init``: the same, from the partition of ``umap-kmeans`` (the default method) on the same spaces.
- ``umap_space<norm>``: the UMAP embedding ``umap-kmeans`` clusters in (10 dimensions) as one more TURTLE space,
  centred and scaled to a mean row norm of ``norm`` (16, the library's ``l2`` row norm, when omitted): TURTLE then
  looks for labelings that are linear both in the backbones' spaces and in the embedding of their neighbour graph.
- ``pca<d>``: each space (after the library's preprocessing) centred and projected on its top d principal axes,
  to cut the inner loop's cost (it is a chain of skinny matrix products linear in the width).
- ``lr<value>``: the task encoder's Adam learning rate (``train.lr``, default 1e-3), e.g. ``lr3e-3``: the authors
  run 6,000 outer steps at 1e-3, the CPU budget allows about 1,000, and on 10 classes the partition still moves
  at the cap.
- ``gamma<value>``: the entropy weight (``method.gamma``, the authors' 10), e.g. ``gamma5``, ``gamma20``.
- ``inner_lr<value>``, ``inner_steps<value>``: the inner classifiers' Adam learning rate and number of steps
  (``method.inner_lr``, ``method.inner_steps``; the authors' 1e-3 and 10), e.g. ``inner_lr3e-4``, ``inner_steps20``.

``--trace-score`` keeps the partition at every check (100 outer steps) and gives each its label-free score
(``imgclust.score.partition_score``, as ``auto`` computes it): does the score find the best point of a run?

Sets: ``cifar10-train-10k`` (CIFAR-10 *train* rows 1,000-1,999 of every class: K = 10 and N = 10,000 like the
evaluation target, other images than its fit rows 0-999 and never the test split) and the prefixes of
``_kfeatures.DEV_SETS``. Runs are written as they finish (``results/<out>.json``).

    OMP_NUM_THREADS=1 python benchmarks/turtle_variants.py --sets cifar10-train-10k --variants default,kmeans_init
    OMP_NUM_THREADS=1 python benchmarks/turtle_variants.py --sets cifar10-train-6 --variants default,pca256
    OMP_NUM_THREADS=1 python benchmarks/turtle_variants.py --variants lr3e-3 --seeds 0,1,2 --out turtle_variants_lr
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import numpy as np
import torch

import _kfeatures as kf
from _common import print_table, save_result
from turtle_dev import load_set

BACKBONES = "efficientnet_lite0,efficientnet_lite2"


def load(name: str, backbones: list[str]) -> tuple[str, int, np.ndarray, np.ndarray, list[int]]:
    if name == kf.TRAIN_10K:
        return (name, 10, *kf.side_by_side(kf.cifar10_train_10k, backbones))
    full = next(n for n in kf.DEV_SETS if n.startswith(name))
    return (full, *load_set(full, backbones))


def preprocessed_spaces(x: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """Each space as the library's TURTLE sees it (``preprocess=auto``)."""
    from imgclust.methods.turtle import fit_preprocessors, normalize_spaces

    spaces = normalize_spaces(widths, x.shape[1])
    return [p.apply(x[:, a:b]) for p, (a, b) in zip(fit_preprocessors(x, spaces), spaces)]


def pca_spaces(x: np.ndarray, widths: list[int], dim: int) -> tuple[np.ndarray, list[int]]:
    """The library's preprocessing of each space (``auto``), then centred and projected on its top ``dim`` axes."""
    out = []
    for z in preprocessed_spaces(x, widths):
        z = z.astype(np.float64)
        z -= z.mean(0)
        _, vectors = np.linalg.eigh(z.T @ z)
        out.append((z @ vectors[:, ::-1][:, :dim]).astype(np.float32))
    return np.concatenate(out, axis=1), [dim] * len(widths)


def partition_init_turtle(x: np.ndarray, widths: list[int], k: int, labels: np.ndarray) -> type:
    """A ``Turtle`` whose heads start as the nearest-centroid classifier of the partition ``labels``."""
    from imgclust.methods import turtle

    spaces = turtle.normalize_spaces(widths, x.shape[1])
    labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    z = torch.from_numpy(np.concatenate(preprocessed_spaces(x, widths), 1)).double()

    class PartitionInitTurtle(turtle.Turtle):
        def build_model(self, spec):
            net = super().build_model(spec)
            with torch.no_grad():
                for head, (a, b) in zip(net.heads, spaces):
                    means = torch.stack([z[labels == c, a:b].mean(0) for c in range(k)])
                    bias = -(means * means).sum(1) / 2
                    scale = 1.0 / float((z[:, a:b] @ means.T + bias).std(1).mean())
                    head.direction.copy_(means * scale)
                    head.scale.copy_((means * scale).norm(dim=1, keepdim=True))
                    head.bias.copy_(bias * scale)
            return net

    return PartitionInitTurtle


def umap_embedding(x: np.ndarray, widths: list[int], seed: int) -> np.ndarray:
    """The embedding ``umap-kmeans`` clusters in, with its default settings, of the spaces as a run combines them."""
    import umap

    from imgclust.methods.umap_kmeans import UMAP_KMEANS_OPTIONS
    from imgclust.neighbors import normalize_features

    defaults = UMAP_KMEANS_OPTIONS.resolve({})["method"]
    return umap.UMAP(n_neighbors=defaults["n_neighbors"], n_components=defaults["n_components"],
                     min_dist=defaults["min_dist"], metric="cosine", random_state=seed, n_jobs=1
                     ).fit_transform(normalize_features(kf.unit_concat(kf.split_spaces(x, widths)))).astype(np.float32)


def with_umap_space(x: np.ndarray, widths: list[int], seed: int, row_norm: float) -> tuple[np.ndarray, list[int]]:
    """The library's preprocessing of each space, plus the UMAP embedding as one more space (centred, scaled to a
    mean row norm of ``row_norm``), for a TURTLE run with ``preprocess=raw``."""
    embedding = umap_embedding(x, widths, seed)
    embedding -= embedding.mean(0)
    embedding *= row_norm / float(np.linalg.norm(embedding, axis=1).mean())
    return np.concatenate([*preprocessed_spaces(x, widths), embedding], axis=1), [*widths, embedding.shape[1]]


def traced(method_class: type, partitions: list[np.ndarray]) -> type:
    """``method_class`` that also keeps the partition of every check in ``partitions``."""

    class Traced(method_class):
        def on_epoch_end(self, model, epoch, ctx):
            out = super().on_epoch_end(model, epoch, ctx)
            if out is not None:
                partitions.append(self.checked_labels.numpy().copy())
            return out

    return Traced


def run(variant: str, name: str, k: int, x: np.ndarray, y: np.ndarray, widths: list[int], seed: int,
        outer_steps: int, trace_score: bool = False) -> dict:
    from imgclust.methods import turtle
    from imgclust.methods.base import FitContext
    from imgclust.metrics import evaluate

    options: dict = {"outer_steps": outer_steps, "stop_change": 0, "spaces": widths}
    method_class = turtle.Turtle
    if variant == "warm_start":
        options["warm_start"] = True
    elif variant == "kmeans_init":
        from imgclust.methods.kmeans import kmeans

        unit = kf.unit_concat(kf.split_spaces(x, widths))
        method_class = partition_init_turtle(x, widths, k, kmeans(unit, k, seed=seed).labels)
    elif variant == "umap_init":
        from imgclust.methods.umap_kmeans import umap_kmeans

        unit = kf.unit_concat(kf.split_spaces(x, widths))
        model, _ = umap_kmeans(unit, k, seed=seed)
        method_class = partition_init_turtle(x, widths, k, model.assign(unit).labels)
    elif variant.startswith("umap_space"):
        x, options["spaces"] = with_umap_space(x, widths, seed, float(variant[len("umap_space"):] or 16))
        options["preprocess"] = "raw"
    elif variant.startswith("pca"):
        x, options["spaces"] = pca_spaces(x, widths, int(variant[3:]))
        options["preprocess"] = "raw"
    elif variant.startswith("lr"):
        options["lr"] = float(variant[2:])
    elif variant.startswith("gamma"):
        options["gamma"] = float(variant[5:])
    elif variant.startswith("inner_lr"):
        options["inner_lr"] = float(variant[len("inner_lr"):])
    elif variant.startswith("inner_steps"):
        options["inner_steps"] = int(variant[len("inner_steps"):])
    elif variant != "default":
        raise SystemExit(f"unknown variant {variant}")
    partitions: list[np.ndarray] = []
    if trace_score:
        method_class = traced(method_class, partitions)
    started = time.perf_counter()
    with mock.patch.object(turtle, "Turtle", method_class):
        result = turtle.fit_turtle(FitContext(features=x, n_clusters=k, seed=seed, labels=y, options=options))
    seconds = round(time.perf_counter() - started, 1)
    curve = [{"step": h["epoch"] + 1, "acc": h.get("acc"), "change": h.get("assignment_change"),
              "objective": h["selection_score"]} for h in result.info["history"] if "selection_score" in h]
    if trace_score:
        from imgclust.score import partition_score

        spaces = turtle.normalize_spaces(widths, x.shape[1])
        assert len(partitions) == len(curve), "one kept partition per logged check"
        for point, labels in zip(curve, partitions):
            point["score"] = partition_score(x, labels, spaces=spaces, seed=seed).kappa
    return {"variant": variant, "set": name, "k": k, "n": len(x), "seed": seed,
            "seconds": seconds,
            "final_acc": float(evaluate(y, result.assignment.labels)["acc"]), "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=kf.TRAIN_10K, help=f"{kf.TRAIN_10K} and/or prefixes of DEV_SETS names")
    parser.add_argument("--variants", default="default,warm_start,kmeans_init,pca256")
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--outer-steps", type=int, default=1000)
    parser.add_argument("--trace-score", action="store_true", help="score the partition at every check")
    parser.add_argument("--out", default="turtle_variants")
    args = parser.parse_args()
    backbones = args.backbones.split(",")
    runs = []
    for set_name in args.sets.split(","):
        name, k, x, y, widths = load(set_name, backbones)
        for variant in args.variants.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                r = run(variant, name, k, x, y, widths, seed, args.outer_steps, args.trace_score)
                runs.append(r)
                print(variant, name, seed, f"acc {r['final_acc']:.4f}", f"{r['seconds']} s", flush=True)
                save_result(args.out, {"backbones": backbones, "runs": runs, "partial": True})
    rows = [{"variant": v, "set": s, "seeds": len(mine), "final ACC": float(np.mean([r["final_acc"] for r in mine])),
             "per seed": " / ".join(f"{r['final_acc']:.3f}" for r in mine),
             "s per run": float(np.mean([r["seconds"] for r in mine]))}
            for v in dict.fromkeys(r["variant"] for r in runs) for s in dict.fromkeys(r["set"] for r in runs)
            if (mine := [r for r in runs if r["variant"] == v and r["set"] == s])]
    table = print_table(rows, ["variant", "set", "seeds", "final ACC", "per seed", "s per run"])
    print(json.dumps({"wrote": str(save_result(args.out, {"backbones": backbones, "runs": runs, "summary": rows,
                                                           "table": table}))}))


if __name__ == "__main__":
    main()
