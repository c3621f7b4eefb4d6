"""Exact k-nearest neighbours by cosine similarity, without ever holding an N×N similarity matrix.

Two interchangeable backends give the same neighbours (up to the order of exact ties):

- ``"faiss"``: ``faiss.IndexFlatIP`` (exact inner-product search, CPU) on L2-normalised rows.
- ``"torch"``: chunked ``torch.mm`` of ``chunk_size`` queries against all N rows, then ``torch.topk``; memory
  O(chunk_size × N), on any torch device (CPU or an accelerator the caller names).

``backend="auto"`` picks faiss when it is importable and the work is on the CPU, torch otherwise.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import ImgclustError

BACKENDS = ("auto", "faiss", "torch")


class Neighbors(NamedTuple):
    """The k nearest neighbours of each of N rows, most similar first.

    Attributes:
        indices: (N, k) int64 row indices of the neighbours.
        similarities: (N, k) float32 cosine similarities to them, non-increasing along each row.
    """

    indices: np.ndarray
    similarities: np.ndarray


def load_faiss() -> ModuleType | None:
    """Return the faiss module, or None when it is not installed (it is an optional dependency)."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


def _check_rows(n_bad: int, first_bad: int, n_zero: int, first_zero: int, n: int) -> None:
    """Raise ImgclustError if some feature rows are non-finite or all-zero (cosine is undefined for both)."""
    if n_bad:
        raise ImgclustError(f"features contain NaN or inf in {n_bad} of {n} rows (first: row {first_bad}).",
                            fix="re-extract the features (the cache may be corrupt), or drop those rows.")
    if n_zero:
        raise ImgclustError(f"features have {n_zero} all-zero rows of {n} (first: row {first_zero}); their cosine "
                            "similarity is undefined.",
                            fix="drop those rows (they usually come from blank or unreadable images).")


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise ImgclustError(f"features must be a non-empty 2-D (N, D) array; got shape {tuple(shape)}.",
                            fix="pass one feature row per image.")


