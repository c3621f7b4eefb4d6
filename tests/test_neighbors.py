"""Exact cosine kNN: backend parity, chunking, self-exclusion with duplicates, memory bound, purity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import imgclust.neighbors as neighbors_module
from imgclust.errors import ImgclustError
from imgclust.neighbors import Neighbors, mine_neighbors, nearest_neighbors, neighbor_purity, recall_at_k

from conftest import cifar10_subset_paths

faiss = neighbors_module.load_faiss()
needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss is not installed (optional dependency)")


def random_features(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def brute_force(x: np.ndarray, k: int) -> np.ndarray:
    """Reference neighbours from the full N×N cosine matrix (small N only), self excluded."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def assert_same_neighbors(a: Neighbors, b: Neighbors, tie_tol: float = 1e-5) -> None:
    """Equal similarities, and equal indices except where float rounding may swap near-tied neighbours."""
    np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-5)
    rows = np.flatnonzero((a.indices != b.indices).any(axis=1))
    for row in rows:
        gaps = np.abs(np.diff(a.similarities[row]))
        assert gaps.min() < tie_tol, f"row {row} differs without a near-tie: {a.indices[row]} vs {b.indices[row]}"
    assert len(rows) <= 0.01 * len(a.indices)


def test_torch_matches_brute_force():
    x = random_features(500, 16)
    result = nearest_neighbors(x, 7, backend="torch")
    assert result.indices.dtype == np.int64 and result.indices.shape == (500, 7)
    assert result.similarities.dtype == np.float32
    np.testing.assert_array_equal(result.indices, brute_force(x, 7))
    assert np.all(np.diff(result.similarities, axis=1) <= 0)


@needs_faiss
def test_faiss_and_torch_backends_agree():
    x = random_features(2000, 32, seed=1)
    via_faiss = nearest_neighbors(x, 10, backend="faiss")
    via_torch = nearest_neighbors(x, 10, backend="torch")
    assert_same_neighbors(via_faiss, via_torch)


@needs_faiss
@pytest.mark.shared_data
def test_backends_agree_on_real_images(cifar10_dir):
    # Real images have correlated, clumpy features unlike Gaussian noise: centred 16×16 CIFAR-10 pixels.
    paths, labels, _ = cifar10_subset_paths(cifar10_dir, "test", 50)
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((16, 16)), dtype=np.float32).ravel()
                  for p in paths])
    x -= x.mean(axis=0)
    via_faiss = nearest_neighbors(x, 10, backend="faiss")
    assert_same_neighbors(via_faiss, nearest_neighbors(x, 10, backend="torch", chunk_size=128))
    assert neighbor_purity(via_faiss.indices, labels) > 0.15  # above the 0.1 of random neighbours


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_chunk_size_does_not_change_the_result(backend):
    x = random_features(700, 24, seed=2)
    whole = nearest_neighbors(x, 5, backend=backend, chunk_size=700)
    for chunk_size in (1, 64, 333, 5000):
        assert_same_neighbors(whole, nearest_neighbors(x, 5, backend=backend, chunk_size=chunk_size))


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_self_is_excluded_even_among_exact_duplicates(backend):
    x = random_features(50, 8, seed=3)
    x[[0, 1, 2, 3, 4]] = x[0]  # five identical rows: each one's 2 neighbours must be two of the others
    x[10] = 2.5 * x[11]  # same direction, different scale: also cosine duplicates
    result = nearest_neighbors(x, 2, backend=backend, chunk_size=3)
    for row in range(5):
        assert row not in result.indices[row]
        assert set(result.indices[row]) <= {0, 1, 2, 3, 4}
        np.testing.assert_allclose(result.similarities[row], 1.0, atol=1e-6)
    assert result.indices[10, 0] == 11 and result.indices[11, 0] == 10
    assert not np.any(result.indices == np.arange(50)[:, None])


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_include_self(backend):
    x = random_features(100, 8, seed=4)
    result = nearest_neighbors(x, 3, backend=backend, exclude_self=False)
    np.testing.assert_array_equal(result.indices[:, 0], np.arange(100))
    np.testing.assert_array_equal(result.indices[:, 1:], brute_force(x, 2))
    assert nearest_neighbors(x, 100, backend=backend, exclude_self=False).indices.shape == (100, 100)


