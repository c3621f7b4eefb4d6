"""Shared fixtures. Real data comes from ../shared/data (never copied into the repo).

On a user's clone there is no ../shared: tests that need it skip with a reason. Under CI=true they fail
instead, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMGCLUST_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
CIFAR10_DIR = SHARED_DATA / "cifar10"


def require_shared(path: Path) -> Path:
    """Return ``path`` if it exists; otherwise skip (user clone) or fail (CI)."""
    if path.exists():
        return path
    reason = f"needs {path} (the project's shared data folder, absent on a user's clone)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """Root of the provided CIFAR-10 JPEG copy: ``{train,test}/<class>/NNNN.jpg``."""
    return require_shared(CIFAR10_DIR)


def cifar10_subset_paths(root: Path, split: str, per_class: int, classes: list[str] | None = None
                         ) -> tuple[list[Path], np.ndarray, list[str]]:
    """The first ``per_class`` files of each class folder, in a fixed order, with int labels."""
    class_names = classes or sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        files = sorted((root / split / name).glob("*.jpg"))[:per_class]
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64), class_names


def copy_cifar10_subset(root: Path, split: str, per_class: int, destination: Path) -> Path:
    """Copy the first ``per_class`` images of each class of ``split`` to ``destination/<class>/``."""
    paths, _, _ = cifar10_subset_paths(root, split, per_class)
    for p in paths:
        dst = destination / p.parent.name / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(p.read_bytes())
    return destination


@pytest.fixture
def cifar10_small_folder(tmp_path: Path, cifar10_dir: Path) -> Path:
    """A folder of 20 real CIFAR-10 test images per class (200 in all), linked with class sub-folders."""
    return copy_cifar10_subset(cifar10_dir, "test", 20, tmp_path / "cifar_small")


@pytest.fixture
def single_thread():
    """One intra-op thread (torch and faiss) for tests on tiny tensors: fastest, and immune to a busy machine
    (with 2 threads, OpenMP spin-waits make tiny ops 10-50x slower when the cores are shared)."""
    from imgclust.neighbors import load_faiss

    threads = torch.get_num_threads()
    faiss = load_faiss()
    faiss_threads = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(faiss_threads)


def accuracies_against_kmeans(fitted, x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """ACC of a method's fit (a ``FitResult`` on ``x``) and of k-means fitted on the same ``x`` with the same seed."""
    from imgclust.methods import FitContext, fit_method
    from imgclust.metrics import cluster_accuracy

    kmeans = fit_method("kmeans", FitContext(features=x, n_clusters=int(fitted.model.config()["n_clusters"]),
                                             seed=seed))
    return cluster_accuracy(y, fitted.assignment.labels), cluster_accuracy(y, kmeans.assignment.labels)


@pytest.fixture(scope="session")
def digits_1797() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 digit images (64 pixels each) as float32, and their digits."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y.astype(np.int64)
