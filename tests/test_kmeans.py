"""Spherical k-means baseline: accuracy on separable data, determinism, backend parity, validation, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import imgclust.methods.kmeans as kmeans_module
from imgclust.errors import ImgclustError
from imgclust.methods import available_methods, fit_method, model_class
from imgclust.methods.base import FitContext
from imgclust.methods.kmeans import CONFIDENCE_TEMPERATURE, KMeansModel, kmeans, predict
from imgclust.metrics import cluster_accuracy
from imgclust.neighbors import load_faiss

faiss = load_faiss()
needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss is not installed (optional dependency)")
BACKENDS = [pytest.param("faiss", marks=needs_faiss), "sklearn"]


def blobs(n_per_cluster: int = 60, k: int = 6, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated clusters on the sphere: random directions plus small noise, at random scales."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    labels = np.repeat(np.arange(k), n_per_cluster)
    x = centers[labels] + 0.15 * rng.standard_normal((len(labels), d))
    x *= rng.uniform(0.5, 5.0, (len(labels), 1))  # scale must not matter: features are normalised
    return x.astype(np.float32), labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_separable_blobs_are_recovered(backend):
    x, truth = blobs()
    result = kmeans(x, 6, backend=backend)
    assert result.backend == backend
    assert cluster_accuracy(truth, result.labels) == 1.0
    assert result.labels.dtype == np.int64 and result.labels.shape == (360,)
    assert result.centers.dtype == np.float32 and result.centers.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(result.centers, axis=1), 1.0, atol=1e-5)
    assert np.all((result.distances >= 0) & (result.distances <= 2))
    assert np.all((result.confidence > 1 / 6) & (result.confidence <= 1))
    assert result.inertia == pytest.approx(float(result.distances.sum()), rel=1e-5)
    assert result.n_iter >= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_result(backend):
    x = np.random.default_rng(1).standard_normal((400, 16)).astype(np.float32)  # no structure: init matters
    a = kmeans(x, 5, seed=3, n_init=3, backend=backend)
    b = kmeans(x, 5, seed=3, n_init=3, backend=backend)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centers, b.centers)


@needs_faiss
def test_faiss_and_sklearn_agree_on_easy_data():
    x, _ = blobs(seed=2)
    assert cluster_accuracy(kmeans(x, 6, backend="faiss").labels, kmeans(x, 6, backend="sklearn").labels) == 1.0


@needs_faiss
def test_faiss_trains_on_all_points(monkeypatch):
    # faiss's default max_points_per_centroid=256 would train K=2 on a 512-point subsample of these 6000.
    seen: dict = {}
    real_kmeans = faiss.Kmeans

    def spy(d, k, **kwargs):
        seen.update(kwargs)
        return real_kmeans(d, k, **kwargs)

    monkeypatch.setattr(faiss, "Kmeans", spy)
    x = np.random.default_rng(0).standard_normal((6000, 16)).astype(np.float32)
    result = kmeans(x, 2, n_init=1, backend="faiss")
    assert seen["max_points_per_centroid"] * 2 >= 6000 and seen["spherical"] is True
    # Trained on everything and converged, each centre is the normalised mean of its members (a 512-point
    # subsample leaves them ~0.1 away).
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    means = np.stack([unit[result.labels == j].mean(axis=0) for j in range(2)])
    np.testing.assert_allclose(means / np.linalg.norm(means, axis=1, keepdims=True), result.centers, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_reproduces_training_assignment(backend):
    x = np.random.default_rng(4).standard_normal((300, 8)).astype(np.float32)
    result = kmeans(x, 4, n_init=2, backend=backend)
    labels, distances, confidence = predict(x, result.centers)
    np.testing.assert_array_equal(labels, result.labels)
    np.testing.assert_allclose(distances, result.distances, atol=1e-6)
    np.testing.assert_allclose(confidence, result.confidence, atol=1e-6)
    labels_t, _, _ = predict(torch.from_numpy(x * 3), torch.from_numpy(result.centers * 2))
    np.testing.assert_array_equal(labels_t, result.labels)


def test_confidence_is_the_tempered_softmax():
    centers = np.eye(3, dtype=np.float32)
    x = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=np.float32)
    labels, distances, confidence = predict(x, centers)
    np.testing.assert_array_equal(labels, [0, 1])
    np.testing.assert_allclose(distances, [0.0, 0.2], atol=1e-6)
    sims = x @ centers.T
    soft = np.exp(sims / CONFIDENCE_TEMPERATURE) / np.exp(sims / CONFIDENCE_TEMPERATURE).sum(1, keepdims=True)
    np.testing.assert_allclose(confidence, soft[[0, 1], labels], rtol=1e-5)


def test_sklearn_is_used_without_faiss(monkeypatch):
    monkeypatch.setattr(kmeans_module, "load_faiss", lambda: None)
    x, truth = blobs(n_per_cluster=20, k=3, d=8)
    result = kmeans(x, 3, n_init=2)
    assert result.backend == "sklearn" and cluster_accuracy(truth, result.labels) == 1.0
    with pytest.raises(ImgclustError, match="faiss is not installed"):
        kmeans(x, 3, backend="faiss")


@pytest.mark.parametrize("k, message", [
    (1, "integer >= 2"),
    (11, "K=11 clusters from N=10"),
    (4, "only 3 distinct feature directions"),
    (2.0, "integer >= 2"),
])
def test_bad_k_raises(k, message):
    x = np.repeat(np.random.default_rng(0).standard_normal((3, 4)), [4, 3, 3], axis=0).astype(np.float32)
    x[0] *= 2  # a scaled copy is the same direction
    with pytest.raises(ImgclustError, match=message) as info:
        kmeans(x, k, n_init=1)
    assert info.value.fix


def test_bad_values_and_settings_raise():
    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    x[[4, 9], 2] = np.nan
    with pytest.raises(ImgclustError, match=r"NaN or inf in 2 of 30 rows \(first: row 4\)"):
        kmeans(x, 3)
    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    for kwargs, message in (({"backend": "cuml"}, "unknown k-means backend"), ({"n_init": 0}, "n_init"),
                            ({"max_iter": 0}, "max_iter")):
        with pytest.raises(ImgclustError, match=message):
            kmeans(x, 3, **kwargs)
    with pytest.raises(ImgclustError, match="8 dimensions but the centres have 4"):
        predict(np.ones((2, 8), dtype=np.float32), np.eye(4, dtype=np.float32))


def test_registry_fit_save_and_reload():
    assert "kmeans" in available_methods() and model_class("kmeans") is KMeansModel
    x, truth = blobs(n_per_cluster=20, k=3, d=8)
    fitted = fit_method("kmeans", FitContext(features=x, n_clusters=3, seed=0, options={"n_init": 2}))
    assert cluster_accuracy(truth, fitted.assignment.labels) == 1.0
    assert fitted.info["n_iter"] >= 1 and fitted.info["backend"] in ("faiss", "sklearn")
    model = fitted.model
    reloaded = KMeansModel.from_state(model.state_tensors(), model.config())
    again = reloaded.assign(x)
    np.testing.assert_array_equal(again.labels, fitted.assignment.labels)
    np.testing.assert_allclose(again.confidence, fitted.assignment.confidence, atol=1e-6)
    np.testing.assert_allclose(again.distance, fitted.assignment.distance, atol=1e-6)
    with pytest.raises(ImgclustError, match="inconsistent"):
        KMeansModel.from_state(model.state_tensors(), {**model.config(), "feature_dim": 9})


def test_registry_rejects_unknown_names_and_options():
    x, _ = blobs(n_per_cluster=5, k=2, d=4)
    with pytest.raises(ImgclustError, match="unknown method 'dbscan'"):
        fit_method("dbscan", FitContext(features=x, n_clusters=2))
    with pytest.raises(ImgclustError, match="unknown k-means option"):
        fit_method("kmeans", FitContext(features=x, n_clusters=2, options={"n_inits": 3}))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_n_trains_on_a_sample_and_assigns_every_row(backend, tmp_path):
    # Past approximate_above the centres come from max(approximate_above, 256·K) sampled rows; every row of a
    # memory-mapped float16 cache is still assigned, and as well as training on everything would.
    x, truth = blobs(n_per_cluster=500, k=4, d=16, seed=5)
    cache = np.lib.format.open_memmap(tmp_path / "features.npy", mode="w+", dtype=np.float16, shape=x.shape)
    cache[:] = x
    cache.flush()
    features = np.load(tmp_path / "features.npy", mmap_mode="r")
    sampled = kmeans(features, 4, n_init=5, backend=backend, approximate_above=600)
    assert sampled.training_rows == max(600, 256 * 4)
    assert sampled.labels.shape == (2000,) and cluster_accuracy(truth, sampled.labels) == 1.0
    full = kmeans(features, 4, n_init=5, backend=backend, approximate_above=None)
    assert full.training_rows == 2000
    assert sampled.inertia <= full.inertia * 1.01
    labels, _, _ = predict(features, sampled.centers)
    np.testing.assert_array_equal(labels, sampled.labels)


def test_approximate_above_is_validated():
    x, _ = blobs(n_per_cluster=10, k=2, d=4)
    with pytest.raises(ImgclustError, match="approximate_above"):
        kmeans(x, 2, approximate_above=0)