def test_input_kinds_and_scale_invariance():
    x = random_features(200, 12, seed=5)
    expected = mine_neighbors(x, 4, backend="torch")
    scaled = x * np.random.default_rng(0).uniform(0.1, 10, (200, 1)).astype(np.float32)
    np.testing.assert_array_equal(mine_neighbors(scaled, 4, backend="torch"), expected)
    np.testing.assert_array_equal(mine_neighbors(torch.from_numpy(x), 4, backend="torch", device="cpu"), expected)
    np.testing.assert_array_equal(mine_neighbors(x.astype(np.float64), 4), expected)  # auto backend
    before = x.copy()
    mine_neighbors(x, 4)
    np.testing.assert_array_equal(x, before)  # normalised on a copy


def test_auto_falls_back_to_torch_without_faiss(monkeypatch):
    monkeypatch.setattr(neighbors_module, "load_faiss", lambda: None)
    x = random_features(100, 8, seed=6)
    np.testing.assert_array_equal(mine_neighbors(x, 3), brute_force(x, 3))
    with pytest.raises(ImgclustError, match="faiss is not installed"):
        mine_neighbors(x, 3, backend="faiss")


def test_torch_backend_never_builds_an_n_by_n_matrix(monkeypatch):
    n, d, chunk = 20000, 64, 1024
    x = random_features(n, d, seed=7)
    shapes: list[tuple[int, ...]] = []
    real_mm = torch.mm

    def spy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = real_mm(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "mm", spy)
    result = mine_neighbors(x, 5, backend="torch", chunk_size=chunk)
    assert len(shapes) == math.ceil(n / chunk)
    assert max(rows for rows, _ in shapes) <= chunk and all(cols == n for _, cols in shapes)
    sample = [0, 1023, 1024, 19999]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit[sample] @ unit.T
    sims[np.arange(4), sample] = -np.inf
    np.testing.assert_array_equal(result[sample], np.argsort(-sims, axis=1)[:, :5])


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 10}, "k=10 neighbours among N=10"),
    ({"k": 0}, "k=0"),
    ({"k": 2, "backend": "annoy"}, "unknown neighbour backend"),
    ({"k": 2, "chunk_size": 0}, "chunk_size"),
])
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ImgclustError, match=message):
        mine_neighbors(random_features(10, 4), **kwargs)


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_bad_feature_values_raise(backend):
    x = random_features(20, 4)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ImgclustError, match=r"NaN or inf in 2 of 20 rows \(first: row 3\)"):
        mine_neighbors(x, 2, backend=backend)
    x = random_features(20, 4)
    x[5] = 0
    with pytest.raises(ImgclustError, match=r"1 all-zero rows of 20 \(first: row 5\)"):
        mine_neighbors(x, 2, backend=backend)
    with pytest.raises(ImgclustError, match="2-D"):
        mine_neighbors(np.zeros(5, dtype=np.float32), 2, backend=backend)


def test_purity_by_hand():
    labels = np.array([0, 0, 1, 1])
    table = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])  # first neighbour always same class, second never
    assert neighbor_purity(table, labels) == 0.5
    assert neighbor_purity(table, labels, k=1) == 1.0
    # Pairs with an unknown (-1) label are left out: (0,1) ✓ (0,2) ✗ (1,0) ✓ (2,0) ✗ remain.
    assert neighbor_purity(table, np.array([0, 0, 1, -1])) == 0.5


def test_purity_rejects_mismatched_inputs():
    with pytest.raises(ImgclustError, match="do not match"):
        neighbor_purity(np.zeros((3, 2), dtype=np.int64), np.zeros(4, dtype=np.int64))
    with pytest.raises(ImgclustError, match="indices must lie"):
        neighbor_purity(np.full((3, 2), 3), np.zeros(3, dtype=np.int64))
    with pytest.raises(ImgclustError, match="k=3"):
        neighbor_purity(np.zeros((3, 2), dtype=np.int64), np.zeros(3, dtype=np.int64), k=3)


# -- approximate search (IVF / HNSW) ---------------------------------------------------------------------------

