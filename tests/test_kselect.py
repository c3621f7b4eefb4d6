"""Estimating K without labels (imgclust.kselect)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cifar10_subset_paths
from imgclust.errors import ImgclustError
from imgclust.kselect import (CRITERIA, DEFAULT_CRITERION, KSelection, estimate_k, format_curve, parse_k_range,
                              write_k_selection)


def _blobs(k: int, n_per: int = 40, dim: int = 32, spread: float = 0.15, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    x = centers[labels] + spread * rng.normal(size=(k * n_per, dim)) / np.sqrt(dim)
    return x.astype(np.float32), labels


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("true_k", [3, 7])
def test_every_criterion_finds_well_separated_blobs(criterion: str, true_k: int) -> None:
    x, _ = _blobs(true_k)
    sel = estimate_k(x, k_range=(2, 12), criterion=criterion, stability_pairs=2)
    assert sel.k == true_k, (criterion, sel.k_values, sel.scores)


def test_selection_is_complete_and_serialisable(tmp_path: Path) -> None:
    x, _ = _blobs(4, n_per=30)
    sel = estimate_k(x * 7.0, k_range="2:9", extra_criteria="all", stability_pairs=2)  # scale does not matter
    assert isinstance(sel, KSelection) and sel.criterion == DEFAULT_CRITERION and sel.k == 4
    assert sel.k_values == list(range(2, 10)) and len(sel.scores) == 8
    assert set(CRITERIA) <= set(sel.curves) and "inertia" in sel.curves
    assert all(sel.choice(c) == 4 for c in CRITERIA)
    paths = write_k_selection(tmp_path, sel, plot=True)
    saved = json.loads(paths["json"].read_text())
    assert saved["k"] == 4 and saved["k_values"][0] == 2 and saved["choices"]["eigengap"] == 4
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_curve(sel)
    assert "K estimated: 4" in text and "← chosen" in text


def test_deterministic() -> None:
    x, _ = _blobs(5, n_per=20, spread=0.6)
    a = estimate_k(x, k_range=(2, 10), seed=3)
    b = estimate_k(x, k_range=(2, 10), seed=3)
    assert a.k == b.k and a.scores == b.scores


def test_range_parsing_and_capping() -> None:
    assert parse_k_range(None) == (2, 30)
    assert parse_k_range("5:50") == (5, 50)
    assert parse_k_range((3, 4)) == (3, 4)
    for bad in ("1:10", "8:4", "x", "2:3:4"):
        with pytest.raises(ImgclustError) as err:
            parse_k_range(bad)
        assert err.value.fix
    x, _ = _blobs(2, n_per=6)  # 12 rows: at most 12 // 3 = 4 clusters are tried
    assert estimate_k(x, k_range=(2, 30)).k_values == [2, 3, 4]
    with pytest.raises(ImgclustError, match="too few"):
        estimate_k(x[:5], k_range=(2, 30))
    with pytest.raises(ImgclustError, match="criterion"):
        estimate_k(x, criterion="nope")


def test_subsampling_caps_rows() -> None:
    x, _ = _blobs(3, n_per=100)
    sel = estimate_k(x, k_range=(2, 6), max_samples=120)
    assert sel.n_samples == 120 and sel.n_total == 300 and sel.k == 3


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_features_three_cifar_classes(cifar10_dir: Path, tmp_path: Path) -> None:
    """Features of 100 CIFAR-10 test images of each of 3 classes (the default backbone): K = 3 is found."""
    from imgclust.backbones import create_backbone
    from imgclust.data import PathListDataset
    from imgclust.features import extract_features

    paths, labels, _ = cifar10_subset_paths(cifar10_dir, "test", 100, ["airplane", "automobile", "bird"])
    backbone = create_backbone("efficientnet_lite0")
    dataset = PathListDataset(paths, draft_size=backbone.preprocess.input_size)
    feats = extract_features(dataset, backbone, cache_dir=tmp_path / "cache", progress=False).features
    sel = estimate_k(feats, k_range=(2, 15))
    assert sel.k == 3, format_curve(sel)
