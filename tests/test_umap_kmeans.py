"""umap-kmeans: k-means on a UMAP embedding, read out by a ridge classifier; save/load, predict, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from conftest import accuracies_against_kmeans
from imgclust.errors import ImgclustError
from imgclust.methods import FitContext, fit_method, load_model
from imgclust.methods.umap_kmeans import UmapKMeansModel, umap_kmeans
from imgclust.metrics import cluster_accuracy

pytest.importorskip("umap", reason="umap-kmeans needs umap-learn (installed by scripts/setup.sh)")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """600 of scikit-learn's real 8x8 digit images (64 pixels each): UMAP's neighbour graph follows the
    strokes' variations where k-means' convex cells cut across them."""
    x, y = load_digits(return_X_y=True)
    return x[:600].astype(np.float32), y[:600].astype(np.int64)


@pytest.fixture(scope="module")
def fitted(digits):
    x, _ = digits
    return fit_method("umap-kmeans", FitContext(features=x, n_clusters=10, seed=0))


def test_beats_kmeans_on_real_digits(digits, fitted) -> None:
    umap_acc, kmeans_acc = accuracies_against_kmeans(fitted, *digits)
    assert umap_acc >= kmeans_acc + 0.03, (umap_acc, kmeans_acc)  # measured: 0.887 against 0.840
    assert 0 < fitted.info["moved_by_readout"] < 0.2 and fitted.info["readout_kept"]


def test_partition_is_the_models_own_and_survives_save_and_load(digits, fitted) -> None:
    x, _ = digits
    model = fitted.model
    again = model.assign(x)
    np.testing.assert_array_equal(again.labels, fitted.assignment.labels)  # predict gives training rows back
    assert np.all((0 <= again.confidence) & (again.confidence <= 1)) and again.confidence.mean() > 0.5
    assert np.all((0 <= again.distance) & (again.distance <= 2))
    loaded = load_model("umap-kmeans", model.state_tensors(), model.config())
    assert isinstance(loaded, UmapKMeansModel)
    np.testing.assert_array_equal(loaded.assign(x[::7]).labels, fitted.assignment.labels[::7])
    # the assignment depends on each row's direction only (features are L2-normalised first)
    np.testing.assert_array_equal(loaded.assign(3.0 * x[:50]).labels, fitted.assignment.labels[:50])


def test_same_seed_same_partition(digits, fitted) -> None:
    x, _ = digits
    again = fit_method("umap-kmeans", FitContext(features=x, n_clusters=10, seed=0))
    np.testing.assert_array_equal(again.assignment.labels, fitted.assignment.labels)


def test_rows_past_fit_rows_are_assigned_by_the_readout(digits) -> None:
    x, y = digits
    model, info = umap_kmeans(x, 10, seed=1, fit_rows=300)
    assert info["fit_rows"] == 300
    labels = model.assign(x).labels
    assert np.unique(labels).size == 10 and cluster_accuracy(y, labels) > 0.7


def test_without_cross_fitting_the_classifier_stays_closer_to_the_umap_partition(digits) -> None:
    x, _ = digits
    moved = [umap_kmeans(x[:300], 5, seed=0, readout_folds=folds)[1]["moved_by_readout"] for folds in (0, 5)]
    assert moved[0] < moved[1]


def test_restarts_keep_the_best_scored_layout_and_the_first_is_the_plain_fit(digits) -> None:
    from imgclust.score import partition_score

    x, _ = digits
    x = x[:300]
    model, info = umap_kmeans(x, 5, seed=0, restarts=3)
    assert len(info["restart_scores"]) == 3 and len(set(info["restart_scores"])) > 1  # three different layouts
    assert info["restart_kept"] == int(np.argmax(info["restart_scores"]))
    kept = model.assign(x).labels
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert partition_score(unit, kept, seed=0).kappa == pytest.approx(max(info["restart_scores"]), abs=1e-4)
    first, first_info = umap_kmeans(x, 5, seed=0)  # one layout (the default): nothing scored
    assert "restart_scores" not in first_info
    assert info["restart_scores"][0] == pytest.approx(partition_score(unit, first.assign(x).labels, seed=0).kappa,
                                                      abs=1e-4)  # the first layout is seed's own


@pytest.mark.parametrize("options, match", [
    ({"n_neighbors": 1}, "n_neighbors"),
    ({"readout_folds": 1}, "readout_folds"),
    ({"min_dist": 2.0}, "min_dist"),
    ({"fit_rows": 0}, "fit_rows"),
    ({"restarts": 0}, "restarts"),
])
def test_bad_options_say_which(digits, options, match) -> None:
    with pytest.raises(ImgclustError, match=match):
        fit_method("umap-kmeans", FitContext(features=digits[0][:100], n_clusters=3, options=options))


def test_too_few_images_for_a_layout_fall_back_to_kmeans_and_predict_it(digits) -> None:
    # The default's layouts must cluster whatever k-means can: 6 images into 4 clusters get k-means' partition.
    x = digits[0][:6]
    model, info = umap_kmeans(x, 4, seed=0)
    kmeans = fit_method("kmeans", FitContext(features=x, n_clusters=4, seed=0))
    assert "too few" in info["fallback"] and "K + 2" in info["fallback"]
    np.testing.assert_array_equal(model.assign(x).labels, kmeans.assignment.labels)
    assert umap_kmeans(digits[0][:7], 4, seed=0)[1].get("fallback") is None  # one more image: UMAP's layout


def test_impossible_k_and_missing_package_are_explained(digits, monkeypatch) -> None:
    with pytest.raises(ImgclustError, match="cannot make K=20"):
        umap_kmeans(digits[0][:10], 20)
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    with pytest.raises(ImgclustError, match="umap-learn") as err:
        umap_kmeans(digits[0][:100], 3)
    assert "pip install" in err.value.fix


def test_inconsistent_saved_model_is_refused(fitted) -> None:
    tensors = fitted.model.state_tensors()
    tensors["bias"] = tensors["bias"][:5]
    with pytest.raises(ImgclustError, match="inconsistent"):
        UmapKMeansModel.from_state(tensors, fitted.model.config())
    with pytest.raises(ImgclustError, match="dimensions"):
        fitted.model.assign(np.ones((3, 7), dtype=np.float32))


def test_cli_run_on_embeddings_predicts_its_own_rows_back(digits, tmp_path, capsys) -> None:
    from imgclust.cli import main

    x, y = digits
    np.savez(tmp_path / "digits.npz", features=x, labels=y)
    out = tmp_path / "run"
    assert main(["cluster", str(tmp_path / "digits.npz"), "-k", "10", "--method", "umap-kmeans", "--out", str(out),
                 "--no-report"]) == 0
    summary = capsys.readouterr().out
    assert "umap-kmeans" in summary and "this score runs high" in summary
    assert main(["predict", str(out), str(tmp_path / "digits.npz"), "--out", str(tmp_path / "again.csv")]) == 0
    import csv
    with open(out / "assignments.csv") as f:
        first = [int(r["cluster"]) for r in csv.DictReader(f)]
    with open(tmp_path / "again.csv") as f:
        again = [int(r["cluster"]) for r in csv.DictReader(f)]
    assert first == again and len(first) == len(x)


@pytest.mark.parametrize("method", ["umap-kmeans", "pacmap-kmeans", "umap-pacmap-kmeans"])
def test_copies_of_one_image_neither_empty_a_cluster_nor_split_from_it(digits, method) -> None:
    # A folder with 200 copies of one image and 20 other images, K = 3: before the layout was fitted on distinct
    # rows, both methods left a cluster empty here (and PaCMAP's neighbour search returned missing neighbours).
    if "pacmap" in method:
        pytest.importorskip("pacmap", reason=f"{method} needs pacmap (installed by scripts/setup.sh)")
    x = np.concatenate([np.repeat(digits[0][:1], 200, axis=0), digits[0][1:21]])
    result = fit_method(method, FitContext(features=x, n_clusters=3, seed=0))
    labels = result.assignment.labels
    assert np.bincount(labels, minlength=3).min() > 0
    assert np.unique(labels[:200]).size == 1  # the copies share one cluster
    assert result.info["duplicate_rows"] == 199


def test_the_last_layout_is_reused_for_the_same_rows_and_seed_only(digits, monkeypatch) -> None:
    """A run that estimates K lays out the rows its fit lays out again: the second call returns the same embedding
    without running UMAP; other rows, another seed or other settings compute their own."""
    import umap

    from imgclust.methods.umap_kmeans import _last_layout, umap_layout

    x = digits[0][:300]
    _last_layout.clear()
    calls = []
    real = umap.UMAP.fit_transform
    monkeypatch.setattr(umap.UMAP, "fit_transform", lambda self, rows: calls.append(1) or real(self, rows))
    first = umap_layout()(x, 0)
    again = umap_layout()(x.copy(), 0)
    assert len(calls) == 1 and np.array_equal(first, again)
    again[0] += 1.0  # the caller's copy: the kept layout stays as computed
    assert np.array_equal(umap_layout()(x, 0), first) and len(calls) == 1
    umap_layout()(x, 1)
    umap_layout(n_components=5)(x, 1)
    umap_layout()(x[:299], 1)
    assert len(calls) == 4
