"""umap-pacmap-kmeans: the consensus of a UMAP and a PaCMAP layout's partitions, read out by a ridge classifier;
the consensus step on layouts that fail in known ways, save/load, predict. The readout, the k-means fallback and
copies of one image are tested with umap-kmeans (test_umap_kmeans.py)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import accuracies_against_kmeans
from imgclust.errors import ImgclustError
from imgclust.methods import FitContext, fit_method, load_model
from imgclust.methods.kmeans import kmeans
from imgclust.methods.umap_kmeans import _fit_layouts
from imgclust.methods.umap_pacmap_kmeans import UmapPacmapKMeansModel, agreement_reading, umap_pacmap_kmeans
from imgclust.metrics import cluster_accuracy
from imgclust.neighbors import normalize_features

pytest.importorskip("pacmap", reason="umap-pacmap-kmeans needs pacmap (installed by scripts/setup.sh)")


@pytest.fixture(scope="module")
def fitted(digits_1797):
    return fit_method("umap-pacmap-kmeans", FitContext(features=digits_1797[0], n_clusters=10, seed=0))


def test_beats_kmeans_on_real_digits_and_reports_how_far_the_layouts_agree(digits_1797, fitted) -> None:
    acc, kmeans_acc = accuracies_against_kmeans(fitted, *digits_1797)
    assert acc >= kmeans_acc + 0.03, (acc, kmeans_acc)
    assert 0.5 < fitted.info["layout_agreement"] <= 1.0 and fitted.info["readout_kept"]
    assert fitted.info["partition_from"] == "layouts"  # they agree well past the k-means threshold on digits
    assert "umap-pacmap-kmeans' clusters" in fitted.info["score_note"]


def test_agreement_reading_names_the_band_of_development_runs_it_falls_in() -> None:
    assert agreement_reading(1.0).startswith("development runs with agreement >= 0.9: ACC 0.75-0.99")
    assert agreement_reading(0.9).startswith("development runs with agreement >= 0.9")
    assert agreement_reading(0.8999).startswith("development runs with agreement 0.7-0.9: ACC 0.53-0.97")
    low = agreement_reading(0.0)
    assert low.startswith("development runs with agreement < 0.7: ACC 0.42-0.82") and "check the gallery" in low


def test_consensus_rejoins_a_class_one_layout_split_and_separates_two_it_merged(digits_1797) -> None:
    # Three real digit classes. Layout A splits class 0 in two (along its main axis, so a linear readout can
    # follow) and merges classes 1 and 2, the failure UMAP showed on Fashion-MNIST subsets; layout B sees the
    # classes. Alone, A's partition is at best 2/3 right; the consensus of the two must recover the classes.
    x, y = digits_1797
    keep = y < 3
    x, y = normalize_features(x[keep]), y[keep]
    zero = np.flatnonzero(y == 0)
    centred = x[zero] - x[zero].mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    split = np.where(y == 0, 0, 2)
    split[zero[centred @ axis > 0]] = 1
    rng = np.random.default_rng(0)

    def embed(partition):
        return lambda rows, seed: np.eye(3)[partition] * 10 + rng.normal(size=(len(rows), 3))

    a_alone = _fit_layouts([embed(split)], x, 3, seed=0, n_init=10, readout_folds=5)
    both = _fit_layouts([embed(split), embed(y)], x, 3, seed=0, n_init=10, readout_folds=5)
    assert cluster_accuracy(y, a_alone.labels) < 0.7
    assert cluster_accuracy(y, both.labels) > 0.95, cluster_accuracy(y, both.labels)
    assert both.layout_agreement < 0.8 and a_alone.layout_agreement is None
    assert not both.from_kmeans
    # Where the layouts agree less than kmeans_below_agreement, spherical k-means' partition of the rows is read
    # out instead of their consensus (k-means gets 0.93 of these rows right), and the ridge model reproduces it.
    switched = _fit_layouts([embed(split), embed(y)], x, 3, seed=0, n_init=10, readout_folds=5,
                            kmeans_below_agreement=0.99)
    kmeans_labels = kmeans(x, 3, seed=0, n_init=10).labels
    assert switched.from_kmeans and switched.layout_agreement == pytest.approx(both.layout_agreement)
    np.testing.assert_array_equal(switched.layout_labels, kmeans_labels)
    assert cluster_accuracy(kmeans_labels, switched.labels) > 0.95 and cluster_accuracy(y, switched.labels) > 0.9


def test_kmeans_switch_needs_kmeans_switch_min_rows_fitted_rows(digits_1797) -> None:
    """Below kmeans_switch_min_rows fitted rows (2,500 by default) the layouts' consensus is kept however little
    they agree; from that many rows on, the switch applies (the boundary included). run.json records the setting."""
    x = digits_1797[0][:600]
    _, info_default = umap_pacmap_kmeans(x, 10, kmeans_below_agreement=0.99)
    assert info_default["partition_from"] == "layouts" and info_default["layout_agreement"] < 0.99
    assert info_default["kmeans_switch_min_rows"] == 2500
    for min_rows, expected in ((0, "k-means"), (600, "k-means"), (601, "layouts")):
        _, info = umap_pacmap_kmeans(x, 10, kmeans_below_agreement=0.99, kmeans_switch_min_rows=min_rows)
        assert info["partition_from"] == expected, min_rows
        assert info["layout_agreement"] == info_default["layout_agreement"]
    with pytest.raises(ImgclustError, match="kmeans_switch_min_rows must be an integer >= 0"):
        umap_pacmap_kmeans(x[:200], 3, kmeans_switch_min_rows=-1)


@pytest.mark.parametrize("value", [-0.1, 1.5, "high", True])
def test_kmeans_below_agreement_outside_0_to_1_is_refused_with_the_fix(digits_1797, value) -> None:
    with pytest.raises(ImgclustError, match="kmeans_below_agreement must be a number from 0 to 1"):
        umap_pacmap_kmeans(digits_1797[0][:200], 3, kmeans_below_agreement=value)


def test_partition_is_the_models_own_survives_save_and_load_and_repeats_with_the_seed(digits_1797, fitted) -> None:
    x, _ = digits_1797
    loaded = load_model("umap-pacmap-kmeans", fitted.model.state_tensors(), fitted.model.config())
    assert isinstance(loaded, UmapPacmapKMeansModel) and loaded.method == "umap-pacmap-kmeans"
    np.testing.assert_array_equal(loaded.assign(x).labels, fitted.assignment.labels)
    again = fit_method("umap-pacmap-kmeans", FitContext(features=x, n_clusters=10, seed=0))
    np.testing.assert_array_equal(again.assignment.labels, fitted.assignment.labels)


def test_kmeans_switch_is_off_by_default_on_features_that_are_not_whitened(digits_1797, monkeypatch) -> None:
    """The switch was adopted on whitened features and lost on raw ones: a run on embeddings given directly (never
    whitened) or with whitening "none" fits with kmeans_below_agreement=0 unless the user sets it; a whitened run
    keeps the declared 0.7."""
    from imgclust import ImageClusterer
    from imgclust.methods import get_method

    method = get_method("umap-pacmap-kmeans")
    assert method.options_for({}, whitened=True) == {}
    assert method.options_for({}, whitened=False) == {"method.kmeans_below_agreement": 0.0}
    for given in ({"kmeans_below_agreement": 0.5}, {"method.kmeans_below_agreement": 0.5}):
        assert method.options_for(given, whitened=False) == given  # the user's value wins, however written
    assert get_method("kmeans").options_for({"n_init": 3}, whitened=False) == {"n_init": 3}

    x, y = digits_1797
    clusterer = ImageClusterer(n_clusters=10, progress=False).fit(x[:600], y[:600])
    assert clusterer.fit_info_["kmeans_below_agreement"] == 0.0
    assert clusterer.fit_info_["partition_from"] == "layouts"
    chosen = ImageClusterer(n_clusters=10, progress=False, method_options={"kmeans_below_agreement": 0.99,
                                                                           "kmeans_switch_min_rows": 0}
                            ).fit(x[:600], y[:600])
    assert chosen.fit_info_["kmeans_below_agreement"] == 0.99 and chosen.fit_info_["partition_from"] == "k-means"
