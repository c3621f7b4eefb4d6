"""Folders, path lists, arrays, .npy/.npz files, and load_source's dispatch between them."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cifar10_subset_paths
from imgclust.data import (ArrayImageDataset, EmbeddingDataset, FolderDataset, ImageDataset, PathListDataset,
                           load_array_file, load_source)
import imgclust.data.folder as folder_module
from imgclust.errors import BadImageError, ImgclustError


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, value, value)).save(path)
    return path


def _rel(dataset: FolderDataset) -> list[str]:
    return [Path(item).relative_to(dataset.root).as_posix() for item in dataset.items]


@pytest.fixture
def class_tree(tmp_path: Path, cifar10_dir: Path) -> tuple[Path, np.ndarray, list[str]]:
    """root/<class>/<file>.jpg with 5 real CIFAR-10 test images per class."""
    paths, labels, names = cifar10_subset_paths(cifar10_dir, "test", 5)
    root = tmp_path / "tree"
    for p in paths:
        (root / p.parent.name).mkdir(parents=True, exist_ok=True)
        (root / p.parent.name / p.name).write_bytes(p.read_bytes())
    return root, labels, names


# --- folders --------------------------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_class_folders_give_labels(class_tree) -> None:
    root, labels, names = class_tree
    ds = FolderDataset(root)
    assert len(ds) == 50 and isinstance(ds, ImageDataset)
    assert ds.class_names == names
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.labels.dtype == np.int64
    assert _rel(ds)[:2] == ["airplane/0000.jpg", "airplane/0001.jpg"]
    img = ds.load(7)
    assert img.mode == "RGB" and img.size == (32, 32)
    sub = ds.subset([0, 49])
    assert sub.labels.tolist() == [0, 9] and sub.load(1).size == (32, 32)


@pytest.mark.parametrize("layout", [
    ["a.png", "b.png"],                       # flat
    ["x/a.png", "y/deep/b.png"],              # nested deeper than one level
    ["a.png", "x/b.png", "y/c.png"],          # images directly in root as well
    ["only/a.png", "only/b.png"],             # a single class folder
])
def test_other_layouts_are_unlabelled(tmp_path: Path, layout: list[str]) -> None:
    for name in layout:
        _png(tmp_path / name)
    ds = FolderDataset(tmp_path)
    assert len(ds) == len(layout) and ds.labels is None and ds.class_names is None


def test_sorted_order_and_case_insensitive_extensions(tmp_path: Path) -> None:
    for name in ["b/2.PNG", "a.JPG", "b/10.png", "c.Jpeg", "b/1.webp", "a/z.tif", "notes.txt", "b/x.json"]:
        if name.endswith((".txt", ".json")):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text("not an image")
        else:
            _png(tmp_path / name)
    ds = FolderDataset(tmp_path)
    # sorted by path components, so a folder's contents stay together: "a/z.tif" before "a.JPG"
    assert _rel(ds) == ["a/z.tif", "a.JPG", "b/1.webp", "b/10.png", "b/2.PNG", "c.Jpeg"]
    assert _rel(FolderDataset(tmp_path, extensions=["png"])) == ["b/10.png", "b/2.PNG"]


def test_hidden_entries_are_skipped(tmp_path: Path) -> None:
    _png(tmp_path / "cats" / "a.png")
    _png(tmp_path / "dogs" / "b.png")
    _png(tmp_path / "dogs" / "._b.png")          # macOS resource fork
    _png(tmp_path / ".thumbnails" / "a.png")     # would otherwise break the class layout
    ds = FolderDataset(tmp_path)
    assert _rel(ds) == ["cats/a.png", "dogs/b.png"] and ds.class_names == ["cats", "dogs"]


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "1.png")
    _png(tmp_path / "b" / "2.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)          # a/loop -> root
    (tmp_path / "b" / "self").symlink_to(tmp_path / "b")    # b/self -> b
    result: list = []
    worker = threading.Thread(target=lambda: result.append(FolderDataset(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "scanning a symlink loop did not finish"
    assert _rel(result[0]) == ["a/1.png", "b/2.png"]


def test_symlinks_followed_once_or_ignored(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _png(outside / "x.png")
    root = tmp_path / "root"
    _png(root / "own.png")
    (root / "link1").symlink_to(outside)
    (root / "link2").symlink_to(outside)           # a second link to the same folder: scanned once
    (root / "alias.png").symlink_to(root / "own.png")
    assert _rel(FolderDataset(root)) == ["alias.png", "link1/x.png", "own.png"]
    assert _rel(FolderDataset(root, follow_symlinks=False)) == ["own.png"]


def test_bad_files_fail_at_load_not_at_scan(tmp_path: Path) -> None:
    _png(tmp_path / "good.png")
    (tmp_path / "empty.jpg").touch()
    (tmp_path / "broken.png").symlink_to(tmp_path / "missing.png")
    ds = FolderDataset(tmp_path)
    assert _rel(ds) == ["broken.png", "empty.jpg", "good.png"]
    for i in (0, 1):
        with pytest.raises(BadImageError):
            ds.load(i)
    assert ds.load(2).size == (4, 4)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ImgclustError, match="does not exist"):
        FolderDataset(tmp_path / "nope")
    _png(tmp_path / "one.png")
    with pytest.raises(ImgclustError, match="is a file, not a folder") as info:
        FolderDataset(tmp_path / "one.png")
    assert "pass the folder" in info.value.fix
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImgclustError, match="it is empty") as info:
        FolderDataset(tmp_path / "empty")
    assert ".jpg" in info.value.message and ".tiff" in info.value.message
    assert "point to the folder that contains your images" in info.value.fix
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    (tmp_path / "docs" / "b.csv").write_text("x")
    with pytest.raises(ImgclustError, match="it holds 2 other files"):
        FolderDataset(tmp_path / "docs")


def test_fingerprint_follows_file_content_not_timestamps(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    a = _png(root / "a.png", 10)
    _png(root / "b.png", 20)
    first = FolderDataset(root).fingerprint()
    assert FolderDataset(root).fingerprint() == first
    os.utime(a, ns=(1, 123_456_789))              # touched, bytes unchanged: the cache stays valid
    assert FolderDataset(root).fingerprint() == first
    # a copy without timestamps (cp -r, a restored backup) keeps the cache
    shutil.copytree(root, tmp_path / "copy", copy_function=shutil.copyfile)
    assert FolderDataset(tmp_path / "copy").fingerprint() == first
    mtime = a.stat().st_mtime_ns
    _png(a, 99)                                   # same size, new content, old mtime: still detected
    os.utime(a, ns=(mtime, mtime))
    second = FolderDataset(root).fingerprint()
    assert second != first
    _png(root / "c.png")                          # a new file
    third = FolderDataset(root).fingerprint()
    assert third != second
    # moving the whole folder keeps the fingerprint (paths are relative)
    root.rename(tmp_path / "moved")
    assert FolderDataset(tmp_path / "moved").fingerprint() == third


def test_fingerprint_never_opens_a_named_pipe(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _png(root / "a.png", 10)
    os.mkfifo(root / "pipe.jpg")                  # opening it for reading would block until a writer comes
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(FolderDataset(root).fingerprint()), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result, "fingerprint() blocked on a named pipe"


def test_fingerprint_samples_large_files_and_remembers_digests(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 4096)     # 1 MiB: hashed by three 64 KiB samples
    ds = PathListDataset([big])
    first = ds.fingerprint()
    with open(big, "r+b") as handle:               # an edit inside the last sample
        handle.seek(big.stat().st_size - 10)
        handle.write(b"edited")
    assert ds.fingerprint() != first
    # an unchanged file (same size, mtime, inode) is not read again
    calls = []
    original = folder_module._sampled_digest
    monkeypatch.setattr(folder_module, "_sampled_digest", lambda *args: calls.append(args) or original(*args))
    ds.fingerprint()
    assert calls == []


def test_path_list(tmp_path: Path) -> None:
    paths = [_png(tmp_path / n, v) for n, v in [("z.png", 1), ("a.png", 2)]]
    ds = PathListDataset(paths, labels=["dog", "cat"])
    assert ds.items == [str(p) for p in paths]                        # given order, not sorted
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [1, 0]
    assert np.asarray(ds.load(1))[0, 0, 0] == 2
    fingerprint = ds.fingerprint()
    _png(paths[0], 3)
    assert ds.fingerprint() != fingerprint
    fingerprint = ds.fingerprint()
    ds.draft_size = 224  # decoding differently must not reuse features cached for full-size decoding
    assert ds.fingerprint() != fingerprint
    with pytest.raises(ImgclustError, match="empty"):
        PathListDataset([])
    with pytest.raises(ImgclustError, match="got 1 labels"):
        PathListDataset(paths, labels=[0])
    with pytest.raises(ImgclustError, match="only 1 class_names"):
        PathListDataset(paths, labels=[0, 1], class_names=["a"])


@pytest.mark.shared_data
def test_dataloader_workers_decode(class_tree) -> None:
    torch = pytest.importorskip("torch")
    root, labels, _ = class_tree
    ds = FolderDataset(root)

    class Wrapped(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ds)

        def __getitem__(self, i: int):
            return torch.from_numpy(np.asarray(ds.load(i)).copy()), int(ds.labels[i])

    batches = list(torch.utils.data.DataLoader(Wrapped(), batch_size=25, num_workers=2))
    assert [tuple(b[0].shape) for b in batches] == [(25, 32, 32, 3)] * 2
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), labels)


# --- arrays ---------------------------------------------------------------------------------------------------

def _images(n: int = 6, shape: tuple[int, ...] = (8, 8, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 3), (8, 8, 4)])
def test_array_dataset_shapes(shape: tuple[int, ...]) -> None:
    ds = ArrayImageDataset(_images(shape=shape), labels=[0, 1, 2, 0, 1, 2], class_names=["a", "b", "c"])
    assert len(ds) == 6 and ds.items[2] == "array[2]"
    img = ds.load(3)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_array_dataset_dtypes_and_fingerprint() -> None:
    images = _images()
    as_int64 = ArrayImageDataset(images.astype(np.int64))
    assert as_int64.images.dtype == np.uint8
    assert as_int64.fingerprint() == ArrayImageDataset(images).fingerprint()
    changed = images.copy()
    changed[5, 7, 7, 2] ^= 1
    assert ArrayImageDataset(changed).fingerprint() != ArrayImageDataset(images).fingerprint()
    assert ArrayImageDataset(images, labels=[0] * 6).fingerprint() != ArrayImageDataset(images).fingerprint()


@pytest.mark.parametrize("array, message", [
    (np.full((2, 4, 4), 300, dtype=np.int64), "outside 0..255"),
    (np.zeros((2, 4, 4, 3), dtype=np.float32), "must be uint8"),
    (np.zeros((2, 3, 8, 8), dtype=np.uint8), "channel-first"),
    (np.zeros((0, 4, 4), dtype=np.uint8), "empty"),
    (np.zeros((4,), dtype=np.uint8), "shape"),
])
def test_array_dataset_errors(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImgclustError) as info:
        ArrayImageDataset(array, name="mine.npy")
    assert message in str(info.value) and "mine.npy" in info.value.message and info.value.fix


def test_label_errors() -> None:
    with pytest.raises(ImgclustError, match="got 5 labels"):
        ArrayImageDataset(_images(), labels=[0] * 5)
    with pytest.raises(ImgclustError, match="whole numbers"):
        ArrayImageDataset(_images(), labels=[0.5] * 6)
    with pytest.raises(ImgclustError, match=">= 0"):
        ArrayImageDataset(_images(), labels=[-1] * 6)


def test_npz_images_labels_and_class_names(tmp_path: Path) -> None:
    images = _images()
    path = tmp_path / "set.npz"
    np.savez(path, images=images, labels=np.array([1, 0, 1, 0, 1, 0]), class_names=np.array(["cat", "dog"]))
    ds = load_array_file(path)
    assert isinstance(ds, ArrayImageDataset)
    np.testing.assert_array_equal(ds.images, images)
    assert ds.labels.tolist() == [1, 0, 1, 0, 1, 0] and ds.class_names == ["cat", "dog"]
    np.savez(tmp_path / "xy.npz", x=images[..., 0], y=np.arange(6))
    alt = load_array_file(tmp_path / "xy.npz")
    assert alt.images.shape == (6, 8, 8) and alt.labels.tolist() == list(range(6))


def test_npy_images_are_memory_mapped(tmp_path: Path) -> None:
    np.save(tmp_path / "imgs.npy", _images())
    ds = load_array_file(tmp_path / "imgs.npy")
    assert isinstance(ds.images, np.memmap) and ds.load(0).size == (8, 8)


def test_embeddings_from_npy_and_npz(tmp_path: Path) -> None:
    feats = np.random.default_rng(0).normal(size=(10, 4))
    np.save(tmp_path / "emb.npy", feats)
    ds = load_array_file(tmp_path / "emb.npy")
    assert isinstance(ds, EmbeddingDataset) and ds.features.dtype == np.float32 and ds.features.shape == (10, 4)
    assert ds.labels is None and len(ds.items) == 10
    np.savez(tmp_path / "emb.npz", embeddings=feats.astype(np.float16), targets=np.arange(10) % 2)
    ds = load_array_file(tmp_path / "emb.npz")
    assert isinstance(ds, EmbeddingDataset) and ds.labels.tolist() == [0, 1] * 5


def test_embedding_nan_rows_are_counted(tmp_path: Path) -> None:
    feats = np.ones((20, 3), dtype=np.float32)
    feats[3, 0] = np.nan
    feats[17, 2] = np.inf
    np.save(tmp_path / "bad.npy", feats)
    with pytest.raises(ImgclustError) as info:
        load_array_file(tmp_path / "bad.npy")
    assert "2 of 20 embedding rows contain NaN or inf (rows [3, 17])" in info.value.message
    assert str(tmp_path / "bad.npy") in info.value.message


@pytest.mark.parametrize("suffix", ["npy", "npz"])
def test_pickled_object_arrays_are_refused(tmp_path: Path, suffix: str) -> None:
    objects = np.array([{"a": 1}, None], dtype=object)
    path = tmp_path / f"obj.{suffix}"
    if suffix == "npy":
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, images=objects)
    with pytest.raises(ImgclustError, match="pickled Python objects"):
        load_array_file(path)


def test_array_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ImgclustError, match="does not exist"):
        load_array_file(tmp_path / "none.npy")
    np.savez(tmp_path / "odd.npz", weights=np.zeros(3))
    with pytest.raises(ImgclustError, match=r"holds \['weights'\]"):
        load_array_file(tmp_path / "odd.npz")
    np.save(tmp_path / "empty.npy", np.zeros((0, 5), dtype=np.float32))
    with pytest.raises(ImgclustError, match="non-empty"):
        load_array_file(tmp_path / "empty.npy")
    np.save(tmp_path / "ints.npy", np.zeros((5, 5), dtype=np.int64))
    with pytest.raises(ImgclustError, match="neither embeddings"):
        load_array_file(tmp_path / "ints.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ImgclustError, match="junk.npy"):
        load_array_file(tmp_path / "junk.npy")
    np.savez(tmp_path / "short.npz", images=_images(), labels=np.arange(3))
    with pytest.raises(ImgclustError, match="got 3 labels"):
        load_array_file(tmp_path / "short.npz")


# --- load_source ----------------------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_load_source_dispatch(tmp_path: Path, class_tree) -> None:
    root, labels, names = class_tree
    folder = load_source(root)
    assert isinstance(folder, FolderDataset) and folder.class_names == names
    assert isinstance(load_source(str(root)), FolderDataset)
    assert load_source(folder) is folder
    listed = load_source(folder.items[:3])
    assert isinstance(listed, PathListDataset) and len(listed) == 3

    np.save(tmp_path / "imgs.npy", _images())
    assert isinstance(load_source(tmp_path / "imgs.npy"), ArrayImageDataset)
    np.savez(tmp_path / "emb.npz", features=np.zeros((3, 2)))
    assert isinstance(load_source(str(tmp_path / "emb.npz")), EmbeddingDataset)
    assert isinstance(load_source(_images()), ArrayImageDataset)
    emb = load_source(np.zeros((3, 2), dtype=np.float32))
    assert isinstance(emb, EmbeddingDataset) and load_source(emb) is emb

    digits = load_source("builtin:digits")
    assert digits.name == "digits:all" and len(digits) == 1797
    assert load_source("builtin:digits:all").name == "digits:all"


def test_load_source_labels_override(tmp_path: Path) -> None:
    paths = [_png(tmp_path / f"{i}.png") for i in range(3)]
    ds = load_source(paths, labels=["b", "a", "b"])
    assert ds.class_names == ["a", "b"] and ds.labels.tolist() == [1, 0, 1]
    (tmp_path / "labels.txt").write_text("2\n0\n1\n")
    assert load_source(_images(3), labels=tmp_path / "labels.txt").labels.tolist() == [2, 0, 1]
    np.save(tmp_path / "labels.npy", np.array([0, 0, 1]))
    assert load_source(tmp_path, labels=str(tmp_path / "labels.npy")).labels.tolist() == [0, 0, 1]
    with pytest.raises(ImgclustError, match="got 2 labels"):
        load_source(paths, labels=[0, 1])
    with pytest.raises(ImgclustError, match="dataset object"):
        load_source(ArrayImageDataset(_images(3)), labels=[0, 1, 2])


@pytest.mark.parametrize("spec", [42, [], [1, 2], {"a": 1}, "builtin:nosuchset"])
def test_load_source_unknown_spec_lists_forms(spec) -> None:
    with pytest.raises(ImgclustError) as info:
        load_source(spec)
    assert "cifar10" in str(info.value) and "digits" in str(info.value)


def test_load_source_missing_path_hints_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImgclustError, match=r"did you mean builtin:stl10\?") as info:
        load_source("stl10")
    assert "a folder of images" in info.value.fix
    (tmp_path / "photo.png").write_bytes(b"")
    with pytest.raises(ImgclustError, match="cannot use the file"):
        load_source("photo.png")
