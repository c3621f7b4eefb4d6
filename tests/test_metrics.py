"""Clustering metrics: hand-worked cases, scikit-learn parity and label-permutation invariance."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

from imgclust.errors import ImgclustError
from imgclust.metrics import (cluster_accuracy, cluster_sizes, contingency, evaluate, hungarian_mapping,
                              overclustering_accuracy)


def test_permuted_labels_score_perfectly():
    y_true = np.array([0, 0, 1, 1, 2, 2, 3])
    y_pred = np.array([2, 2, 0, 0, 3, 3, 1])
    result = evaluate(y_true, y_pred)
    assert result["acc"] == result["acc_majority"] == 1.0
    assert result["nmi"] == pytest.approx(1.0) and result["ari"] == pytest.approx(1.0)
    assert result["mapping"] == {0: 1, 1: 3, 2: 0, 3: 2}


def test_three_classes_by_hand():
    # class×cluster counts: class 0 → {c2: 1, c0: 1}; class 1 → {c0: 2}; class 2 → {c1: 1, c2: 1}.
    # Of the 6 one-to-one maps, only c2→0, c0→1, c1→2 reaches 1 + 2 + 1 = 4 correct.
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [2, 0, 0, 0, 1, 2]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert hungarian_mapping(y_true, y_pred) == {0: 1, 1: 2, 2: 0}
    # Majority: c0 → class 1 (2), c1 → class 2 (1), c2 → a tie at 1: also 4.
    assert overclustering_accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    np.testing.assert_array_equal(contingency(y_true, y_pred), [[1, 0, 1], [2, 0, 0], [0, 1, 1]])
    result = evaluate(y_true, y_pred)
    assert result["confusion_clusters"] == [2, 0, 1]
    assert result["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # matched counts on the diagonal
    assert result["cluster_sizes"] == [3, 1, 2]


def test_more_clusters_than_classes():
    # Cluster 1 holds one sample of class 0 and stays unmatched one-to-one, but majority maps it to class 0.
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [0, 0, 1, 2, 2, 2]
    result = evaluate(y_true, y_pred)
    assert result["acc"] == pytest.approx(5 / 6)
    assert result["acc_majority"] == 1.0
    assert result["mapping"] == {0: 0, 2: 1}
    assert result["confusion_clusters"] == [0, 2, 1]
    assert result["confusion"] == [[2, 0, 1], [0, 3, 0]]
    assert (result["n_classes"], result["n_clusters"]) == (2, 3)


def test_fewer_clusters_than_classes():
    y_true = [0, 1, 2, 0, 1, 2]
    y_pred = [0, 0, 1, 0, 0, 1]
    result = evaluate(y_true, y_pred)
    assert result["acc"] == pytest.approx(4 / 6)  # two classes share cluster 0: one of them gets no cluster
    assert len(result["mapping"]) == 2
    assert np.array(result["confusion"]).shape == (3, 2)


def test_unknown_labels_are_left_out_but_counted_in_sizes():
    result = evaluate([0, 0, 1, 1, -1, -1], [0, 0, 1, 1, 0, 1])
    assert result["acc"] == 1.0
    assert (result["n_samples"], result["n_unlabeled"]) == (4, 2)
    assert result["cluster_sizes"] == [3, 3]
    assert np.array(result["confusion"]).sum() == 4


def test_empty_clusters_and_class_names_widen_the_tables():
    result = evaluate([0, 0, 1, 1], [0, 0, 3, 3], n_clusters=5, class_names=["a", "b", "c"])
    assert result["cluster_sizes"] == [2, 0, 0, 2, 0]
    assert np.array(result["confusion"]).shape == (3, 5)
    assert result["n_classes"] == 3 and result["class_names"] == ["a", "b", "c"]
    np.testing.assert_array_equal(cluster_sizes([0, 0, 3, 3], 5), [2, 0, 0, 2, 0])


def test_result_is_json_ready():
    rng = np.random.default_rng(0)
    result = evaluate(rng.integers(0, 4, 50), rng.integers(0, 6, 50))
    assert json.loads(json.dumps(result)) == {**result, "mapping": {str(k): v for k, v in result["mapping"].items()}}


def test_sklearn_parity():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 7, 300))
    result = evaluate(y_true, y_pred)
    assert result["nmi"] == pytest.approx(normalized_mutual_info_score(y_true, y_pred))  # arithmetic (default)
    assert result["ari"] == pytest.approx(adjusted_rand_score(y_true, y_pred))
    assert result["ami"] == pytest.approx(adjusted_mutual_info_score(y_true, y_pred))


@pytest.mark.parametrize("y_true, y_pred, n_clusters, class_names, message", [
    ([0, 1, 2], [0, 1], None, None, "3 labels but y_pred has 2"),
    ([0, 1], [0, -1], None, None, "cluster labels must be 0..K-1"),
    ([0, -2], [0, 1], None, None, "-1 for unknown"),
    ([-1, -1], [0, 1], None, None, "unknown label -1"),
    ([0, 1], [0.5, 1.0], None, None, "must be integers"),
    ([0, 1], [0, 4], 3, None, "n_clusters is 3"),
    ([0, 2], [0, 1], None, ["a", "b"], "only 2 class names"),
    ([], [], None, None, "no samples"),
    ([[0, 1]], [[0, 1]], None, None, "1-D"),
])
def test_bad_input_raises(y_true, y_pred, n_clusters, class_names, message):
    with pytest.raises(ImgclustError, match=message) as info:
        evaluate(y_true, y_pred, n_clusters=n_clusters, class_names=class_names)
    assert info.value.fix


def test_whole_float_labels_are_accepted():
    assert cluster_accuracy(np.array([0.0, 1.0]), np.array([1.0, 0.0])) == 1.0


def _brute_force_acc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best one-to-one map by trying every injection (tiny K and C only)."""
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    best = 0
    small, large = (clusters, classes) if len(clusters) <= len(classes) else (classes, clusters)
    for image in itertools.permutations(large, len(small)):
        pairs = zip(small, image) if len(clusters) <= len(classes) else zip(image, small)
        best = max(best, sum(int(np.sum((y_pred == k) & (y_true == c))) for k, c in pairs))
    return best / len(y_true)


labelings = st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 3), min_size=n, max_size=n), st.lists(st.integers(0, 4), min_size=n, max_size=n)))


@settings(max_examples=60, deadline=None)
@given(labelings, st.randoms(use_true_random=False))
def test_invariant_to_cluster_relabelling(pair, random):
    y_true, y_pred = map(np.array, pair)
    permutation = list(range(5))
    random.shuffle(permutation)
    relabelled = np.array(permutation)[y_pred]
    a = evaluate(y_true, y_pred, n_clusters=5)
    b = evaluate(y_true, relabelled, n_clusters=5)
    for key in ("acc", "acc_majority", "nmi", "ari", "ami"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)
    assert sorted(a["cluster_sizes"]) == sorted(b["cluster_sizes"])
    assert a["acc"] <= a["acc_majority"] + 1e-12
    assert a["acc"] == pytest.approx(np.trace(np.array(a["confusion"])) / a["n_samples"])
    assert a["acc"] == pytest.approx(_brute_force_acc(y_true, y_pred))
