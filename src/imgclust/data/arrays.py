"""In-memory sources: uint8 image arrays and float embedding arrays, from numpy objects or .npy/.npz files.

Every check happens here, up front, so later stages can trust shapes, dtypes and finiteness. Files are always
read with ``allow_pickle=False``: a .npy/.npz file can never run code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import ImgclustError
from .base import EmbeddingDataset, ImageDataset
from .decode import array_to_image

#: .npz keys tried, in this order, for the main array (images or embeddings) and for the labels.
NPZ_DATA_KEYS = ("images", "features", "embeddings", "data", "X", "x")
NPZ_LABEL_KEYS = ("labels", "y", "targets")

_FINGERPRINT_CHUNK = 4096  # rows hashed at a time, so a memory-mapped array is never copied whole


class ArrayImageDataset(ImageDataset):
    """Images held in one uint8 array (possibly memory-mapped); row ``i`` is image ``i``.

    Args:
        images: uint8 array (N, H, W) for grayscale or (N, H, W, C) with C in {1, 3, 4} (4 = RGBA).
            Other integer dtypes are accepted when every value lies in 0..255 (then cast to uint8).
        labels: (N,) integer labels, or strings (then ``class_names`` = the sorted distinct strings).
        class_names: names of the label indices.
        name: shown in messages and used for ``items`` (``"<name>[i]"``).

    Raises:
        ImgclustError: wrong dtype, shape or value range, empty array, or labels that don't match.
    """

    def __init__(self, images: np.ndarray, labels: Sequence | np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, name: str = "array"):
        self.name = name
        self.images = check_image_array(images, name)
        self.labels, self.class_names = check_labels(labels, class_names, len(self.images), name)
        self.items = [f"{name}[{i}]" for i in range(len(self.images))]

    def load(self, index: int) -> Image.Image:
        return array_to_image(np.asarray(self.images[index]))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.images.shape}".encode())
        for start in range(0, len(self.images), _FINGERPRINT_CHUNK):
            digest.update(np.ascontiguousarray(self.images[start:start + _FINGERPRINT_CHUNK]).tobytes())
        if self.labels is not None:
            digest.update(self.labels.tobytes())
        return digest.hexdigest()


def check_image_array(images: np.ndarray, name: str) -> np.ndarray:
    """Validate an image stack; return it as uint8 (N, H, W) or (N, H, W, C), without a copy when already uint8.

    Raises:
        ImgclustError: naming ``name`` and saying how to fix the array.
    """
    images = _refuse_objects(np.asanyarray(images), name)  # keeps np.memmap (not read into memory)
    if images.ndim not in (3, 4):
        raise ImgclustError(f"{name}: image arrays must have shape (N,H,W) or (N,H,W,C); got {images.shape}",
                            "stack the images along a first axis; a 2-D float array is read as embeddings")
    if images.ndim == 4 and images.shape[3] not in (1, 3, 4):
        hint = (" it looks channel-first: use np.transpose(images, (0, 2, 3, 1))"
                if images.shape[1] in (1, 3, 4) else "")
        raise ImgclustError(f"{name}: the last axis of (N,H,W,C) must have 1, 3 or 4 channels; got shape "
                            f"{images.shape}", f"store images channel-last (N,H,W,C);{hint}")
    if 0 in images.shape:
        raise ImgclustError(f"{name}: the image array is empty (shape {images.shape})",
                            "pass at least one image with non-zero height and width")
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iu":
        low, high = int(images.min()), int(images.max())
        if low >= 0 and high <= 255:
            return images.astype(np.uint8)  # lossless: every value fits
        raise ImgclustError(f"{name}: {images.dtype} image values span {low}..{high}, outside 0..255",
                            "rescale to 0..255 and cast to uint8, e.g. (images // 257).astype(np.uint8) "
                            "for 16-bit data")
    if images.dtype.kind == "f":
        raise ImgclustError(f"{name}: images must be uint8 (0..255), got {images.dtype} with shape {images.shape}",
                            "for values in 0..1 use (images * 255).round().astype(np.uint8); for embeddings "
                            "pass a 2-D (N,D) float array instead")
    raise ImgclustError(f"{name}: images must be uint8 (0..255), got {images.dtype}",
                        "convert the array with .astype(np.uint8) after scaling to 0..255")


def check_labels(labels: Sequence | np.ndarray | None, class_names: Sequence[str] | None, n: int, name: str
                 ) -> tuple[np.ndarray | None, list[str] | None]:
    """Validate evaluation labels for ``n`` items.

    Args:
        labels: (n,) integer-valued labels >= 0, or strings (mapped to indices of their sorted distinct values).
        class_names: optional names; must cover every label index.

    Returns:
        ``(labels int64 (n,), class_names)``, or ``(None, class_names)`` when ``labels`` is None.

    Raises:
        ImgclustError: wrong length, non-integer or negative values, or too few class names.
    """
    names = None if class_names is None else [str(c) for c in class_names]
    if labels is None:
        return None, names
    values = _refuse_objects(np.asarray(labels), f"{name} labels")
    if values.ndim != 1 or len(values) != n:
        raise ImgclustError(f"{name}: got {values.shape[0] if values.ndim else 0} labels of shape {values.shape} "
                            f"for {n} items", "pass exactly one label per item, as a 1-D array")
    if values.dtype.kind in "US":
        distinct = sorted(set(values.astype(str).tolist()))
        if names is None:
            names = distinct
        index = {c: i for i, c in enumerate(names)}
        unknown = [c for c in distinct if c not in index]
        if unknown:
            raise ImgclustError(f"{name}: labels {unknown[:5]} are not in class_names",
                                "add them to class_names or leave class_names out")
        return np.asarray([index[c] for c in values.astype(str).tolist()], dtype=np.int64), names
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(np.isfinite(values))) \
            or not np.array_equal(values, np.round(values)):
        raise ImgclustError(f"{name}: labels must be whole numbers, got {values.dtype}",
                            "pass integer class indices (0, 1, 2, …) or class-name strings")
    out = values.astype(np.int64)
    if n and out.min() < 0:
        raise ImgclustError(f"{name}: labels must be >= 0, found {int(out.min())}",
                            "use class indices 0..K-1; drop unlabelled rows or give them their own class")
    if names is not None and n and out.max() >= len(names):
        raise ImgclustError(f"{name}: label {int(out.max())} has no name: only {len(names)} class_names given",
                            "pass one class name per label index, or leave class_names out")
    return out, names


def make_embedding_dataset(features: np.ndarray, labels: Sequence | np.ndarray | None = None,
                           class_names: Sequence[str] | None = None, name: str = "embeddings") -> EmbeddingDataset:
    """Validate bring-your-own embeddings and wrap them.

    Args:
        features: float array (N, D), finite, N >= 1 and D >= 1; cast to float32.
        labels, class_names: as for :func:`check_labels`.

    Raises:
        ImgclustError: wrong dtype or shape, empty, or rows with NaN/inf (says how many and which).
    """
    features = _refuse_objects(np.asarray(features), name)
    if features.ndim != 2 or 0 in features.shape:
        raise ImgclustError(f"{name}: embeddings must be a non-empty 2-D array (N,D); got shape {features.shape}",
                            "pass one row of D floats per item")
    if features.dtype.kind != "f":
        raise ImgclustError(f"{name}: embeddings must be floats, got {features.dtype} with shape {features.shape}",
                            "cast with .astype(np.float32); images must be 3-D or 4-D uint8 arrays")
    bad_rows = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(bad_rows):
        raise ImgclustError(f"{name}: {len(bad_rows)} of {len(features)} embedding rows contain NaN or inf "
                            f"(rows {_row_list(bad_rows)})", "drop or recompute those rows before clustering")
    with np.errstate(over="ignore"):  # reported just below, in words
        features = np.asarray(features, dtype=np.float32)
    too_large = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(too_large):
        raise ImgclustError(f"{name}: {len(too_large)} of {len(features)} embedding rows hold values beyond the "
                            f"float32 range (|x| > 3.4e38) (rows {_row_list(too_large)})",
                            "rescale the embeddings (e.g. divide by their largest absolute value) before clustering")
    labels_out, names = check_labels(labels, class_names, len(features), name)
    return EmbeddingDataset(name=name, features=features, labels=labels_out, class_names=names)


def dataset_from_array(array: np.ndarray, labels: Sequence | np.ndarray | None = None,
                       class_names: Sequence[str] | None = None, name: str = "array"
                       ) -> ArrayImageDataset | EmbeddingDataset:
    """A float 2-D array (N, D) becomes embeddings; anything else is validated as an image stack."""
    if array.ndim == 2 and array.dtype.kind == "f":
        return make_embedding_dataset(array, labels, class_names, name)
    if array.ndim == 2:
        raise ImgclustError(f"{name}: a 2-D {array.dtype} array of shape {array.shape} is neither embeddings "
                            "(must be float) nor an image stack (must be 3-D or 4-D)",
                            "cast embeddings to float32, or add the image axis: one image is array[None]")
    return ArrayImageDataset(array, labels, class_names, name)


def load_array_file(path: str | os.PathLike) -> ArrayImageDataset | EmbeddingDataset:
    """Load images or embeddings from a .npy or .npz file (never unpickling anything).

    A .npy holds the main array only. A .npz holds the main array under one of :data:`NPZ_DATA_KEYS`, and
    optionally labels under one of :data:`NPZ_LABEL_KEYS` and ``class_names`` (a string array).
    uint8 (N,H,W[,C]) arrays become an :class:`ArrayImageDataset`; float (N,D) arrays an ``EmbeddingDataset``.
    A .npy is memory-mapped, so large uint8 image files are not read into memory.

    Raises:
        ImgclustError: missing or unreadable file, object (pickled) arrays, no recognised key, or any check of
            :func:`dataset_from_array` failing; the message names the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImgclustError(f"array file {path} does not exist" if not path.exists() else f"{path} is not a file",
                            "check the path; arrays must be saved with np.save (.npy) or np.savez (.npz)")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ImgclustError(f"{path}: unsupported array file type {path.suffix!r}",
                            "save the array with np.save (.npy) or np.savez (.npz)")
    try:
        if suffix == ".npy":
            return dataset_from_array(np.load(path, mmap_mode="r", allow_pickle=False), name=str(path))
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            data_key = next((k for k in NPZ_DATA_KEYS if k in keys), None)
            if data_key is None:
                raise ImgclustError(f"{path}: no images or embeddings found; the archive holds {keys}",
                                    f"store the main array under one of {list(NPZ_DATA_KEYS)}")
            label_key = next((k for k in NPZ_LABEL_KEYS if k in keys), None)
            labels = archive[label_key] if label_key else None
            class_names = archive["class_names"].astype(str).tolist() if "class_names" in keys else None
            return dataset_from_array(archive[data_key], labels, class_names, name=str(path))
    except ValueError as exc:
        # numpy reports object dtypes only through the message ("allow_pickle", or "Python objects" when mapped)
        if any(marker in str(exc) for marker in ("allow_pickle", "Object arrays", "Python objects")):
            raise ImgclustError(f"{path}: contains pickled Python objects, which imgclust never loads "
                                "(unpickling can run arbitrary code)",
                                "save plain numeric arrays (uint8 images, float embeddings, int labels, and "
                                "class_names as a string array)") from None
        raise ImgclustError(f"{path}: not a valid numpy file ({exc})", "re-save it with np.save / np.savez") from None
    except (OSError, EOFError) as exc:
        raise ImgclustError(f"{path}: cannot read the numpy file ({exc})",
                            "check the file is complete and readable; re-save it with np.save / np.savez") from None


def _row_list(rows: np.ndarray) -> str:
    return f"{rows[:10].tolist()}{', …' if len(rows) > 10 else ''}"


def _refuse_objects(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind == "O":
        raise ImgclustError(f"{name}: object arrays are not accepted", "pass a plain numeric numpy array")
    return array
