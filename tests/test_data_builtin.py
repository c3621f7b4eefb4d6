"""Built-in data sets, each read from tiny fake files written in its official layout."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from imgclust.data import BUILTIN_DATASETS, ArrayImageDataset, load_builtin, load_source
from imgclust.data.builtin import default_roots
from imgclust.errors import ImgclustError


def _planar(images: np.ndarray) -> np.ndarray:
    """(N,32,32,3) -> CIFAR rows (N,3072): the red plane, then green, then blue, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _dump(path: Path, obj: object, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _rng_images(n: int, side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _cifar10(root: Path, protocol: int = 2) -> dict[str, np.ndarray]:
    """Official layout root/cifar-10-batches-py/, 20 images per batch, bytes keys like the Python 2 originals."""
    folder = root / "cifar-10-batches-py"
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = _rng_images(20, seed=i)
        labels = [(j + i) % 10 for j in range(20)]
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": _planar(images),
                              b"filenames": [f"{j}.png".encode() for j in range(20)]}, protocol)
        written[name] = images
    _dump(folder / "batches.meta", {b"label_names": [f"class{k}".encode() for k in range(10)],
                                    b"num_cases_per_batch": 20, b"num_vis": 3072}, protocol)
    return written


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10(tmp_path: Path, protocol: int) -> None:
    written = _cifar10(tmp_path, protocol)
    train = load_builtin("cifar10", "train", root=tmp_path)
    assert isinstance(train, ArrayImageDataset) and train.name == "cifar10:train"
    assert train.images.shape == (100, 32, 32, 3)
    np.testing.assert_array_equal(train.images[20:40], written["data_batch_2"])
    assert train.labels[20:23].tolist() == [1, 2, 3] and train.class_names[3] == "class3"
    test = load_builtin("cifar10", "test", root=tmp_path / "cifar-10-batches-py")  # files directly in root
    np.testing.assert_array_equal(np.asarray(test.load(5)), written["test_batch"][5])


def test_cifar10_numpy1_global_names(tmp_path: Path) -> None:
    """The official files name numpy.core.multiarray (numpy 1.x); numpy 2 writes numpy._core.multiarray."""
    _cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert len(load_builtin("cifar10", "test", root=tmp_path)) == 20


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    _cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"data": Evil(), b"labels": []})
    with pytest.raises(ImgclustError) as info:
        load_builtin("cifar10", "train", root=tmp_path)
    assert "data_batch_3" in info.value.message and "system" in info.value.message
    assert "cifar-10-python.tar.gz" in info.value.fix
    assert not marker.exists()


def test_corrupt_cifar_batch(tmp_path: Path) -> None:
    _cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(ImgclustError, match="not a valid CIFAR data file"):
        load_builtin("cifar10", "test", root=tmp_path)
    _dump(batch, {b"data": np.zeros((2, 10), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(ImgclustError, match="unexpected content"):
        load_builtin("cifar10", "test", root=tmp_path)


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    for split, n in [("train", 10), ("test", 4)]:
        _dump(folder / split, {b"data": _planar(_rng_images(n)), b"fine_labels": [99 - i for i in range(n)],
                               b"coarse_labels": [19 - i for i in range(n)], b"filenames": [b"x"] * n})
    _dump(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    fine = load_builtin("cifar100", "train", root=tmp_path)
    assert fine.images.shape == (10, 32, 32, 3) and fine.labels[:2].tolist() == [99, 98]
    assert len(fine.class_names) == 100 and fine.class_names[99] == "fine99"
    coarse = load_builtin("cifar100-20", "test", root=tmp_path)
    assert coarse.name == "cifar100-20:test" and coarse.labels.tolist() == [19, 18, 17, 16]
    assert len(coarse.class_names) == 20


def test_stl10_column_major_images_come_back_upright(tmp_path: Path) -> None:
    images = np.zeros((3, 96, 96, 3), dtype=np.uint8)
    images[:, :10, :, 0] = 255          # a red band along the top
    images[:, :, :5, 1] = 255           # a green band down the left side
    images[2, 90:, 90:, 2] = 255        # a blue corner at the bottom right of the last image
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    # the official files are MATLAB exports: each image column-major, i.e. row index fastest
    (folder / "train_X.bin").write_bytes(b"".join(img.tobytes(order="F") for img in images))
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 3]))
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(1, 11)) + "\n")
    ds = load_builtin("stl10", "train", root=tmp_path)
    np.testing.assert_array_equal(ds.images, images)
    assert ds.labels.tolist() == [0, 9, 2] and ds.class_names[9] == "c10"
    top_left = np.asarray(ds.load(2))
    assert tuple(top_left[0, 50]) == (255, 0, 0) and tuple(top_left[50, 0]) == (0, 255, 0)
    assert tuple(top_left[95, 95]) == (0, 0, 255)

    (folder / "unlabeled_X.bin").write_bytes(images[:2].tobytes())
    unlabeled = load_builtin("stl10", "unlabeled", root=tmp_path)
    assert len(unlabeled) == 2 and unlabeled.labels is None
    (folder / "test_X.bin").write_bytes(b"\0" * 1000)
    (folder / "test_y.bin").write_bytes(b"\1")
    with pytest.raises(ImgclustError, match="not a whole number of 3x96x96 images"):
        load_builtin("stl10", "test", root=tmp_path)


