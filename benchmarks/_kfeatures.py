"""Features of the labelled sets with a known K used by ``k_estimation.py`` (cached under benchmarks/cache/)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from _common import REPO, require_cifar10

CACHE = REPO / "benchmarks" / "cache" / "features"
PER_CLASS = 300  # 3,000 images for the 10-class sets: a few minutes of extraction on a 2-core CPU
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _extract(dataset, backbone_name: str = "efficientnet_lite0") -> np.ndarray:
    from imgclust.backbones import create_backbone
    from imgclust.features import extract_features

    backbone = create_backbone(backbone_name)
    if hasattr(dataset, "draft_size"):
        dataset.draft_size = backbone.preprocess.input_size
    fs = extract_features(dataset, backbone, cache_dir=CACHE, device="cpu", batch_size=64, progress=True)
    assert len(fs.valid_indices) == len(dataset), fs.skipped
    return np.asarray(fs.features, dtype=np.float32)


def _stratified(labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` rows of each class, in row order (no randomness)."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return np.sort(keep)


def cifar10(per_class: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    from imgclust.data import PathListDataset

    root = require_cifar10()
    paths, labels = [], []
    for c, name in enumerate(CIFAR_CLASSES):
        files = sorted((root / "test" / name).glob("*.jpg"))[:per_class]
        paths += [str(p) for p in files]
        labels += [c] * len(files)
    return _extract(PathListDataset(paths)), np.asarray(labels)


def cifar_subset(n_classes: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """The first ``n_classes`` CIFAR-10 classes in alphabetical order (fixed in advance, not picked)."""
    def load() -> tuple[np.ndarray, np.ndarray]:
        x, y = cifar10()
        keep = y < n_classes
        return x[keep], y[keep]
    return load


def builtin(spec: str, per_class: int | None = PER_CLASS) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        from imgclust.data import load_source

        dataset = load_source(spec)
        labels = np.asarray(dataset.labels)
        if per_class is not None:
            keep = _stratified(labels, per_class)
            dataset, labels = dataset.subset(keep), labels[keep]
        return _extract(dataset), labels
    return load


SETS: dict[str, tuple[int, Callable[[], tuple[np.ndarray, np.ndarray]]]] = {
    "cifar10-3": (3, cifar_subset(3)),
    "cifar10-5": (5, cifar_subset(5)),
    "cifar10": (10, cifar10),
    "fashion-mnist": (10, builtin("builtin:fashion-mnist:test")),
    "digits": (10, builtin("builtin:digits", None)),
}


def load_all() -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    return {name: (k, *load()) for name, (k, load) in SETS.items()}


if __name__ == "__main__":
    import time
    for name, (k, x, y) in load_all().items():
        print(name, k, x.shape, np.bincount(y), time.strftime("%X"))
