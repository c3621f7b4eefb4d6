"""Augmentation-invariant whitening: the transform on real digits, and the estimator's fit/save/load/predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans

from imgclust import ImageClusterer
from imgclust.errors import ImgclustError
from imgclust.features.whitening import Whitening, whiten
from imgclust.metrics import cluster_accuracy


def _shifted(images: np.ndarray, seed: int) -> np.ndarray:
    """Each 8×8 digit moved by up to one pixel: the augmentation whose directions the whitening should shrink."""
    rng = np.random.default_rng(seed)
    moves = rng.integers(-1, 2, size=(len(images), 2))
    return np.stack([np.roll(im, tuple(m), axis=(0, 1)) for im, m in zip(images, moves)]).reshape(len(images), -1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_whitening_shrinks_what_augmentations_move_on_real_digits(digits_1797, single_thread) -> None:
    pixels, digits = digits_1797
    images = pixels.reshape(-1, 8, 8)
    views = [_shifted(images, seed) for seed in range(4)]
    sample = np.random.default_rng(0).choice(len(pixels), 500, replace=False)
    whitening = Whitening.fit(pixels, pixels[sample], [v[sample] for v in views])

    held_out_view = _shifted(images, 99)
    shuffle = np.random.default_rng(1).permutation(len(pixels))

    def own_over_other(transform) -> float:
        clean, view = transform(pixels), transform(held_out_view)
        return float(np.linalg.norm(clean - view, axis=1).mean() / np.linalg.norm(clean - view[shuffle], axis=1).mean())

    # A view lies nearer its own image, relative to other images, once the shift directions are divided down.
    assert own_over_other(whitening.apply) < own_over_other(_unit) - 0.003  # measured 0.812 against 0.819
    whitened = whitening.apply(pixels)
    assert np.allclose(np.linalg.norm(whitened, axis=1), 1.0, atol=1e-5)
    acc = [cluster_accuracy(digits, KMeans(10, n_init=10, random_state=s).fit_predict(x))
           for x in (_unit(pixels), whitened) for s in range(3)]
    # k-means does not lose from it (measured 0.802-0.825 against 0.793, depending on the threads and the draws).
    assert np.mean(acc[3:]) >= np.mean(acc[:3]), acc


def test_whiten_keeps_each_space_apart_and_saved_state_gives_the_same_rows(digits_1797) -> None:
    pixels, _ = digits_1797
    rng = np.random.default_rng(0)
    spaces = [(0, 64), (64, 128)]
    features = np.concatenate([pixels, pixels[:, ::-1] + 1.0], axis=1)
    whitenings = [Whitening.fit(features[:, a:b], features[:200, a:b],
                                [features[:200, a:b] + rng.normal(scale=0.5, size=(200, b - a)) for _ in range(2)])
                  for a, b in spaces]
    out = whiten(features, spaces, whitenings)
    assert out.shape == features.shape
    for a, b in spaces:  # each space L2-normalised on its own, as combined spaces are
        assert np.allclose(np.linalg.norm(out[:, a:b], axis=1), 1.0, atol=1e-5)
    state = {**whitenings[0].state("w.0"), **whitenings[1].state("w.1")}
    again = whiten(features, spaces, [Whitening.from_state(state, f"w.{i}") for i in range(2)])
    assert np.array_equal(out, again)
    with pytest.raises(ValueError, match="2 whitenings for 1 spaces"):
        whiten(features, spaces[:1], whitenings)


def test_estimator_whitens_for_feature_methods_and_predicts_the_same_after_load(
        cifar10_small_folder: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    clusterer = ImageClusterer(n_clusters=10, method="kmeans", cache_dir=cache, progress=False)
    assert clusterer.whitening_applies()  # auto: k-means clusters the features alone
    clusterer.fit(str(cifar10_small_folder))
    assert clusterer.whitening_ is not None and len(clusterer.whitening_) == 1
    assert clusterer.timings_["whitening"] > 0
    assert np.allclose(np.linalg.norm(clusterer.last_features_, axis=1), 1.0, atol=1e-4)

    clusterer.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model.json").read_text())["whitened_spaces"] == 1
    loaded = ImageClusterer.load(tmp_path / "model")
    loaded.set_params(cache_dir=cache, progress=False)
    assert loaded.whitening == "auto" and loaded.whitening_ is not None
    assert np.array_equal(loaded.predict(str(cifar10_small_folder)), clusterer.labels_)

    plain = ImageClusterer(n_clusters=10, method="kmeans", cache_dir=cache, progress=False, whitening="none")
    plain.fit(str(cifar10_small_folder))
    assert plain.whitening_ is None and "whitening" not in plain.timings_
    plain.save(tmp_path / "plain")
    assert ImageClusterer.load(tmp_path / "plain").whitening_ is None


def test_whitening_setting_is_checked_before_any_work() -> None:
    assert not ImageClusterer(method="icbpl").whitening_applies()  # trains on views of its own
    assert not ImageClusterer(method="turtle").whitening_applies()  # not measured: only when asked for
    assert ImageClusterer(method="turtle", whitening="augment").whitening_applies()
    assert ImageClusterer().whitening_applies()  # the default method
    with pytest.raises(ImgclustError, match="does not apply to --method icbpl"):
        ImageClusterer(method="icbpl", whitening="augment").check_params()
    with pytest.raises(ImgclustError, match="--whitening must be one of"):
        ImageClusterer(whitening="zca").check_params()
