"""Cluster names on CIFAR-10: how many k-means clusters get a name on their majority class's WordNet branch.

A name counts as right when its synset is the majority class's synset (fixed mapping below, written before any
run), one of its hyponyms, or its direct parent: for cat (n02121620), "tabby" or "feline" count, "carnivore"
does not. CIFAR-10 "deer" has no ImageNet-1k class below it, so only its parent "ruminant" can be right.

The threshold ``min_mass`` (:data:`imgclust.naming.DEFAULT_MIN_MASS`) is chosen on CIFAR-10 *train* (300 images
per class; k-means with K=10 over several seeds, and the CIFAR-10 class subsets of the development sets): the
value naming the most clusters with a majority of at least 60 % right (ties: the larger, more cautious value).
CIFAR-10 *test* (300 per class, K=10, seed 0) is then scored once with the library default.

Usage: python benchmarks/naming.py    (features cached under benchmarks/cache/ by _kfeatures.py)
Writes benchmarks/results/naming.json.
"""

from __future__ import annotations

import argparse

import numpy as np

import _kfeatures as kf
from _common import print_table, save_result

from imgclust.backbones import create_backbone
from imgclust.methods.kmeans import kmeans
from imgclust.naming import DEFAULT_MIN_MASS, class_probabilities, imagenet_hierarchy, name_clusters

# CIFAR-10 class -> (WordNet 3.0 synset of that class, its direct hypernyms), from WordNet before any run.
TARGETS = {
    "airplane": ("n02691156", ("n03510583",)),               # airplane; heavier-than-air craft
    "automobile": ("n02958343", ("n03791235",)),             # car; motor vehicle
    "bird": ("n01503061", ("n01471682",)),                   # bird; vertebrate
    "cat": ("n02121620", ("n02120997",)),                    # cat; feline
    "deer": ("n02430045", ("n02399000",)),                   # deer; ruminant
    "dog": ("n02084071", ("n02083346", "n01317541")),        # dog; canine, domestic animal
    "frog": ("n01639765", ("n01627424",)),                   # frog; amphibian
    "horse": ("n02374451", ("n02374149",)),                  # horse; equine
    "ship": ("n04194289", ("n04530566",)),                   # ship; vessel
    "truck": ("n04490091", ("n03791235",)),                  # truck; motor vehicle
}
MIN_PURITY = 0.6
GRID = tuple(round(x, 2) for x in np.arange(0.3, 0.951, 0.05))
TRAIN_SEEDS = (0, 1, 2)


def name_is_right(wnid: str, class_name: str) -> bool:
    target, parents = TARGETS[class_name]
    return wnid == target or wnid in parents or target in imagenet_hierarchy().ancestors(wnid)


def score_clusters(probabilities: np.ndarray, labels_true: np.ndarray, labels_pred: np.ndarray,
                   class_names: list[str], min_mass: float) -> list[dict]:
    names = name_clusters(probabilities, labels_pred, min_mass=min_mass)
    rows = []
    for n in names:
        members = labels_true[labels_pred == n.cluster]
        counts = np.bincount(members, minlength=len(class_names))
        majority = class_names[int(counts.argmax())]
        rows.append({"cluster": n.cluster, "size": n.size, "majority": majority,
                     "purity": round(float(counts.max() / max(n.size, 1)), 3), "name": n.name, "synset": n.synset,
                     "mass": n.mass, "right": name_is_right(n.synset, majority) if n.synset else False})
    return rows


def tally(rows: list[dict]) -> tuple[int, int]:
    """(right among clusters with purity >= 60 %, how many such clusters)."""
    pure = [r for r in rows if r["purity"] >= MIN_PURITY]
    return sum(r["right"] for r in pure), len(pure)


def development_clusterings(x: np.ndarray, y: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, row indices, k-means labels) of the CIFAR-10 train clusterings used to choose min_mass."""
    out = [(f"train-10:seed{s}", np.arange(len(y)), kmeans(x, 10, seed=s).labels) for s in TRAIN_SEEDS]
    for name in kf.DEV_SETS:
        if name.startswith("cifar10-train-"):
            classes = [int(c) for c in name.split(":")[1]]
            rows = np.flatnonzero(np.isin(y, classes))
            out.append((name, rows, kmeans(x[rows], len(classes), seed=0).labels))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibrate-only", action="store_true", help="stop after choosing min_mass on train")
    args = parser.parse_args()
    head = create_backbone(kf.BACKBONE).class_head()
    classes = kf.CIFAR_CLASSES
    x_train, y_train = kf.cifar10_train()
    p_train = class_probabilities(x_train, head)
    dev = development_clusterings(x_train, y_train)
    choice = []
    for min_mass in GRID:
        right = total = 0
        for _, rows, labels in dev:
            r, t = tally(score_clusters(p_train[rows], y_train[rows], labels, classes, min_mass))
            right, total = right + r, total + t
        choice.append({"min_mass": min_mass, "right": right, "clusters_purity_ge_60": total})
    print("choice of min_mass on CIFAR-10 train (k-means clusterings: "
          f"{', '.join(n for n, _, _ in dev)})")
    print_table(choice, ["min_mass", "right", "clusters_purity_ge_60"])
    best = max(choice, key=lambda c: (c["right"], c["min_mass"]))["min_mass"]
    if best != DEFAULT_MIN_MASS:
        print(f"NOTE: the train choice {best} differs from the library default {DEFAULT_MIN_MASS}")
    if args.calibrate_only:
        return

    x_test, y_test = kf.cifar10()
    p_test = class_probabilities(x_test, head)
    labels = kmeans(x_test, 10, seed=0).labels
    rows = score_clusters(p_test, y_test, labels, classes, DEFAULT_MIN_MASS)
    right, total = tally(rows)
    print(f"\nCIFAR-10 test ({len(y_test)} images), k-means K=10 seed 0, min_mass={DEFAULT_MIN_MASS}: "
          f"{right}/{total} clusters with purity >= {MIN_PURITY} named right "
          f"({sum(r['right'] for r in rows)}/10 overall)")
    table = print_table(sorted(rows, key=lambda r: -r["purity"]),
                        ["cluster", "size", "majority", "purity", "name", "synset", "mass", "right"])
    save_result("naming", {
        "backbone": kf.BACKBONE, "min_mass": DEFAULT_MIN_MASS, "train_choice": best, "train_grid": choice,
        "test": {"images": int(len(y_test)), "per_class": kf.PER_CLASS, "k": 10, "seed": 0,
                 "right_among_purity_ge_60": right, "clusters_purity_ge_60": total,
                 "right_overall": int(sum(r["right"] for r in rows)), "clusters": rows},
        "targets": {k: {"synset": v[0], "parents": list(v[1])} for k, v in TARGETS.items()},
        "table": table})


if __name__ == "__main__":
    main()