def real_pixels(cifar10_dir, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred 16×16 CIFAR-10 test pixels: clumpy real-image vectors, cheap to make."""
    paths, labels, _ = cifar10_subset_paths(cifar10_dir, "test", per_class)
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((16, 16)), dtype=np.float32).ravel()
                  for p in paths])
    return x - x.mean(axis=0), labels


@needs_faiss
@pytest.mark.shared_data
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_reaches_the_target_recall_on_real_images(cifar10_dir, kind):
    x, _ = real_pixels(cifar10_dir, 150)
    exact = nearest_neighbors(x, 10, index="exact")
    approx = nearest_neighbors(x, 10, index=kind, target_recall=0.9, recall_sample=300)
    search = approx.search
    assert search["index"] == ("HNSW32" if kind == "hnsw" else "IVF38,PQ192x4fs,RFlat")
    assert search["recall_at_k"] >= 0.9 and search["recall_sample"] == 300
    true_recall = recall_at_k(approx.indices, exact.indices)
    assert true_recall >= 0.85 and abs(true_recall - search["recall_at_k"]) < 0.05  # the sample is honest
    assert not (approx.indices == np.arange(len(x))[:, None]).any()
    assert np.all(np.diff(approx.similarities, axis=1) <= 1e-6)
    # A higher target needs a breadth at least as costly (IVF: later in the cost order of (nprobe, k_factor)).
    stricter = nearest_neighbors(x, 10, index=kind, target_recall=0.99, recall_sample=300)
    assert stricter.search["recall_at_k"] >= 0.99
    if kind == "hnsw":
        assert stricter.search["breadth"] >= search["breadth"]
    else:
        order = neighbors_module._ivf_breadths(len(x), 38, 10)
        assert order.index((stricter.search["breadth"], stricter.search["k_factor"])) >= order.index(
            (search["breadth"], search["k_factor"]))


@needs_faiss
def test_ivf_that_must_scan_every_list_searches_exactly():
    # Uniform random directions in 64-d have no neighbourhood structure: recall 0.99 needs every list.
    x = random_features(3000, 64, seed=6)
    result = nearest_neighbors(x, 10, index="ivf", target_recall=0.99)
    assert result.search["index"] == "exact" and result.search["fallback_from"].startswith("IVF")
    np.testing.assert_array_equal(result.indices, nearest_neighbors(x, 10, index="exact").indices)


def test_ivf_breadths_are_ordered_by_search_cost():
    order = neighbors_module._ivf_breadths(1_000_000, 4000, 20)
    assert len(order) == len(set(order)) == len(neighbors_module._geometric(1, 4000)) * 5
    cost = [p * 250 + neighbors_module._REFINE_TO_SCAN_COST * 20 * f for p, f in order]
    assert cost == sorted(cost) and order[0] == (1, 4) and order[-1] == (4000, 64)
    # At a million rows more re-ranking is cheaper than scanning every list: (128, 8) comes long before (4000, 4).
    assert order.index((128, 8)) < order.index((4000, 4))


@needs_faiss
def test_auto_goes_approximate_past_the_threshold_on_cpu_only():
    x = random_features(1200, 8, seed=3)
    assert nearest_neighbors(x, 5).search == {"index": "exact", "backend": "faiss"}
    assert nearest_neighbors(x, 5, approximate_above=1000).search["index"].startswith("IVF")
    assert nearest_neighbors(x, 5, approximate_above=None).search["index"] == "exact"
    assert nearest_neighbors(x, 5, backend="torch", approximate_above=1000).search["index"] == "exact"


@needs_faiss
def test_rows_an_ivf_search_cannot_fill_are_searched_exactly():
    # 51 lists of ~40 rows and k=60: with nprobe=1 (a target recall this low stops at the first breadth) every
    # query's own list holds fewer than k rows, so faiss pads with -1; those rows must be searched exactly.
    x = random_features(2000, 8, seed=4)
    result = nearest_neighbors(x, 60, index="ivf", target_recall=0.01)
    assert result.search["breadth"] == 1 and result.search["rows_searched_exactly"] > 0
    assert result.indices.min() >= 0
    short = result.indices[:5]
    np.testing.assert_array_equal(np.sort(short, axis=1), np.sort(brute_force(x, 60)[:5], axis=1))


@needs_faiss
def test_approximate_search_reads_memory_mapped_float16_block_by_block(tmp_path, monkeypatch):
    monkeypatch.setattr(neighbors_module, "_ROW_BLOCK", 100)
    x = random_features(450, 6, seed=5)
    cache = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=x.shape)
    cache[:] = x
    cache.flush()
    features = np.load(tmp_path / "f.npy", mmap_mode="r")
    result = nearest_neighbors(features, 4, index="hnsw", target_recall=1.0)
    np.testing.assert_array_equal(result.indices, nearest_neighbors(features, 4, index="exact").indices)
    cache[333, 2] = np.nan  # the error names the row in the whole array, not in its block
    cache.flush()
    with pytest.raises(ImgclustError, match=r"NaN or inf in 1 of 450 rows \(first: row 333\)"):
        nearest_neighbors(np.load(tmp_path / "f.npy", mmap_mode="r"), 4, index="ivf")


def test_approximate_index_needs_faiss(monkeypatch):
    monkeypatch.setattr(neighbors_module, "load_faiss", lambda: None)
    with pytest.raises(ImgclustError, match="faiss is not installed"):
        nearest_neighbors(random_features(50, 4), 3, index="hnsw")
    assert nearest_neighbors(random_features(50, 4), 3, approximate_above=10).search["index"] == "exact"
