"""Exact duplicates by content, near-duplicates from the kNN graph (confirmed by perceptual hashes), outliers by
neighbour density."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from imgclust.data import PathListDataset
from imgclust.data.arrays import ArrayImageDataset
from imgclust.duplicates import (DEFAULT_COMBINED_COSINE, DEFAULT_HASH_COSINE, DEFAULT_HASH_DISTANCE,
                                 DEFAULT_NEAR_DUPLICATE_COSINE, Outlier, array_digests, dataset_digests,
                                 duplicate_rows, exact_duplicates, file_digests, find_duplicates_and_outliers,
                                 near_duplicates, outlier_rows, outliers, perceptual_hashes, robust_z)
from imgclust.errors import ImgclustError

from conftest import cifar10_subset_paths


def unit_cloud(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.shared_data
def test_file_digests_find_byte_copies_and_read_only_same_size_files(cifar10_dir, tmp_path):
    paths, _, _ = cifar10_subset_paths(cifar10_dir, "test", 3, ["cat"])
    files = []
    for p in paths:
        files.append(tmp_path / p.name)
        shutil.copyfile(p, files[-1])
    files.append(tmp_path / "copy.jpg")
    shutil.copyfile(paths[1], files[-1])
    (tmp_path / "gone.jpg").write_bytes(b"")
    digests = file_digests([*files, tmp_path / "missing.jpg"])
    groups = exact_duplicates(digests)
    assert [g.items for g in groups] == [(1, 3)] and groups[0].kind == "exact"
    assert digests[4] is None  # no file: no digest
    sizes = [f.stat().st_size for f in files[:3]]
    assert all(digests[i] is None for i in range(3) if i != 1 and sizes.count(sizes[i]) == 1)
    # a dataset of file paths uses the same digests; a subset keeps its rows' digests
    dataset = PathListDataset(files)
    assert dataset_digests(dataset) == digests[:4]
    assert dataset_digests(dataset.subset([3, 1])) == [digests[3], digests[1]]


def test_array_digests_hash_pixels():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    images[1, 0, 0, 0] = 1
    images[3] = images[1]
    groups = exact_duplicates(dataset_digests(ArrayImageDataset(images)))
    assert [g.items for g in groups] == [(0, 2), (1, 3)]
    assert array_digests(images[:1])[0] != array_digests(images[:1].reshape(1, 4, 16, 3))[0]


def test_near_duplicates_join_copies_and_leave_exact_pairs_to_the_exact_list():
    x = unit_cloud(50)
    noise = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32) * 0.05
    x = np.concatenate([x, x[[4, 4, 9]] + noise, x[[20]]])  # rows 50, 51 copy row 4; 52 copies 9; 53 = row 20
    groups = near_duplicates(x, threshold=0.95)
    assert [g.items for g in groups] == [(4, 50, 51), (9, 52), (20, 53)]
    assert all(0.95 <= g.similarity <= 1.0 for g in groups) and groups[2].similarity == pytest.approx(1.0)
    digests = [str(i) for i in range(53)] + ["20"]
    assert [g.items for g in near_duplicates(x, threshold=0.95, digests=digests)] == [(4, 50, 51), (9, 52)]
    assert near_duplicates(x, threshold=0.9999) == [near_duplicates(x, threshold=0.9999)[0]]  # only the exact copy
    with pytest.raises(ImgclustError):
        near_duplicates(x, threshold=1.5)


def test_outliers_are_the_sparse_points_and_a_clean_set_has_none():
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(16)
    cluster = centre + 0.3 * rng.standard_normal((200, 16))
    far = rng.standard_normal((3, 16)) * 3
    found = outliers(np.concatenate([cluster, far]).astype(np.float32), k=10)
    assert {o.item for o in found} == {200, 201, 202}
    assert all(o.z < -3.5 for o in found) and found == sorted(found, key=lambda o: o.density)
    assert outliers(cluster.astype(np.float32), k=10, z_threshold=5) == []
    assert robust_z(np.ones(5)).tolist() == [0.0] * 5


def test_one_search_gives_the_same_lists_as_separate_calls():
    rng = np.random.default_rng(3)
    x = np.concatenate([unit_cloud(80), unit_cloud(2, seed=9) * 4 + 10]).astype(np.float32)
    x = np.concatenate([x, x[[7]] + 0.01 * rng.standard_normal((1, 32)).astype(np.float32)])
    digests = [str(i) for i in range(len(x))]
    report = find_duplicates_and_outliers(x, digests, threshold=0.95)
    assert report.near == near_duplicates(x, 0.95, digests=digests) and [g.items for g in report.near] == [(7, 82)]
    assert report.outliers == outliers(x)


def test_find_duplicates_and_outliers_checks_the_digest_count():
    with pytest.raises(ImgclustError, match="digests"):
        find_duplicates_and_outliers(unit_cloud(5), digests=["a"] * 4)
    report = find_duplicates_and_outliers(unit_cloud(5), digests=["a", "b", "a", "c", "d"])
    assert [g.items for g in report.exact] == [(0, 2)]
    assert report.to_dict()["exact"][0]["items"] == [0, 2]
    items = [f"img{i}.jpg" for i in range(5)]
    assert duplicate_rows(report.exact, items) == [
        {"group": 1, "kind": "exact", "similarity": 1.0, "item": "img0.jpg"},
        {"group": 1, "kind": "exact", "similarity": 1.0, "item": "img2.jpg"}]
    assert outlier_rows([Outlier(3, 0.1, -4.0)], items) == [{"rank": 1, "item": "img3.jpg", "density": 0.1,
                                                            "z": -4.0}]


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def pairs_at_cosines(cosines: list[float], d: int = 32) -> np.ndarray:
    """Rows 2i, 2i+1: two unit vectors with cosine ``cosines[i]``, orthogonal to every other pair."""
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((d, 2 * len(cosines))))[0].T
    return np.concatenate([np.stack([u, c * u + np.sqrt(1 - c**2) * v])
                           for c, u, v in zip(cosines, basis[::2], basis[1::2])]).astype(np.float32)


def test_hashes_confirm_neighbours_the_features_alone_would_miss():
    """Features at a cosine between the hash cosine and the combined cosine: near only when the hashes are
    within the Hamming distance; a missing hash never confirms; features alone keep today's rule."""
    cosine = (DEFAULT_HASH_COSINE + min(DEFAULT_COMBINED_COSINE, DEFAULT_NEAR_DUPLICATE_COSINE)) / 2
    x = pairs_at_cosines([cosine, 0.999, DEFAULT_HASH_COSINE - 0.05])
    close = f"{(1 << DEFAULT_HASH_DISTANCE) - 1:016x}"  # DEFAULT_HASH_DISTANCE bits away from 0
    far = f"{(1 << (DEFAULT_HASH_DISTANCE + 1)) - 1:016x}"
    zero = "0" * 16
    assert near_duplicates(x, k=1) == near_duplicates(x, k=1, hashes=None) and \
        [g.items for g in near_duplicates(x, k=1)] == [(2, 3)]
    assert [g.items for g in near_duplicates(x, k=1, hashes=[zero, close, zero, far, zero, zero])] == [(0, 1), (2, 3)]
    assert [g.items for g in near_duplicates(x, k=1, hashes=[zero, far, zero, zero, zero, zero])] == [(2, 3)]
    assert [g.items for g in near_duplicates(x, k=1, hashes=[None, zero, zero, zero, zero, zero])] == [(2, 3)]
    # equal hashes below the hash cosine (two flat images of different things) stay apart
    assert (4, 5) not in [g.items for g in near_duplicates(x, k=1, hashes=[zero] * 6)]
    report = find_duplicates_and_outliers(x, hashes=[zero, close, zero, far, zero, zero])
    assert [g.items for g in report.near] == [(0, 1), (2, 3)]
    assert report.near_duplicate_threshold == DEFAULT_COMBINED_COSINE and "hash" in report.near_duplicate_rule
    plain = find_duplicates_and_outliers(x)
    assert plain.near_duplicate_threshold == DEFAULT_NEAR_DUPLICATE_COSINE and "hash" not in plain.near_duplicate_rule
    with pytest.raises(ImgclustError, match="perceptual hashes for"):
        find_duplicates_and_outliers(x, hashes=[zero] * 5)
    with pytest.raises(ImgclustError, match="hex"):
        near_duplicates(x, hashes=["not a hash"] * 6)


