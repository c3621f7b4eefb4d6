"""Standard benchmark data sets read from their official files on local disk; nothing is ever downloaded.

Each loader reads the layout its authors publish (CIFAR python pickles, STL-10 binaries, MNIST IDX files).
CIFAR pickles are read with an Unpickler that can only rebuild numpy arrays, so a tampered file fails with an
error instead of running code. ``digits`` ships inside scikit-learn, so it works on every install.
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ImgclustError
from .arrays import ArrayImageDataset

try:  # numpy >= 2 moved the array-pickling helpers to numpy._core; pickles name either location
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]

_STL_SIDE = 96
_CIFAR_SIDE = 32


@dataclass(frozen=True)
class BuiltinSpec:
    """How to find and read one built-in data set.

    Attributes:
        name: the name used in ``builtin:NAME``.
        description: one line for listings.
        splits: accepted split names.
        folder: directory name under the data root (``$IMGCLUST_DATA/<folder>``); variants share it.
        subdirs: where the files may sit inside the data set's root ("" = directly in it), first match wins.
        files: split -> the files it needs (for the message when they are missing).
        url: where the user downloads the official archive.
        loader: ``(files_dir, split) -> (images uint8, labels int64 | None, class_names)``.
        system_roots: extra roots tried before the user cache (e.g. a Debian package's install path).
        gzip_ok: each file may also be present gzipped as ``<file>.gz`` (IDX files are distributed so).
        aliases: extra split names mapped onto ``splits``.
    """

    name: str
    description: str
    splits: tuple[str, ...]
    folder: str
    subdirs: tuple[str, ...]
    files: dict[str, tuple[str, ...]]
    url: str
    loader: Callable[[Path | None, str], tuple[np.ndarray, np.ndarray | None, list[str]]]
    system_roots: tuple[str, ...] = ()
    gzip_ok: bool = False
    aliases: dict[str, str] | None = None


def load_builtin(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 data_root: str | os.PathLike | None = None) -> ArrayImageDataset:
    """Load a built-in data set split from local files.

    Args:
        name: one of :data:`BUILTIN_DATASETS` (case-insensitive).
        split: ``train`` or ``test`` (``unlabeled`` for stl10; ``all`` for digits, which accepts ``train``).
        root: the data set's own folder (holding the files or the official archive's top folder). When
            omitted, the first of these that holds the files: ``<data_root>/<folder>``, a system path
            (fashion-mnist: ``/usr/share/datasets/fashion-mnist`` from Debian's ``dataset-fashion-mnist``),
            ``~/.cache/imgclust/data/<folder>``.
        data_root: parent folder of the data sets; defaults to ``$IMGCLUST_DATA``.

    Returns:
        ArrayImageDataset named ``"<name>:<split>"`` with labels (None for stl10 ``unlabeled``) and class names.

    Raises:
        ImgclustError: unknown name or split; files missing (the message lists the expected files, the
            official download URL and the folder to put them in); files corrupt or not in the official format.
    """
    spec = BUILTIN_DATASETS.get(name.lower())
    if spec is None:
        raise ImgclustError(f"unknown built-in data set {name!r}",
                            f"choose one of: {', '.join(BUILTIN_DATASETS)}")
    split = (spec.aliases or {}).get(split.lower(), split.lower())
    if split not in spec.splits:
        raise ImgclustError(f"{spec.name} has no split {split!r}", f"choose one of: {', '.join(spec.splits)}")
    files_dir = _find_files(spec, split, root, data_root) if spec.files else None
    images, labels, class_names = spec.loader(files_dir, split)
    return ArrayImageDataset(images, labels, class_names, name=f"{spec.name}:{split}")


def default_roots(spec: BuiltinSpec, data_root: str | os.PathLike | None = None) -> list[Path]:
    """Candidate roots for ``spec`` in order of preference (see :func:`load_builtin`)."""
    base = data_root if data_root is not None else os.environ.get("IMGCLUST_DATA")
    roots = [Path(base).expanduser() / spec.folder] if base else []
    roots += [Path(p) for p in spec.system_roots]
    roots.append(Path.home() / ".cache" / "imgclust" / "data" / spec.folder)
    return roots


def _find_files(spec: BuiltinSpec, split: str, root: str | os.PathLike | None,
                data_root: str | os.PathLike | None) -> Path:
    """The folder holding every file ``split`` needs; otherwise raise with download instructions."""
    roots = [Path(root).expanduser()] if root is not None else default_roots(spec, data_root)
    needed = spec.files[split]
    for candidate in roots:
        for sub in spec.subdirs:
            folder = candidate / sub
            if all(_existing(spec, folder, f) for f in needed):
                return folder
    # where to tell the user to put the files: a root that already exists, else one the user owns
    user_roots = [r for r in roots if str(r) not in spec.system_roots]
    target = next((r for r in roots if r.is_dir()), user_roots[0]).resolve()
    where = target / spec.subdirs[0]
    others = [str(r) for r in roots if r.resolve() != target]
    searched = f" (also searched: {', '.join(others)})" if others else ""
    shown = [f"{f}[.gz]" if spec.gzip_ok else f for f in needed]
    raise ImgclustError(
        f"{spec.name} ({split}) files not found: expected {', '.join(shown)} in {where}{searched}",
        f"download them from {spec.url} (imgclust never downloads anything) and unpack them so that "
        f"{where / needed[0]} exists; or pass the data set's folder as root, or set IMGCLUST_DATA to a "
        f"folder holding one sub-folder per data set ({spec.folder}/ for this one)")


def _existing(spec: BuiltinSpec, folder: Path, filename: str) -> Path | None:
    """``folder/filename`` (or ``filename.gz`` where the spec allows it), if it is a file."""
    for path in (folder / filename, folder / f"{filename}.gz") if spec.gzip_ok else (folder / filename,):
        if path.is_file():
            return path
    return None


# --- CIFAR ---------------------------------------------------------------------------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds only dicts, lists, strings, numbers and numpy arrays: the content of an official CIFAR pickle.

    Any other global (``os.system``, ``builtins.eval``…) raises instead of being imported, so a malicious
    file cannot run code.
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a data batch never contains") \
                from None


def _unpickle(path: Path, url: str) -> dict:
    """Read one CIFAR pickle safely; keys and strings come back as ``str``."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ImgclustError(f"cannot read {path}: {exc.strerror or exc}", "check the file's permissions") from None
    with fh:
        try:
            # encoding="bytes": the official files are Python 2 pickles whose str fields are raw bytes
            obj = _ArrayOnlyUnpickler(fh, encoding="bytes").load()
        except Exception as exc:  # noqa: BLE001: crafted input can make the pickle machine raise almost anything
            raise ImgclustError(f"refusing {path}: not a valid CIFAR data file ({type(exc).__name__}: {exc})",
                                f"the file is corrupt or was replaced; download it again from {url}") from None
    if not isinstance(obj, dict):
        raise ImgclustError(f"{path}: expected a dict in a CIFAR data file, got {type(obj).__name__}",
                            f"download it again from {url}")
    return {_text(k): v for k, v in obj.items()}


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _cifar_field(batch: dict, key: str, path: Path, url: str) -> Any:
    if key not in batch:
        raise ImgclustError(f"{path}: field {key!r} missing (found {sorted(batch)})",
                            f"download the python version again from {url}")
    return batch[key]


def _cifar_images(batches: list[tuple[Path, dict]], label_key: str, url: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batches: ``data`` rows (N, 3072) = 1024 R, 1024 G, 1024 B values, each plane row-major."""
    images, labels = [], []
    for path, batch in batches:
        data = np.asarray(_cifar_field(batch, "data", path, url))
        batch_labels = np.asarray(_cifar_field(batch, label_key, path, url))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _CIFAR_SIDE ** 2 \
                or len(batch_labels) != len(data):
            raise ImgclustError(f"{path}: unexpected content (data {data.dtype} {data.shape}, "
                                f"{len(batch_labels)} labels)", f"download it again from {url}")
        images.append(data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1))
        labels.append(batch_labels.astype(np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _load_cifar10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    spec = BUILTIN_DATASETS["cifar10"]
    batches = [(folder / f, _unpickle(folder / f, spec.url)) for f in spec.files[split] if f != "batches.meta"]
    images, labels = _cifar_images(batches, "labels", spec.url)
    meta_path = folder / "batches.meta"
    names = _cifar_field(_unpickle(meta_path, spec.url), "label_names", meta_path, spec.url)
    return images, labels, [_text(n) for n in names]


def _cifar100_loader(coarse: bool) -> Callable[[Path | None, str], tuple[np.ndarray, np.ndarray, list[str]]]:
    """CIFAR-100 with its 100 fine classes, or its 20 coarse superclasses (the usual clustering benchmark)."""
    label_key, names_key = ("coarse_labels", "coarse_label_names") if coarse else ("fine_labels",
                                                                                   "fine_label_names")

    def load(folder: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        assert folder is not None
        url = BUILTIN_DATASETS["cifar100"].url
        images, labels = _cifar_images([(folder / split, _unpickle(folder / split, url))], label_key, url)
        meta_path = folder / "meta"
        names = _cifar_field(_unpickle(meta_path, url), names_key, meta_path, url)
        return images, labels, [_text(n) for n in names]

    return load


# --- STL-10 --------------------------------------------------------------------------------------------------

def _load_stl10(folder: Path | None, split: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """``<split>_X.bin``: uint8 images of 3x96x96 stored column-major, memory-mapped (unlabeled is 2.7 GB).

    ``<split>_y.bin``: uint8 labels 1..10. ``class_names.txt``: one name per line.
    """
    assert folder is not None
    url = BUILTIN_DATASETS["stl10"].url
    x_path = folder / f"{split}_X.bin"
    per_image = 3 * _STL_SIDE * _STL_SIDE
    size = x_path.stat().st_size
    if size == 0 or size % per_image:
        raise ImgclustError(f"{x_path}: {size} bytes is not a whole number of 3x96x96 images",
                            f"the file is truncated; download it again from {url}")
    raw = np.memmap(x_path, dtype=np.uint8, mode="r", shape=(size // per_image, 3, _STL_SIDE, _STL_SIDE))
    # column-major storage: the byte order is (channel, column, row), so swap to (row, column, channel)
    images = raw.transpose(0, 3, 2, 1)
    names_text = (folder / "class_names.txt").read_text(encoding="utf-8")
    class_names = [line.strip() for line in names_text.splitlines() if line.strip()]
    if split == "unlabeled":
        return images, None, class_names
    y_path = folder / f"{split}_y.bin"
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != len(images) or (len(labels) and (labels.min() < 0 or labels.max() >= len(class_names))):
        raise ImgclustError(f"{y_path}: {len(labels)} labels for {len(images)} images, or labels outside 1..10",
                            f"download the binary version again from {url}")
    return images, labels, class_names


# --- MNIST and Fashion-MNIST ---------------------------------------------------------------------------------

def _read_idx(path: Path, expected_ndim: int, url: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000 08 <ndim>, then ndim big-endian uint32 sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise ImgclustError(f"{path}: cannot read ({exc})", f"download it again from {url}") from None
    header = 4 + 4 * expected_ndim
    if len(data) < header or data[:3] != b"\x00\x00\x08" or data[3] != expected_ndim:
        raise ImgclustError(f"{path}: not an IDX file of {expected_ndim}-D unsigned bytes",
                            f"download it again from {url}")
    shape = struct.unpack(f">{expected_ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise ImgclustError(f"{path}: holds {len(data) - header} bytes of data, its header declares {shape}",
                            f"the file is truncated; download it again from {url}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _mnist_loader(dataset: str, class_names: list[str]
                  ) -> Callable[[Path | None, str], tuple[np.ndarray, np.ndarray, list[str]]]:
    def load(folder: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        assert folder is not None
        spec = BUILTIN_DATASETS[dataset]
        image_file, label_file = spec.files[split]
        images = _read_idx(_existing(spec, folder, image_file), 3, spec.url)
        labels = _read_idx(_existing(spec, folder, label_file), 1, spec.url).astype(np.int64)
        if len(labels) != len(images):
            raise ImgclustError(f"{folder}: {len(images)} images but {len(labels)} labels in {split}",
                                f"download both files again from {spec.url}")
        return images, labels, class_names

    return load


# --- digits (inside scikit-learn) ----------------------------------------------------------------------------

def _load_digits(folder: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 1797 8x8 handwritten digits, grey levels 0..16 rescaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64), [str(d) for d in range(10)]


def _mnist_files(prefix: str) -> tuple[str, str]:
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


_CIFAR100_FILES = {"train": ("train", "meta"), "test": ("test", "meta")}
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

#: Every built-in data set, by the name used in ``builtin:NAME``.
BUILTIN_DATASETS: dict[str, BuiltinSpec] = {spec.name: spec for spec in (
    BuiltinSpec(
        "cifar10", "CIFAR-10: 60000 32x32 colour images, 10 classes", ("train", "test"), "cifar10",
        ("cifar-10-batches-py", ""),
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)) + ("batches.meta",),
         "test": ("test_batch", "batches.meta")},
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", _load_cifar10),
    BuiltinSpec(
        "cifar100", "CIFAR-100: 60000 32x32 colour images, 100 fine classes", ("train", "test"), "cifar100",
        ("cifar-100-python", ""), _CIFAR100_FILES, _CIFAR100_URL, _cifar100_loader(coarse=False)),
    BuiltinSpec(
        "cifar100-20", "CIFAR-100 with its 20 coarse superclasses as labels", ("train", "test"), "cifar100",
        ("cifar-100-python", ""), _CIFAR100_FILES, _CIFAR100_URL, _cifar100_loader(coarse=True)),
    BuiltinSpec(
        "stl10", "STL-10: 96x96 colour images, 10 classes (train 5000, test 8000, unlabeled 100000)",
        ("train", "test", "unlabeled"), "stl10", ("stl10_binary", ""),
        {split: (f"{split}_X.bin",) + ((f"{split}_y.bin",) if split != "unlabeled" else ()) + ("class_names.txt",)
         for split in ("train", "test", "unlabeled")},
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", _load_stl10),
    BuiltinSpec(
        "mnist", "MNIST: 70000 28x28 handwritten digits", ("train", "test"), "mnist", ("", "raw", "MNIST/raw"),
        {"train": _mnist_files("train"), "test": _mnist_files("t10k")},
        "http://yann.lecun.com/exdb/mnist/", _mnist_loader("mnist", [str(d) for d in range(10)]), gzip_ok=True),
    BuiltinSpec(
        "fashion-mnist", "Fashion-MNIST: 70000 28x28 clothing images, 10 classes", ("train", "test"),
        "fashion-mnist", ("", "raw", "FashionMNIST/raw"),
        {"train": _mnist_files("train"), "test": _mnist_files("t10k")},
        "https://github.com/zalandoresearch/fashion-mnist", _mnist_loader("fashion-mnist", FASHION_MNIST_CLASSES),
        system_roots=("/usr/share/datasets/fashion-mnist",), gzip_ok=True),
    BuiltinSpec(
        "digits", "scikit-learn digits: 1797 8x8 handwritten digits (ships with scikit-learn)", ("all",),
        "digits", ("",), {}, "https://scikit-learn.org/stable/datasets/toy_dataset.html", _load_digits,
        aliases={"train": "all"}),
)}
