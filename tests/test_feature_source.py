"""FeatureSource: one object for backbone(s) and extraction settings; several backbones as separate spaces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imgclust.augment import BatchAugment
from imgclust.backbones.base import Preprocess
from imgclust.data import PathListDataset
from imgclust.errors import ImgclustError
from imgclust.features import (BackboneSpec, Encoding, FeatureSet, FeatureSource, combine_spaces,
                               extract_features)
from imgclust.features.views import decode_all, extract_clean, extract_views

from conftest import cifar10_subset_paths
from test_features import _tiny_backbone


@pytest.fixture
def cifar_paths(cifar10_dir: Path) -> list[str]:
    paths, _, _ = cifar10_subset_paths(cifar10_dir, "test", 3)
    return [str(p) for p in paths]


def test_from_names_reads_comma_lists_and_pairs_weights() -> None:
    source = FeatureSource.from_names("efficientnet_lite0, efficientnet_lite2", weights=",lite2.safetensors",
                                      batch_size=8)
    assert source.backbones == (BackboneSpec("efficientnet_lite0"),
                                BackboneSpec("efficientnet_lite2", "lite2.safetensors"))
    assert source.space_names == ["efficientnet_lite0", "efficientnet_lite2:lite2.safetensors"]
    assert source.batch_size == 8
    assert FeatureSource.from_names(["resnet18"], weights="a,b.pth").backbones[0].weights == "a,b.pth"
    with pytest.raises(ImgclustError, match="2 weights given for 3 backbones") as info:
        FeatureSource.from_names("efficientnet_lite0,efficientnet_lite1,efficientnet_lite2", weights="a,b")
    assert "one --weights entry per backbone" in info.value.fix
    with pytest.raises(ImgclustError, match="empty backbone name"):
        FeatureSource.from_names("efficientnet_lite0,")


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 0}, "batch size must be an integer ≥ 1, got 0"),
    ({"batch_size": 2.5}, "batch size must be an integer ≥ 1"),
    ({"num_workers": -1}, "number of decoding workers must be an integer ≥ 0"),
    ({"shard_size": 0}, "shard size must be an integer ≥ 1"),
    ({"precision": "half"}, "unknown precision 'half'"),
    ({"engine": "tensorrt-magic"}, "unknown inference engine"),
])
def test_validate_refuses_bad_settings_before_any_work(settings: dict, message: str) -> None:
    with pytest.raises(ImgclustError, match=message):
        FeatureSource(**settings).validate()


def test_validate_refuses_a_cache_folder_under_a_file_and_unknown_backbones(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(ImgclustError, match="notes.txt is a file") as info:
        FeatureSource(cache_dir=a_file / "cache").validate()
    assert "--cache-dir" in info.value.fix
    with pytest.raises(ImgclustError, match="unknown backbone 'efficientnet_lite9'"):
        FeatureSource.from_names("efficientnet_lite0,efficientnet_lite9").validate()
    with pytest.raises(ImgclustError, match="weights file not found"):
        FeatureSource.from_names("efficientnet_lite0", weights=str(tmp_path / "missing.safetensors")).validate()
    with pytest.raises(ImgclustError, match="listed twice"):
        FeatureSource.from_names("efficientnet_lite0,efficientnet_lite0").validate()
    assert FeatureSource(cache_dir=tmp_path / "new" / "cache").validate().cache_dir == tmp_path / "new" / "cache"


def test_encoding_round_trips_its_id() -> None:
    for text, expected in [("backbone", Encoding("features")), ("trunk-2", Encoding("trunk", blocks=2)),
                           ("pixels-32", Encoding("pixels", size=32))]:
        assert Encoding.parse(text) == expected and expected.id == text
    for bad in ("trunk-0", "pixels-x", "features-3", "trunk"):
        with pytest.raises(ImgclustError, match="unknown model input"):
            Encoding.parse(bad)


def test_one_backbone_gives_exactly_the_cached_features(tmp_path: Path, cifar_paths: list[str]) -> None:
    source = FeatureSource.from_names("efficientnet_lite0", cache_dir=tmp_path, num_workers=0, progress=False)
    assert source.backbone() is source.backbone()  # built once
    encoded = source.encode(PathListDataset(cifar_paths))
    direct = extract_features(PathListDataset(cifar_paths, draft_size=224), source.backbone(), cache_dir=tmp_path,
                              num_workers=0, progress=False)
    np.testing.assert_array_equal(encoded.features, np.asarray(direct.features))
    assert encoded.spaces == [(0, 1280)] and encoded.space_names == ["efficientnet_lite0"]
    assert encoded.feature_sets[0].path == direct.path  # the same cache entry as before the source existed


@pytest.mark.slow
def test_two_backbones_are_separate_normalised_spaces_each_cached(tmp_path: Path, cifar_paths: list[str]) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = cifar_paths[:7] + [str(broken)] + cifar_paths[7:12]
    source = FeatureSource.from_names("efficientnet_lite0,efficientnet_lite2", cache_dir=tmp_path / "cache",
                                      num_workers=0, progress=False).validate()
    encoded = source.encode(PathListDataset(paths))
    assert encoded.features.shape == (12, 2560) and encoded.spaces == [(0, 1280), (1280, 2560)]
    assert encoded.valid_indices.tolist() == [i for i in range(13) if i != 7]
    assert [s["item"] for s in encoded.skipped] == [str(broken)]
    for i in range(2):
        np.testing.assert_allclose(np.linalg.norm(encoded.space(i), axis=1), 1.0, rtol=1e-5)
        alone = FeatureSource.from_names(source.backbones[i].name, cache_dir=tmp_path / "cache", num_workers=0,
                                         progress=False).encode(PathListDataset(paths))
        assert alone.feature_sets[0].path == encoded.feature_sets[i].path  # each backbone cached on its own
        expected = alone.features / np.linalg.norm(alone.features, axis=1, keepdims=True)
        np.testing.assert_allclose(encoded.space(i), expected, rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "cache").glob("*/manifest.json"))) == 2


def test_combine_spaces_keeps_rows_decoded_by_every_backbone() -> None:
    a = FeatureSet(np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], np.float32), np.array([0, 1, 3]),
                   [{"index": 2, "item": "c", "reason": "bad"}])
    b = FeatureSet(np.array([[2.0], [5.0], [-1.0]], np.float32), np.array([0, 2, 3]),
                   [{"index": 1, "item": "b", "reason": "bad"}])
    features, valid, skipped = combine_spaces([a, b])
    assert valid.tolist() == [0, 3]
    np.testing.assert_allclose(features, [[0.6, 0.8, 1.0], [0.0, 1.0, -1.0]])
    assert sorted(s["item"] for s in skipped) == ["b", "c"]


# -- views: what training consumes, from the source --------------------------------------------------------

def _tiny_source(tmp_path: Path, n_backbones: int = 1) -> FeatureSource:
    backbones = [_tiny_backbone(f"seed{i}") for i in range(n_backbones)]
    for i, backbone in enumerate(backbones):
        backbone.name = f"tiny-{i}"
    return FeatureSource.from_backbone(backbones, cache_dir=tmp_path / "cache", num_workers=0, progress=False)


def test_views_are_the_cache_entries_extract_features_makes(tmp_path: Path, cifar_paths: list[str]) -> None:
    dataset = PathListDataset(cifar_paths[:12])
    source = _tiny_source(tmp_path)
    augment = BatchAugment("simclr")
    views = extract_views(source, dataset, augment, n_views=2, seed=3)
    assert len(views) == 2 and views[0].shape == (12, 8) and not np.allclose(views[0], views[1])
    direct = extract_features(dataset, source.backbone(), cache_dir=tmp_path / "cache", augment=augment,
                              augment_id=augment.augment_id, view=1, seed=3, num_workers=0, progress=False)
    np.testing.assert_array_equal(views[1], np.asarray(direct.features))
    clean = extract_clean(source, dataset)
    np.testing.assert_array_equal(clean, source.encode(dataset).features)
    trunk = extract_clean(source, dataset, encoder=source.backbone().conv, encoder_id="conv", dtype="float16")
    assert trunk.dtype == np.float16 and trunk.shape == (12, 8, 14, 14)


def test_views_of_several_backbones_are_combined_like_encode(tmp_path: Path, cifar_paths: list[str]) -> None:
    dataset = PathListDataset(cifar_paths[:10])
    source = _tiny_source(tmp_path, n_backbones=2)
    [view] = extract_views(source, dataset, [BatchAugment("weak")], n_views=1, seed=0)
    assert view.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(view[:, 8:], axis=1), 1.0, rtol=1e-5)
    clean = extract_clean(source, dataset)
    np.testing.assert_array_equal(clean, source.encode(dataset).features)
    assert not np.allclose(view, clean)


def test_training_inputs_refuse_undecodable_rows(tmp_path: Path, cifar_paths: list[str]) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    dataset = PathListDataset(cifar_paths[:4] + [str(broken)])
    source = _tiny_source(tmp_path)
    with pytest.raises(ImgclustError, match="clean inputs: 1 of 5 training image") as info:
        extract_clean(source, dataset)
    assert "dataset.subset(valid_indices)" in info.value.fix
    with pytest.raises(ImgclustError, match="broken.jpg"):
        decode_all(source, dataset)
    images = decode_all(source, PathListDataset(cifar_paths[:4]))
    assert images.dtype == torch.uint8 and tuple(images.shape) == (4, 3, 16, 16)
    pixels = decode_all(Preprocess(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), PathListDataset(cifar_paths[:4]),
                        num_workers=0, progress=False)
    assert tuple(pixels.shape) == (4, 3, 32, 32)


def test_the_estimator_builds_its_feature_source_once_per_setting() -> None:
    from imgclust import ImageClusterer

    clusterer = ImageClusterer(backbone="efficientnet_lite0,efficientnet_lite2", weights=None, batch_size=16)
    source = clusterer.feature_source()
    assert clusterer.feature_source() is source and source.n_spaces == 2 and source.batch_size == 16
    clusterer.set_params(batch_size=8)
    assert clusterer.feature_source() is not source and clusterer.feature_source().batch_size == 8
