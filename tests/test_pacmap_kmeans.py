"""pacmap-kmeans: k-means on a PaCMAP embedding, read out by a ridge classifier; save/load,
predict, errors. The readout and the k-means fallback it shares with umap-kmeans are tested in test_umap_kmeans.py."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import accuracies_against_kmeans
from imgclust.errors import ImgclustError
from imgclust.methods import FitContext, fit_method, load_model
from imgclust.methods.pacmap_kmeans import PacmapKMeansModel, pacmap_kmeans

pytest.importorskip("pacmap", reason="pacmap-kmeans needs pacmap (installed by scripts/setup.sh)")


@pytest.fixture(scope="module")
def fitted(digits_1797):
    x, _ = digits_1797
    return fit_method("pacmap-kmeans", FitContext(features=x, n_clusters=10, seed=0))


def test_beats_kmeans_on_real_digits(digits_1797, fitted) -> None:
    acc, kmeans_acc = accuracies_against_kmeans(fitted, *digits_1797)
    assert acc >= kmeans_acc + 0.03, (acc, kmeans_acc)  # measured: 0.846 against 0.787
    assert 0 < fitted.info["moved_by_readout"] < 0.2 and fitted.info["readout_kept"]
    assert "pacmap-kmeans' clusters" in fitted.info["score_note"]


def test_partition_is_the_models_own_and_survives_save_and_load(digits_1797, fitted) -> None:
    x, _ = digits_1797
    loaded = load_model("pacmap-kmeans", fitted.model.state_tensors(), fitted.model.config())
    assert isinstance(loaded, PacmapKMeansModel) and loaded.method == "pacmap-kmeans"
    np.testing.assert_array_equal(loaded.assign(x).labels, fitted.assignment.labels)
    with pytest.raises(ImgclustError, match="the pacmap-kmeans model expects"):
        loaded.assign(np.ones((3, 7), dtype=np.float32))


def test_same_seed_same_partition_other_seed_another_layout(digits_1797, fitted) -> None:
    x, _ = digits_1797
    again = fit_method("pacmap-kmeans", FitContext(features=x, n_clusters=10, seed=0))
    np.testing.assert_array_equal(again.assignment.labels, fitted.assignment.labels)
    other = fit_method("pacmap-kmeans", FitContext(features=x, n_clusters=10, seed=1))
    assert not np.array_equal(other.assignment.labels, fitted.assignment.labels)


def test_small_sets_get_a_layout_or_kmeans(digits_1797) -> None:
    # PaCMAP reduces its pairs for a handful of rows (no error, no log noise); fewer than K + 3 rows get k-means.
    x, _ = digits_1797
    model, info = pacmap_kmeans(x[:12], 4, seed=0)
    assert info.get("fallback") is None and np.unique(model.assign(x[:12]).labels).size == 4
    assert "too few" in pacmap_kmeans(x[:6], 4, seed=0)[1]["fallback"]


@pytest.mark.parametrize("options, match", [
    ({"n_neighbors": 1}, "n_neighbors"),
    ({"n_components": 0}, "n_components"),
    ({"mn_ratio": 0.0}, "mn_ratio"),
    ({"fp_ratio": -1.0}, "fp_ratio"),
    ({"readout_folds": 1}, "readout_folds"),
])
def test_bad_options_say_which(digits_1797, options, match) -> None:
    with pytest.raises(ImgclustError, match=match):
        fit_method("pacmap-kmeans", FitContext(features=digits_1797[0][:100], n_clusters=3, options=options))


def test_missing_package_is_explained(digits_1797, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pacmap", None)  # as if pacmap were not installed
    with pytest.raises(ImgclustError, match="pacmap") as err:
        pacmap_kmeans(digits_1797[0][:100], 3)
    assert "pip install pacmap" in err.value.fix


def test_leaves_faiss_threads_and_pacmap_logging_as_they_were(digits_1797) -> None:
    import logging

    import faiss

    before = faiss.omp_get_max_threads()
    level = logging.getLogger("pacmap.pacmap").level
    pacmap_kmeans(digits_1797[0][:200], 4, seed=0)  # seeded PaCMAP sets faiss to one thread process-wide
    assert faiss.omp_get_max_threads() == before and logging.getLogger("pacmap.pacmap").level == level


def test_missing_package_stops_the_estimator_before_any_extraction(tmp_path, monkeypatch) -> None:
    from imgclust.estimator import ImageClusterer

    monkeypatch.setitem(sys.modules, "pacmap", None)
    clusterer = ImageClusterer(n_clusters=3, method="pacmap-kmeans", cache_dir=str(tmp_path / "cache"),
                               progress=False)
    with pytest.raises(ImgclustError, match="needs the pacmap package") as err:
        clusterer.fit(str(tmp_path / "no-such-folder"))  # refused before the folder is even looked at
    assert "pip install pacmap" in err.value.fix
    assert not (tmp_path / "cache").exists()