def normalize_features(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate features and scale every row to unit L2 norm.

    Args:
        features: (N, D) float array or tensor (any device; it is copied to host memory).

    Returns:
        (N, D) float32 C-contiguous array with unit-norm rows (a new array; the input is not modified).

    Raises:
        ImgclustError: wrong shape, NaN/inf values or all-zero rows (the message counts them).
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.array(features, dtype=np.float32, order="C", copy=True)  # also copies read-only memmaps
    _check_shape(x.shape)
    bad = ~np.isfinite(x).all(axis=1)
    # Accumulate in float64 so that large but finite values do not overflow to inf; bad rows give NaN norms.
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    zero = norms == 0
    _check_rows(int(bad.sum()), int(bad.argmax()), int(zero.sum()), int(zero.argmax()), x.shape[0])
    x /= norms[:, None]
    return x


def _normalize_tensor(features: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Like :func:`normalize_features` but returns a float32 tensor on ``device``.

    A tensor is normalised where it lies (no round-trip through host memory); an array on the host first.
    """
    if not isinstance(features, torch.Tensor):
        return torch.from_numpy(normalize_features(features)).to(device)
    x = features.detach().to(device=device, dtype=torch.float32)
    _check_shape(tuple(x.shape))
    bad = ~torch.isfinite(x).all(dim=1)
    norms = torch.linalg.vector_norm(x, dim=1)
    zero = norms == 0
    _check_rows(int(bad.sum()), int(bad.int().argmax()), int(zero.sum()), int(zero.int().argmax()), x.shape[0])
    return x / norms[:, None]


def _torch_search(x: torch.Tensor, k: int, chunk_size: int, exclude_self: bool) -> Neighbors:
    """Top-k by chunked matmul: each step holds one (chunk_size, N) block of similarities."""
    n = x.shape[0]
    indices = np.empty((n, k), dtype=np.int64)
    similarities = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = torch.mm(x[start:stop], x.T)
        if exclude_self:
            # Mask the query's own column rather than dropping the top hit: with duplicate rows the top hit
            # may be a twin, which is a genuine neighbour.
            rows = torch.arange(stop - start, device=x.device)
            sims[rows, rows + start] = -torch.inf
        top_sims, top_idx = torch.topk(sims, k, dim=1)
        indices[start:stop] = top_idx.cpu().numpy()
        similarities[start:stop] = top_sims.cpu().numpy()
    return Neighbors(indices, similarities)


def _faiss_search(faiss: ModuleType, x: np.ndarray, k: int, chunk_size: int, exclude_self: bool) -> Neighbors:
    """Exact search with IndexFlatIP; with ``exclude_self`` asks for k+1 hits and removes the query's own row."""
    n, d = x.shape
    index = faiss.IndexFlatIP(d)
    index.add(x)
    n_hits = k + 1 if exclude_self else k
    indices = np.empty((n, k), dtype=np.int64)
    similarities = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims, idx = index.search(x[start:stop], n_hits)
        if exclude_self:
            # Drop the query's own index wherever it is among the hits (exact duplicates may outrank it); if
            # k+1 duplicates crowd it out entirely, drop the last hit instead.
            drop = idx == np.arange(start, stop)[:, None]
            drop[~drop.any(axis=1), -1] = True
            keep = ~drop
            sims, idx = sims[keep].reshape(-1, k), idx[keep].reshape(-1, k)
        indices[start:stop] = idx
        similarities[start:stop] = sims
    return Neighbors(indices, similarities)


def nearest_neighbors(features: np.ndarray | torch.Tensor, k: int, backend: str = "auto", chunk_size: int = 1024,
                      device: str | torch.device | None = None, exclude_self: bool = True) -> Neighbors:
    """Exact top-k cosine neighbours of every row among all rows.

    Rows are L2-normalised inside (a copy; the input is untouched), so raw features can be passed.

    Args:
        features: (N, D) float numpy array (memory-mapped is fine) or torch tensor.
        k: neighbours per row; at most N-1 (N if ``exclude_self`` is False).
        backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (see module docstring).
        chunk_size: queries per step; the torch backend's peak extra memory is chunk_size × N × 4 bytes
            (1024 × 50,000 rows ≈ 200 MB).
        device: torch backend only: where to compute. Default: the tensor's device, or CPU for numpy input.
            The faiss backend always runs on the CPU.
        exclude_self: leave each row's own index out of its neighbours. Exact duplicates of a row are kept
            (they are other images).

    Returns:
        :class:`Neighbors` with (N, k) int64 ``indices`` and float32 ``similarities``, most similar first.

    Raises:
        ImgclustError: bad k, chunk_size or backend; faiss requested but not installed; bad feature values.
    """
    if backend not in BACKENDS:
        raise ImgclustError(f"unknown neighbour backend {backend!r}.", fix=f"use one of {', '.join(BACKENDS)}.")
    if not isinstance(features, torch.Tensor):
        features = np.asarray(features)
    _check_shape(tuple(features.shape))
    n = features.shape[0]
    k_max = n - 1 if exclude_self else n
    if not 1 <= k <= k_max:
        raise ImgclustError(f"cannot find k={k} neighbours among N={n} rows"
                            f"{' (self excluded)' if exclude_self else ''}.",
                            fix=f"use 1 <= k <= {k_max}, or add more images.")
    if chunk_size < 1:
        raise ImgclustError(f"chunk_size must be >= 1; got {chunk_size}.", fix="use e.g. chunk_size=1024.")
    if device is None:
        device = features.device if isinstance(features, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    faiss = load_faiss() if backend != "torch" else None
    if backend == "faiss" and faiss is None:
        raise ImgclustError("neighbour backend 'faiss' was requested but faiss is not installed.",
                            fix="pip install faiss-cpu, or use backend='torch'.")
    if faiss is not None and (backend == "faiss" or device.type == "cpu"):
        return _faiss_search(faiss, normalize_features(features), k, chunk_size, exclude_self)
    with torch.no_grad():
        return _torch_search(_normalize_tensor(features, device), k, chunk_size, exclude_self)


def mine_neighbors(features: np.ndarray | torch.Tensor, k: int, backend: str = "auto", chunk_size: int = 1024,
                   device: str | torch.device | None = None, exclude_self: bool = True) -> np.ndarray:
    """Indices of the top-k cosine neighbours of every row; see :func:`nearest_neighbors` for the arguments.

    Returns:
        (N, k) int64 array, most similar first, self excluded by default.
    """
    return nearest_neighbors(features, k, backend, chunk_size, device, exclude_self).indices


def neighbor_purity(neighbors: Any, labels: Any, k: int | None = None) -> float:
    """Fraction of (anchor, neighbour) pairs whose two true labels agree: how label-consistent the kNN graph is.

    Pairs where either label is -1 (unknown) are left out.

    Args:
        neighbors: (N, k) int neighbour indices into ``labels``, most similar first.
        labels: (N,) int class labels, -1 for unknown.
        k: use only the first k neighbours of each row (purity@k without re-mining); default all.

    Returns:
        Purity in [0, 1].
    """
    neighbors = np.asarray(neighbors)
    labels = np.asarray(labels)
    if neighbors.ndim != 2 or labels.ndim != 1 or neighbors.shape[0] != labels.shape[0]:
        raise ImgclustError(f"neighbors {neighbors.shape} and labels {labels.shape} do not match; expected (N, k) "
                            "and (N,).", fix="pass the neighbour table and the labels of the same N samples.")
    if neighbors.size and (neighbors.min() < 0 or neighbors.max() >= labels.shape[0]):
        raise ImgclustError(f"neighbor indices must lie in 0..{labels.shape[0] - 1}.",
                            fix="pass neighbours mined on the same samples as the labels.")
    if k is not None:
        if not 1 <= k <= neighbors.shape[1]:
            raise ImgclustError(f"k={k} but the table has {neighbors.shape[1]} neighbours per row.",
                                fix=f"use 1 <= k <= {neighbors.shape[1]}.")
        neighbors = neighbors[:, :k]
    anchor = labels[:, None]
    other = labels[neighbors]
    known = (anchor >= 0) & (other >= 0)
    if not known.any():
        raise ImgclustError("no neighbour pair has two known labels, so purity is undefined.",
                            fix="compute purity on labelled data.")
    return float((other == anchor)[known].mean())
