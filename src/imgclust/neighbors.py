"""k-nearest neighbours by cosine similarity, without ever holding an N×N similarity matrix.

Exact search has two interchangeable backends that give the same neighbours (up to the order of exact ties):

- ``"faiss"``: ``faiss.IndexFlatIP`` (exact inner-product search, CPU) on L2-normalised rows.
- ``"torch"``: chunked ``torch.mm`` of ``chunk_size`` queries against all N rows, then ``torch.topk``; memory
  O(chunk_size × N), on any torch device (CPU or an accelerator the caller names).

``backend="auto"`` picks faiss when it is importable and the work is on the CPU, torch otherwise.

Exact search costs N² dot products: 100,000 rows take about a minute on two CPU cores, a million rows over an
hour. Past ``approximate_above`` rows on the CPU (``index="auto"``), or when asked (``index="ivf"``/``"hnsw"``),
the search runs on an approximate faiss index instead (IVF with ≈4·√N lists and fast-scan PQ codes re-ranked
exactly, or HNSW32), whose search breadth (``(nprobe, k_factor)`` pairs in order of estimated cost, or
``efSearch``) is raised step by step until the recall@k measured on a random sample of rows against exact search
reaches ``target_recall``. The measured recall is returned with the neighbours
(:attr:`Neighbors.search`). Rows are read and normalised block by block, so a memory-mapped float16 feature
cache is never loaded whole.
"""

from __future__ import annotations

import importlib
from types import ModuleType
import logging
import math
import time
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import ImgclustError

BACKENDS = ("auto", "faiss", "torch")
INDEXES = ("auto", "exact", "ivf", "hnsw")

# Rows past which index="auto" searches approximately on the CPU: exact search of 100,000 rows takes about a
# minute on 2 cores and grows as N² (a million rows: over an hour), while IVF at recall 0.95 grows about as N^1.5.
APPROXIMATE_ABOVE = 100_000
TARGET_RECALL = 0.95
RECALL_SAMPLE = 1000
# Rows normalised and searched per step on the approximate path (bounds the float32 copy of the input).
_ROW_BLOCK = 65536
# Candidates re-ranked exactly per wanted neighbour in the IVF index (k_factor), tried with every nprobe.
_REFINE_FACTORS = (4, 8, 16, 32, 64)
# Cost of re-ranking one candidate exactly (a random read of its float32 row) over scanning one 4-bit code,
# measured on 1,000,000 x 384 rows with one thread: 0.41 us vs 5 ns. It orders the (nprobe, k_factor) pairs by
# cost: at 1 M rows the 4-bit codes need k_factor >= 8 for recall 0.9 at any nprobe, so raising nprobe alone
# ended in scanning every list (a search of 20+ minutes).
_REFINE_TO_SCAN_COST = 80.0
# Queries per approximate search call: fast-scan IVF builds a lookup table per (query, scanned list), so big
# calls cost memory and cache misses (100,000 x 384 at nprobe=64: 4,096 queries per call searched in 7.1 s at
# 1.52 GiB peak RSS, 65,536 per call in 10.7 s at 1.87 GiB).
_SEARCH_BLOCK = 4096

_logger = logging.getLogger(__name__)


class Neighbors(NamedTuple):
    """The k nearest neighbours of each of N rows, most similar first.

    Attributes:
        indices: (N, k) int64 row indices of the neighbours.
        similarities: (N, k) float32 cosine similarities to them, non-increasing along each row.
        search: how they were found: ``{"index": "exact"}``, or for an approximate index its faiss description,
            search breadth, the recall@k measured against exact search on a sample of rows, and timings.
    """

    indices: np.ndarray
    similarities: np.ndarray
    search: dict[str, Any] | None = None


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