@pytest.mark.shared_data
def test_perceptual_hashes_survive_re_encoding_resizing_and_brightening_of_real_photos(cifar10_dir, tmp_path):
    paths, _, _ = cifar10_subset_paths(cifar10_dir, "test", 4, ["cat", "ship", "frog"])
    image = Image.open(paths[0]).convert("RGB")
    edits = [tmp_path / "reencoded.jpg", tmp_path / "resized.png", tmp_path / "brightened.png"]
    image.save(edits[0], "JPEG", quality=50)
    image.resize((24, 24), Image.Resampling.BICUBIC).save(edits[1])
    ImageEnhance.Brightness(image).enhance(1.3).save(edits[2])
    gone = tmp_path / "gone.jpg"
    shutil.copyfile(paths[1], gone)
    dataset = PathListDataset([*paths, *edits, gone])
    gone.unlink()  # decoded for the features, then deleted: no hash
    hashes = perceptual_hashes(dataset)
    assert len(hashes) == len(dataset) and hashes[-1] is None
    assert all(len(h) == 16 for h in hashes[:-1])
    assert all(hamming(hashes[0], h) <= DEFAULT_HASH_DISTANCE for h in hashes[12:15])
    assert all(hamming(hashes[i], hashes[j]) > DEFAULT_HASH_DISTANCE for i in range(12) for j in range(i))
    # rows: one hash per feature row, in the feature rows' order
    assert perceptual_hashes(dataset, np.array([13, 0])) == [hashes[13], hashes[0]]
    assert perceptual_hashes(ArrayImageDataset(np.zeros((2, 8, 8, 3), np.uint8))) == ["0" * 16] * 2