def _idx(data: np.ndarray) -> bytes:
    return b"\0\0\x08" + bytes([data.ndim]) + struct.pack(f">{data.ndim}I", *data.shape) + data.tobytes()


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files(tmp_path: Path, gz: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    for name, data in [("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)]:
        blob = _idx(data)
        (tmp_path / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    ds = load_builtin("fashion-mnist", "test", root=tmp_path)
    np.testing.assert_array_equal(ds.images, images)
    assert ds.labels.tolist() == list(range(7)) and ds.class_names[0] == "T-shirt/top"
    assert ds.load(0).mode == "RGB" and ds.load(0).size == (28, 28)
    assert load_builtin("mnist", "test", root=tmp_path).class_names == [str(d) for d in range(10)]


def test_truncated_idx_file(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros((5, 28, 28), np.uint8))[:-10])
    (tmp_path / "raw" / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(5, np.uint8)))
    with pytest.raises(ImgclustError, match="truncated"):
        load_builtin("mnist", "train", root=tmp_path)


def test_missing_files_say_what_where_and_from_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLUST_DATA", str(tmp_path / "data"))
    with pytest.raises(ImgclustError) as info:
        load_builtin("cifar10", "test")
    expected_dir = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    assert "test_batch" in info.value.message and str(expected_dir) in info.value.message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in info.value.fix
    assert str(expected_dir / "test_batch") in info.value.fix
    with pytest.raises(ImgclustError) as info:
        load_builtin("stl10", "unlabeled", root=tmp_path / "stl")
    assert "unlabeled_X.bin" in info.value.message and "stl10_binary.tar.gz" in info.value.fix
    with pytest.raises(ImgclustError, match=r"train-images-idx3-ubyte\[\.gz\]"):
        load_source("builtin:mnist", data_root=tmp_path / "elsewhere")


def test_default_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGCLUST_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = BUILTIN_DATASETS["fashion-mnist"]
    assert default_roots(spec) == [Path("/usr/share/datasets/fashion-mnist"),
                                   tmp_path / ".cache" / "imgclust" / "data" / "fashion-mnist"]
    monkeypatch.setenv("IMGCLUST_DATA", str(tmp_path / "d"))
    assert default_roots(BUILTIN_DATASETS["cifar100-20"])[0] == tmp_path / "d" / "cifar100"
    # data_root (the CLI's --data-root) wins over the environment
    _cifar10(tmp_path / "mine" / "cifar10")
    assert len(load_source("builtin:cifar10:test", data_root=tmp_path / "mine")) == 20


def test_unknown_name_and_split() -> None:
    with pytest.raises(ImgclustError, match="unknown built-in") as info:
        load_builtin("imagenet")
    assert "cifar100-20" in info.value.fix
    with pytest.raises(ImgclustError, match="no split 'unlabeled'") as info:
        load_builtin("cifar10", "unlabeled")
    assert "train, test" in info.value.fix


def test_digits_ships_with_scikit_learn() -> None:
    ds = load_builtin("digits")
    assert ds.name == "digits:all" and ds.images.shape == (1797, 8, 8) and ds.images.dtype == np.uint8
    assert ds.images.max() == 255 and ds.class_names == [str(d) for d in range(10)]
    assert np.bincount(ds.labels).tolist()[:3] == [178, 182, 177]
    img = ds.load(0)
    assert img.mode == "RGB" and img.size == (8, 8)
    with pytest.raises(ImgclustError, match="no split 'test'"):
        load_builtin("digits", "test")