def normalize_block(features: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``features`` (any float array, memory-mapped is fine) as unit-norm float32.

    On bad rows the error counts and locates them in the whole array, as a whole-array pass would.
    """
    try:
        return normalize_features(features[start:stop])
    except ImgclustError:
        _raise_for_bad_rows(features)
        raise


def _raise_for_bad_rows(features: np.ndarray) -> None:
    """Scan ``features`` block by block and raise the error :func:`normalize_features` would raise for all of it."""
    n = int(features.shape[0])
    n_bad = n_zero = 0
    first_bad = first_zero = -1
    for start in range(0, n, _ROW_BLOCK):
        block = np.asarray(features[start:start + _ROW_BLOCK], dtype=np.float64)
        bad = ~np.isfinite(block).all(axis=1)
        zero = ~bad & ~block.any(axis=1)
        if bad.any() and first_bad < 0:
            first_bad = start + int(bad.argmax())
        if zero.any() and first_zero < 0:
            first_zero = start + int(zero.argmax())
        n_bad += int(bad.sum())
        n_zero += int(zero.sum())
    _check_rows(n_bad, first_bad, n_zero, first_zero, n)


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


def _drop_self(sims: np.ndarray, idx: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 hits per query, drop the query's own row wherever it is among them (exact duplicates may
    outrank it); if k+1 duplicates crowd it out entirely, drop the last hit instead."""
    drop = idx == rows[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop
    return sims[keep].reshape(-1, k), idx[keep].reshape(-1, k)


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
            sims, idx = _drop_self(sims, idx, np.arange(start, stop), k)
        indices[start:stop] = idx
        similarities[start:stop] = sims
    return Neighbors(indices, similarities, {"index": "exact", "backend": "faiss"})


def _exact_for_rows(features: np.ndarray, rows: np.ndarray, k: int, exclude_self: bool) -> Neighbors:
    """Exact top-k neighbours of the given rows among all rows, streaming the data block by block.

    Memory: the queries plus one block; this is the reference the approximate index is measured against.
    """
    n = int(features.shape[0])
    queries = torch.from_numpy(normalize_features(features[rows]))
    best_sims = torch.full((len(rows), k), -torch.inf)
    best_idx = torch.full((len(rows), k), -1, dtype=torch.int64)
    query_rows = torch.from_numpy(rows)
    for start in range(0, n, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n)
        sims = queries @ torch.from_numpy(normalize_block(features, start, stop)).T
        if exclude_self:
            inside = (query_rows >= start) & (query_rows < stop)
            sims[inside.nonzero()[:, 0], query_rows[inside] - start] = -torch.inf
        block_sims, block_idx = torch.topk(sims, min(k, stop - start), dim=1)
        best_sims, order = torch.topk(torch.cat([best_sims, block_sims], 1), k, dim=1)
        best_idx = torch.gather(torch.cat([best_idx, block_idx + start], 1), 1, order)
    return Neighbors(best_idx.numpy(), best_sims.numpy())


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true k neighbours (``truth``, (N, k)) present in ``found`` (N, k)."""
    hits = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(found, truth)]
    return float(np.mean(hits) / truth.shape[1])


def _ivf_lists(n: int) -> int:
    """faiss's rule of thumb: about 4·√N inverted lists, each trained on ≥ 39 rows."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _ivf_breadths(n: int, n_lists: int, k: int) -> list[tuple[int, int]]:
    """Every (nprobe, k_factor) pair, cheapest first by the search cost model (codes scanned + rows re-ranked)."""
    list_size = n / n_lists
    pairs = [(nprobe, factor) for nprobe in _geometric(1, n_lists) for factor in _REFINE_FACTORS]
    return sorted(pairs, key=lambda p: (p[0] * list_size + _REFINE_TO_SCAN_COST * k * p[1], p))


def _build_index(faiss: ModuleType, features: np.ndarray, kind: str, k: int, rng: np.random.Generator
                 ) -> tuple[Any, str, list[tuple[int, int]]]:
    """Train and fill an inner-product index block by block; returns (index, description, breadths to try)."""
    n, d = (int(v) for v in features.shape)
    if kind == "ivf":
        n_lists = _ivf_lists(n)
        # Lists scanned with 4-bit fast-scan PQ codes (4 dims per code when D allows it, else 8-bit scalar
        # codes), the best k·k_factor candidates then re-ranked exactly (RFlat): at equal recall this searched
        # 100,000 rows 12x (PQ) / 3.5x (SQ8) faster than IVF-Flat on 2 cores, and the similarities are exact.
        codes = f"PQ{d // 4}x4fs" if d % 4 == 0 else "SQ8"
        description = f"IVF{n_lists},{codes},RFlat"
        index = faiss.index_factory(d, description, faiss.METRIC_INNER_PRODUCT)
        # quantiser k-means: 10 iterations place the lists well enough; faiss's 25 cost 2.5x more
        faiss.extract_index_ivf(index).cp.niter = 10
        train_rows = np.sort(rng.choice(n, size=min(n, 50 * n_lists), replace=False))
        index.train(normalize_features(features[train_rows]))
        # More lists scanned (nprobe) find more true neighbours; more candidates re-ranked (k_factor) recover
        # those the 4-bit codes rank too low. Both are tried, cheapest pair first.
        breadths = _ivf_breadths(n, n_lists, k)
    else:
        description = "HNSW32"
        index = faiss.index_factory(d, description, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        breadths = [(ef, 0) for ef in _geometric(16, 4096)]
    for start in range(0, n, _ROW_BLOCK):
        index.add(normalize_block(features, start, min(start + _ROW_BLOCK, n)))
    return index, description, breadths


def _geometric(low: int, high: int) -> list[int]:
    """low, ≈low·√2, ≈2·low, … up to high (inclusive): steps fine enough not to overshoot the needed breadth
    (search time grows linearly with it) and few enough to tune in seconds."""
    values = {low, high}
    value = float(low)
    while value < high:
        values.add(int(round(value)))
        value *= math.sqrt(2)
    return sorted(values)


def _set_breadth(faiss: ModuleType, index: Any, kind: str, breadth: tuple[int, int]) -> None:
    """``(nprobe, k_factor)`` for IVF, ``(efSearch, _)`` for HNSW."""
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = breadth[0]
        index.k_factor = breadth[1]
    else:
        index.hnsw.efSearch = breadth[0]


def _search_rows(index: Any, queries: np.ndarray, rows: np.ndarray, k: int, exclude_self: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    sims, idx = index.search(queries, k + 1 if exclude_self else k)
    if exclude_self:
        sims, idx = _drop_self(sims, idx, rows, k)
    return sims, idx


def _approximate_search(faiss: ModuleType, features: np.ndarray, k: int, kind: str, exclude_self: bool,
                        target_recall: float, recall_sample: int, seed: int, chunk_size: int) -> Neighbors:
    """Search on an IVF or HNSW index whose breadth is raised until the sampled recall@k meets the target."""
    n = int(features.shape[0])
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    index, description, breadths = _build_index(faiss, features, kind, k, rng)
    built = time.perf_counter()
    sample = np.sort(rng.choice(n, size=min(n, recall_sample), replace=False))
    truth = _exact_for_rows(features, sample, k, exclude_self).indices
    queries = normalize_features(features[sample])
    failed: list[tuple[int, int]] = []
    best: tuple[float, tuple[int, int]] = (-1.0, breadths[-1])
    for breadth in breadths:
        # Recall grows with both parts of the breadth: a pair below one that failed fails too.
        if any(breadth[0] <= a and breadth[1] <= b for a, b in failed):
            continue
        _set_breadth(faiss, index, kind, breadth)
        recall = recall_at_k(_search_rows(index, queries, sample, k, exclude_self)[1], truth)
        if recall > best[0]:
            best = (recall, breadth)
        if recall >= target_recall:
            break
        failed.append(breadth)
    else:  # no breadth reaches the target: search with the one that came closest
        recall, breadth = best
        _set_breadth(faiss, index, kind, breadth)
    tuned = time.perf_counter()
    if kind == "ivf" and breadth[0] >= faiss.extract_index_ivf(index).nlist:
        # Scanning every list is exact search done slower (100,000 uniform random 384-d rows: 145 s against
        # 57 s): data without neighbourhood structure is searched exactly instead.
        del index
        _logger.info("approximate kNN needs every IVF list for recall %.2f on %d rows: searching exactly",
                     target_recall, n)
        found = _faiss_search(faiss, normalize_features(features), k, chunk_size, exclude_self)
        return found._replace(search={"index": "exact", "backend": "faiss", "fallback_from": description,
                                      "recall_at_k": 1.0, "approximate_recall_at_k": round(recall, 4),
                                      "seconds_build": round(built - started, 2),
                                      "seconds_tune": round(tuned - built, 2)})
    indices = np.empty((n, k), dtype=np.int64)
    similarities = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, _SEARCH_BLOCK):
        stop = min(start + _SEARCH_BLOCK, n)
        rows = np.arange(start, stop)
        similarities[start:stop], indices[start:stop] = _search_rows(
            index, normalize_block(features, start, stop), rows, k, exclude_self)
    # An IVF search that finds fewer than k rows in its lists pads with -1: search those rows exactly.
    short = np.flatnonzero((indices < 0).any(axis=1))
    if short.size:
        exact = _exact_for_rows(features, short, k, exclude_self)
        indices[short], similarities[short] = exact.indices, exact.similarities
    search = {"index": description, "breadth_name": "nprobe" if kind == "ivf" else "efSearch",
              "breadth": breadth[0], **({"k_factor": breadth[1]} if kind == "ivf" else {}),
              "recall_at_k": round(recall, 4), "recall_sample": int(sample.size),
              "target_recall": target_recall, "rows_searched_exactly": int(short.size),
              "seconds_build": round(built - started, 2), "seconds_tune": round(tuned - built, 2),
              "seconds_search": round(time.perf_counter() - tuned, 2)}
    if recall < target_recall:
        _logger.warning("approximate kNN: recall@%d %.3f < target %.2f even at %s=%d", k, recall, target_recall,
                        search["breadth_name"], breadth[0])
    _logger.info("approximate kNN on %d rows: %s", n, search)
    return Neighbors(indices, similarities, search)


def nearest_neighbors(features: np.ndarray | torch.Tensor, k: int, backend: str = "auto", chunk_size: int = 1024,
                      device: str | torch.device | None = None, exclude_self: bool = True, index: str = "auto",
                      approximate_above: int | None = APPROXIMATE_ABOVE, target_recall: float = TARGET_RECALL,
                      recall_sample: int = RECALL_SAMPLE, seed: int = 0) -> Neighbors:
    """Top-k cosine neighbours of every row among all rows: exact, or approximate for large N on the CPU.

    Rows are L2-normalised inside (a copy; the input is untouched), so raw features can be passed.

    Args:
        features: (N, D) float numpy array (memory-mapped is fine) or torch tensor.
        k: neighbours per row; at most N-1 (N if ``exclude_self`` is False).
        backend: exact search: ``"auto"``, ``"faiss"`` or ``"torch"`` (see module docstring).
        chunk_size: exact search (also when an approximate index falls back to it): queries per step; the
            torch backend's peak extra memory is chunk_size × N × 4 bytes (1024 × 50,000 rows ≈ 200 MB).
        device: torch backend only: where to compute. Default: the tensor's device, or CPU for numpy input.
            The faiss backend always runs on the CPU.
        exclude_self: leave each row's own index out of its neighbours. Exact duplicates of a row are kept
            (they are other images).
        index: ``"exact"``; ``"ivf"`` or ``"hnsw"`` (approximate faiss indexes, CPU); ``"auto"``: approximate IVF
            when N > ``approximate_above`` and the search would run on the CPU with faiss installed, else exact.
        approximate_above: row count past which ``index="auto"`` goes approximate (``None``: never).
        target_recall: approximate search: the recall@k (measured on ``recall_sample`` random rows against exact
            search) that the search breadth is raised to reach.
        recall_sample: rows whose exact neighbours are computed to measure the recall.
        seed: seeds the approximate index's training sample and the recall sample.

    Returns:
        :class:`Neighbors` with (N, k) int64 ``indices``, float32 ``similarities`` (most similar first) and
        ``search``, a description of the index (with the measured recall when approximate).

    Raises:
        ImgclustError: bad k, chunk_size, backend, index or target_recall; faiss requested but not installed;
            bad feature values.
    """
    if backend not in BACKENDS:
        raise ImgclustError(f"unknown neighbour backend {backend!r}.", fix=f"use one of {', '.join(BACKENDS)}.")
    if index not in INDEXES:
        raise ImgclustError(f"unknown neighbour index {index!r}.", fix=f"use one of {', '.join(INDEXES)}.")
    if not 0 < target_recall <= 1 or recall_sample < 1:
        raise ImgclustError(f"target_recall must lie in (0, 1] and recall_sample be >= 1; got {target_recall}, "
                            f"{recall_sample}.", fix="use e.g. target_recall=0.95, recall_sample=1000.")
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
    faiss = load_faiss() if backend != "torch" or index in ("ivf", "hnsw") else None
    if faiss is None and (backend == "faiss" or index in ("ivf", "hnsw")):
        raise ImgclustError(f"neighbour {'index ' + repr(index) if backend != 'faiss' else 'backend faiss'} was "
                            "requested but faiss is not installed.",
                            fix="pip install faiss-cpu, or use backend='torch' with index='exact'.")
    if index == "auto":
        large = approximate_above is not None and n > approximate_above
        index = "ivf" if large and faiss is not None and device.type == "cpu" else "exact"
    if index != "exact":
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        return _approximate_search(faiss, features, k, index, exclude_self, target_recall, recall_sample, seed,
                                   chunk_size)
    if faiss is not None and (backend == "faiss" or device.type == "cpu"):
        return _faiss_search(faiss, normalize_features(features), k, chunk_size, exclude_self)
    with torch.no_grad():
        result = _torch_search(_normalize_tensor(features, device), k, chunk_size, exclude_self)
    return result._replace(search={"index": "exact", "backend": "torch", "device": str(device)})


def mine_neighbors(features: np.ndarray | torch.Tensor, k: int, backend: str = "auto", chunk_size: int = 1024,
                   device: str | torch.device | None = None, exclude_self: bool = True, **options: Any
                   ) -> np.ndarray:
    """Indices of the top-k cosine neighbours of every row; see :func:`nearest_neighbors` for the arguments
    (``options``: ``index``, ``approximate_above``, ``target_recall``, ``recall_sample``, ``seed``).

    Returns:
        (N, k) int64 array, most similar first, self excluded by default.
    """
    return nearest_neighbors(features, k, backend, chunk_size, device, exclude_self, **options).indices


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