@pytest.mark.shared_data
def test_default_rule_finds_edited_copies_of_real_photos(cifar10_dir, tmp_path):
    """Real CIFAR-10 photos with a JPEG-quality-50, a cropped and a brightened copy: with hashes the default rule
    pairs each copy with its original and nothing else; features alone miss the re-encode."""
    from imgclust.backbones import create_backbone
    from imgclust.features import extract_features

    paths, _, _ = cifar10_subset_paths(cifar10_dir, "test", 3, ["cat", "dog", "automobile", "truck"])
    image = Image.open(paths[0]).convert("RGB")
    cropped, brightened, reencoded = tmp_path / "cropped.png", tmp_path / "brightened.png", tmp_path / "q50.jpg"
    image.crop((3, 3, image.width, image.height)).save(cropped)
    ImageEnhance.Brightness(Image.open(paths[5]).convert("RGB")).enhance(1.25).save(brightened)
    Image.open(paths[4]).convert("RGB").save(reencoded, "JPEG", quality=50)  # cosine ~0.78
    dataset = PathListDataset([*paths, cropped, brightened, reencoded])
    fs = extract_features(dataset, create_backbone("efficientnet_lite0"), use_cache=False, batch_size=15,
                          num_workers=0, progress=False)
    features = np.asarray(fs.features)
    hashes = perceptual_hashes(dataset, fs.valid_indices)
    report = find_duplicates_and_outliers(features, dataset_digests(dataset), hashes=hashes)
    assert [g.items for g in report.near] == [(0, 12), (4, 14), (5, 13)] and report.exact == []
    assert [g.items for g in near_duplicates(features)] == [(0, 12), (5, 13)]
    asked: list[list[int]] = []

    def lazy(rows):
        asked.append(sorted(int(r) for r in rows))
        return perceptual_hashes(dataset, fs.valid_indices[rows])

    lazily = find_duplicates_and_outliers(features, dataset_digests(dataset), hashes=lazy)
    assert [g.items for g in lazily.near] == [(0, 12), (4, 14), (5, 13)]  # the same groups...
    assert len(asked) == 1 and 4 in asked[0] and 14 in asked[0] and len(asked[0]) < len(paths) + 3  # ...fewer decodes


def test_file_digests_never_open_a_pipe(tmp_path):
    """A named pipe beside the images (the robustness suite plants one) must not block the exact-duplicate check."""
    import os

    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    same = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for path in same:
        path.write_bytes(b"same bytes")
    digests = file_digests([pipe, *same])
    assert digests[0] is None and digests[1] == digests[2] is not None
