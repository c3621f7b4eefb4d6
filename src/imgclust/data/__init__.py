"""The data stage: turn whatever the user points at into an ImageDataset or an EmbeddingDataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ImgclustError
from .arrays import ArrayImageDataset, check_labels, dataset_from_array, load_array_file
from .base import EmbeddingDataset, ImageDataset
from .builtin import BUILTIN_DATASETS, load_builtin
from .decode import DEFAULT_MAX_PIXELS, array_to_image, open_image
from .folder import IMAGE_EXTENSIONS, FolderDataset, PathListDataset

__all__ = [
    "ImageDataset", "EmbeddingDataset", "FolderDataset", "PathListDataset", "ArrayImageDataset",
    "load_builtin", "BUILTIN_DATASETS", "open_image", "array_to_image", "load_array_file", "load_source",
    "IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS",
]

_ACCEPTED = ("a folder of images, a .npy/.npz file (uint8 images (N,H,W[,C]) or float embeddings (N,D)), or "
             "builtin:NAME[:SPLIT] (from Python also a list of image paths or such an array)")


def load_source(spec: Any, labels: Sequence | np.ndarray | str | os.PathLike | None = None,
                data_root: str | os.PathLike | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
                ) -> ImageDataset | EmbeddingDataset:
    """Open a data source from any of the accepted forms.

    Args:
        spec: ``"builtin:NAME"`` or ``"builtin:NAME:SPLIT"`` (see :data:`BUILTIN_DATASETS`); a folder path;
            a ``.npy``/``.npz`` path; a list of image paths; a numpy array (uint8 images (N,H,W[,C]) or float
            embeddings (N,D)); or an existing ImageDataset / EmbeddingDataset, returned as is.
        labels: evaluation labels replacing any the source has: a 1-D array or list (integers or class-name
            strings), a ``.npy`` file, or a text file with one label per line. Not allowed with a dataset
            object (set its ``labels`` instead).
        data_root: parent folder of the built-in data sets (default ``$IMGCLUST_DATA``).
        max_pixels: image files declaring more pixels are skipped as bad (decompression-bomb guard).

    Raises:
        ImgclustError: the spec matches no accepted form (the message lists the forms and the built-in
            names), or loading it fails.
    """
    if isinstance(spec, (ImageDataset, EmbeddingDataset)):
        if labels is not None:
            raise ImgclustError("labels were given together with a dataset object",
                                "set the dataset's labels attribute instead")
        return spec
    dataset = _open(spec, data_root, max_pixels)
    if labels is not None:
        values = _read_labels(labels)
        dataset.labels, dataset.class_names = check_labels(values, None, len(dataset), f"labels for {dataset.name}")
    return dataset


def _open(spec: Any, data_root: str | os.PathLike | None, max_pixels: int | None) -> ImageDataset | EmbeddingDataset:
    if isinstance(spec, np.ndarray):
        return dataset_from_array(spec)
    if isinstance(spec, str) and spec.startswith("builtin:"):
        name, _, split = spec[len("builtin:"):].partition(":")
        return load_builtin(name, split or "train", data_root=data_root)
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.is_dir():
            return FolderDataset(path, max_pixels=max_pixels)
        if path.suffix.lower() in (".npy", ".npz"):
            return load_array_file(path)
        if not path.exists():
            hint = f" (did you mean builtin:{spec}?)" if str(spec).lower() in BUILTIN_DATASETS else ""
            raise ImgclustError(f"data source {path} does not exist{hint}", _fix())
        raise ImgclustError(f"cannot use the file {path} as a data source", _fix())
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(p, (str, os.PathLike)) for p in spec):
        return PathListDataset(spec, max_pixels=max_pixels)
    raise ImgclustError(f"cannot use {type(spec).__name__} {str(spec)[:80]!r} as a data source", _fix())


def _fix() -> str:
    return f"pass one of: {_ACCEPTED}. Built-in names: {', '.join(BUILTIN_DATASETS)}"


def _read_labels(labels: Sequence | np.ndarray | str | os.PathLike) -> np.ndarray | Sequence:
    """Labels given inline, or read from a .npy file or a text file with one label per line."""
    if not isinstance(labels, (str, os.PathLike)):
        return labels
    path = Path(labels).expanduser()
    if not path.is_file():
        raise ImgclustError(f"labels file {path} does not exist", "check the path")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ImgclustError(f"{path}: not a plain numpy array ({exc})",
                                "save the labels with np.save as integers or strings") from None
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    # all-integer text files are class indices; anything else is class names
    return np.asarray([int(v) for v in lines]) if all(v.lstrip("-").isdigit() for v in lines) else np.asarray(lines)
