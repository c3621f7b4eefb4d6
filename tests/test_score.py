"""The label-free partition score (imgclust.score) on real data: scikit-learn's 1,797 digit images (8x8 pixels as
features) with their true classes as the planted partition."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from imgclust.errors import ImgclustError
from imgclust.score import partition_score


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y.astype(np.int64)


def test_planted_partition_scores_far_above_a_random_relabelling(digits):
    x, y = digits
    planted = partition_score(x, y)
    shuffled = partition_score(x, np.random.default_rng(0).permutation(y))
    assert planted.kappa > 0.8
    assert abs(shuffled.kappa) < 0.1
    assert planted.n_clusters == 10 and planted.n_samples == len(y) and planted.note is None


def test_partitions_that_are_half_right_score_in_between(digits):
    x, y = digits
    rng = np.random.default_rng(0)
    half = y.copy()
    noisy = rng.random(len(y)) < 0.5
    half[noisy] = rng.integers(0, 10, noisy.sum())
    scores = [partition_score(x, labels).kappa for labels in (y, half, rng.permutation(y))]
    assert scores[0] > scores[1] > scores[2]


def test_chance_correction_makes_k_comparable(digits):
    x, y = digits
    rng = np.random.default_rng(1)
    two, ten = (partition_score(x, rng.integers(0, k, len(y))) for k in (2, 10))
    # raw accuracy of a random partition is about 1/K; kappa is about 0 for both
    assert two.accuracy > 0.4 and ten.accuracy < 0.2
    assert abs(two.kappa) < 0.1 and abs(ten.kappa) < 0.1
    # a correct coarser partition (classes merged in pairs, K=5) is rated like the planted one, not like chance
    merged = partition_score(x, y // 2)
    assert abs(merged.kappa - partition_score(x, y).kappa) < 0.1


def test_deterministic_for_a_seed(digits):
    x, y = digits
    labels = np.where(np.random.default_rng(2).random(len(y)) < 0.3, 0, y)
    first, again = partition_score(x, labels, seed=3), partition_score(x, labels, seed=3)
    assert first == again
    other = partition_score(x, labels, seed=4)
    assert abs(other.kappa - first.kappa) < 0.05  # other folds, nearly the same score


def test_subsample_bounds_the_rows_scored(digits):
    x, y = digits
    score = partition_score(x, y, max_samples=500)
    assert score.n_samples == 500 and score.kappa > 0.7


def test_degenerate_partitions_give_a_defined_low_score(digits):
    x, y = digits
    single = partition_score(x, np.zeros(len(y), dtype=np.int64))
    assert single.kappa == 0.0 and single.n_clusters == 1 and "one cluster" in single.note
    # a cluster of one image: defined, flagged, and about the planted partition's score
    lonely = y.copy()
    lonely[0] = 10
    with_singleton = partition_score(x, lonely)
    assert np.isfinite(with_singleton.kappa) and with_singleton.n_clusters == 11
    assert "1 row" in with_singleton.note
    assert abs(with_singleton.kappa - partition_score(x, y).kappa) < 0.02
    # every image its own cluster
    singletons = partition_score(x[:5], np.arange(5))
    assert singletons.kappa == 0.0 and "one row" in singletons.note
    # three images, two clusters: one fold trains on a single cluster
    tiny = partition_score(x[:3], np.array([0, 0, 1]))
    assert np.isfinite(tiny.kappa) and tiny.kappa <= 0.0


def test_each_space_is_scored_and_averaged(digits):
    x, y = digits
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    score = partition_score(np.hstack([x, noise]), y, spaces=[(0, 64), (64, 128)])
    assert len(score.per_space) == 2
    assert score.per_space[0] > 0.8 and abs(score.per_space[1]) < 0.1
    assert score.kappa == pytest.approx(np.mean(score.per_space))


@pytest.mark.parametrize("classifier", ["logistic", "ridge", "knn"])
def test_every_classifier_ranks_planted_over_random(digits, classifier):
    x, y = digits
    assert partition_score(x, y, classifier=classifier).kappa > 0.8
    assert abs(partition_score(x, np.random.default_rng(0).permutation(y), classifier=classifier).kappa) < 0.1


def test_bad_input_is_a_clear_error(digits):
    x, y = digits
    with pytest.raises(ImgclustError, match="labels must be"):
        partition_score(x, y[:-1])
    with pytest.raises(ImgclustError, match="NaN"):
        bad = x.copy()
        bad[0, 0] = np.nan
        partition_score(bad, y)
    with pytest.raises(ImgclustError, match="column ranges"):
        partition_score(x, y, spaces=[(0, 100)])
    with pytest.raises(ImgclustError, match="classifier"):
        partition_score(x, y, classifier="svm")


# -- --method auto: the candidates' partitions compared by the score ----------------------------------------

def _fit_auto(x, y, tmp_path, options):
    from imgclust import ImageClusterer

    clusterer = ImageClusterer(n_clusters=10, method="auto", method_options=options, device="cpu", progress=False)
    labels = clusterer.fit_predict(x, y)
    clusterer.save(tmp_path)
    return clusterer, labels


def test_auto_keeps_the_candidate_with_the_best_score_and_saves_the_winner(digits, tmp_path):
    from imgclust import ImageClusterer

    x, y = digits[0][:600], digits[1][:600]
    clusterer, labels = _fit_auto(x, y, tmp_path, {"candidates": "kmeans,icbpl", "n_restarts": 1})
    info = clusterer.fit_info_
    scores = {c["method"]: c["score"] for c in info["candidates"]}
    assert list(scores) == ["kmeans", "icbpl"]
    assert info["winner"] == max(scores, key=scores.get) and info["score"] == max(scores.values())
    assert clusterer.model_.method == info["winner"]  # the saved model is the winner's own
    for candidate in info["candidates"]:
        assert sum(candidate["cluster_sizes"]) == len(x) and candidate["fit_seconds"] >= 0
        assert "acc" not in candidate and "acc" not in candidate["score_detail"]  # label-free summary
    # the kept partition is the winner's, and it scores what auto recorded
    assert partition_score(x, labels, seed=0).kappa == pytest.approx(info["score"])
    reloaded = ImageClusterer.load(tmp_path)
    np.testing.assert_array_equal(reloaded.predict(x), labels)


@pytest.mark.slow
def test_auto_default_candidates_on_real_digits(digits, tmp_path):
    x, y = digits[0][:600], digits[1][:600]
    clusterer, labels = _fit_auto(x, y, tmp_path, {"n_restarts": 2})
    info = clusterer.fit_info_
    assert [c["method"] for c in info["candidates"]] == ["kmeans", "turtle", "icbpl"]
    assert info["score"] == max(c["score"] for c in info["candidates"]) > 0.5
    from imgclust import ImageClusterer

    np.testing.assert_array_equal(ImageClusterer.load(tmp_path).predict(x), labels)


def test_auto_refuses_unknown_candidates(digits):
    from imgclust import ImageClusterer

    with pytest.raises(ImgclustError, match="candidates"):
        ImageClusterer(n_clusters=3, method="auto", method_options={"candidates": "kmeans,dbscan"},
                       device="cpu", progress=False).fit(digits[0][:100])
