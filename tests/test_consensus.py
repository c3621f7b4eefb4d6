"""Consensus of restarts: the one-hot k-means consensus, its model, and ICBPL's n_restarts end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from imgclust import ImageClusterer
from imgclust.errors import ImgclustError
from imgclust.methods.consensus import ConsensusModel, consensus_partition, mean_pairwise_nmi, one_hot_codes
from imgclust.metrics import evaluate


def test_consensus_recovers_a_partition_from_permuted_and_noisy_copies() -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 50)
    labelings = []
    for r in range(5):
        noisy = rng.permutation(4)[truth]               # same partition, other cluster numbers
        flip = rng.random(len(truth)) < 0.2             # 20 % of the samples moved at random in each copy
        noisy[flip] = rng.integers(0, 4, flip.sum())
        labelings.append(noisy)
    single = [evaluate(truth, labels, n_clusters=4)["acc"] for labels in labelings]
    consensus = consensus_partition(labelings, 4, seed=0)
    assert evaluate(truth, consensus.labels, n_clusters=4)["acc"] >= 0.99 > 0.95 > max(single)
    assert consensus.centres.shape == (4, 20)
    assert 0.3 < mean_pairwise_nmi(labelings) < 1.0
    with pytest.raises(ImgclustError, match="labels outside 0..3"):
        one_hot_codes([truth, truth + 1], 4)


def test_consensus_model_reproduces_its_labels_and_agreement_is_the_confidence() -> None:
    a = np.array([0, 0, 1, 1, 2, 2])
    b = np.array([1, 1, 0, 0, 2, 2])
    c = np.array([0, 0, 1, 1, 2, 1])                    # disagrees on the last sample
    consensus = consensus_partition([a, b, c], 3, seed=0)

    class Fixed:                                        # a stand-in member model returning fixed labels
        input_encoder = "backbone"
        method = "fixed"

        def __init__(self, labels: np.ndarray):
            self.labels = labels

        def assign(self, inputs, device="cpu"):
            return type("A", (), {"labels": self.labels[np.asarray(inputs, dtype=int)]})()

    model = ConsensusModel([Fixed(a), Fixed(b), Fixed(c)], consensus.centres)
    assignment = model.assign(np.arange(6))
    np.testing.assert_array_equal(assignment.labels, consensus.labels)
    assert np.allclose(assignment.confidence[:4], 1.0) and assignment.confidence[5] < 1.0
    assert np.allclose(assignment.distance[:4], 0.0, atol=1e-6) and assignment.distance[5] > 0


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()                                # real handwritten digits shipped with scikit-learn
    return (data.data / 16.0).astype(np.float32), data.target


ICBPL_SMALL = {"epochs": 8, "latent_dim": 32, "hidden_dim": 64, "n_neighbors": 10, "progress": False}


def test_icbpl_restarts_combine_saves_and_predicts(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    single = ImageClusterer(n_clusters=10, method="icbpl", method_options=dict(ICBPL_SMALL), progress=False)
    single.fit(x)
    clusterer = ImageClusterer(n_clusters=10, method="icbpl", method_options={**ICBPL_SMALL, "n_restarts": 3},
                               run_dir=str(tmp_path / "run"), progress=False)
    clusterer.fit(x)
    assert isinstance(clusterer.model_, ConsensusModel) and len(clusterer.model_.members) == 3
    restarts = clusterer.fit_info_["restarts"]
    assert [r["seed"] for r in restarts] == [0, 1, 2]
    assert all((tmp_path / "run" / f"restart-{r}" / "checkpoints" / "last.pt").exists() for r in range(3))
    # restart 0 is the single run (seed + 0)
    member0 = clusterer.model_.members[0].assign(x).labels
    np.testing.assert_array_equal(member0, single.labels_)
    members = [evaluate(y, m.assign(x).labels, n_clusters=10)["acc"] for m in clusterer.model_.members]
    assert evaluate(y, clusterer.labels_, n_clusters=10)["acc"] >= min(members)
    assert 0 < clusterer.fit_info_["restart_agreement_nmi"] <= 1
    # saved and reloaded, it assigns the training samples as in training
    clusterer.save(tmp_path / "saved")
    again = ImageClusterer.load(tmp_path / "saved")
    np.testing.assert_array_equal(again.predict(x), clusterer.labels_)
    # resuming the finished restarts trains nothing and gives the same consensus
    resumed = ImageClusterer(n_clusters=10, method="icbpl", method_options={**ICBPL_SMALL, "n_restarts": 3},
                             run_dir=str(tmp_path / "run"), resume=True, progress=False).fit(x)
    assert [r["resumed_from"] for r in resumed.fit_info_["restarts"]] == [8, 8, 8]
    np.testing.assert_array_equal(resumed.labels_, clusterer.labels_)


def test_restarts_are_refused_when_fine_tuning() -> None:
    from imgclust.methods.base import FitContext
    from imgclust.methods.icbpl import fit_icbpl

    context = FitContext(features=np.zeros((4, 3), np.float32), n_clusters=2,
                         options={"trainable_blocks": 1, "n_restarts": 2})
    with pytest.raises(ImgclustError, match="n_restarts=2 is not possible with trainable_blocks=1"):
        fit_icbpl(context)
