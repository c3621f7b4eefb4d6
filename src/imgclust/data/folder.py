"""Image files on disk: a scanned folder tree, or an explicit list of paths.

Scanning only lists names and no image is decoded until :meth:`load` (the cache fingerprint reads a few
bytes of each file), so an unreadable or corrupt file never stops a scan: it becomes a :class:`BadImageError` for that one image, which the run skips and reports.
"""

from __future__ import annotations

import hashlib
import os
from stat import S_ISREG
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .._io import OUTPUT_MARKER
from ..errors import ImgclustError
from .arrays import check_labels
from .base import ImageDataset
from .decode import DEFAULT_MAX_PIXELS, open_image, open_regular_file

#: File extensions recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class PathListDataset(ImageDataset):
    """Images given as an explicit list of file paths, kept in the given order.

    Args:
        paths: image files; they are not checked here (a missing file fails at :meth:`load`).
        labels: (N,) integer labels or class-name strings, or ``None``.
        class_names: names of the label indices.
        max_pixels: per-file decompression-bomb limit passed to :func:`open_image`.
        draft_size: decode JPEGs at reduced size when the caller resizes to this side anyway (much faster
            for photos). It changes the decoded pixels slightly, so it is part of :meth:`fingerprint`.
        name: shown in messages; defaults to ``"<N> paths"``.

    Raises:
        ImgclustError: the list is empty, or the labels don't match it.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], labels: Sequence | np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 draft_size: int | None = None, name: str | None = None):
        if len(paths) == 0:
            raise ImgclustError("the list of image paths is empty", "pass at least one image file")
        self.name = name or f"{len(paths)} paths"
        # absolute but not resolved: symlinked files keep the name the user gave them
        self.items = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]
        self.labels, self.class_names = check_labels(labels, class_names, len(self.items), self.name)
        self.max_pixels = max_pixels
        self.draft_size = draft_size
        self._fingerprint_base: str | None = None
        self._content_digests = _ContentDigests()

    def load(self, index: int) -> Image.Image:
        return open_image(self.items[index], max_pixels=self.max_pixels, draft_size=self.draft_size)

    def fingerprint(self) -> str:
        """sha256 over (path, size, sampled content digest) of every file, in order, plus the decoding settings.

        Content, not modification times: a copied or restored folder (new mtimes, same bytes) keeps its feature
        cache, and an edited file changes it even when its size and mtime don't. Paths are taken relative to
        the scanned root when there is one, so a moved folder keeps its cache too. A file that can't be read,
        or is not a regular file, contributes (-1, "").
        """
        digest = hashlib.sha256(f"max_pixels={self.max_pixels} draft_size={self.draft_size}\n".encode())
        for item in self.items:
            key = os.path.relpath(item, self._fingerprint_base) if self._fingerprint_base else item
            size, content = self._content_digests.get(item)
            digest.update(f"{key}\0{size}\0{content}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


class _ContentDigests:
    """Per-file content digests, remembered by (size, mtime, inode) so a second fingerprint reads nothing.

    Files up to three samples long are hashed whole; a larger one by its first, middle and last
    :data:`_SAMPLE_BYTES` and its size. Image editors rewrite the header or the size when they change
    pixels, so the samples catch real edits while a folder of multi-megabyte photos costs one small read
    per file instead of a full read.
    """

    def __init__(self):
        self._memo: dict[str, tuple[tuple[int, int, int], str]] = {}

    def get(self, path: str) -> tuple[int, str]:
        try:
            stat = os.stat(path)
        except OSError:
            return -1, ""
        if not S_ISREG(stat.st_mode):
            # a named pipe or device with an image name: opening it could block forever; load() reports it
            return -1, ""
        identity = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        remembered = self._memo.get(path)
        if remembered is not None and remembered[0] == identity:
            return stat.st_size, remembered[1]
        try:
            content = _sampled_digest(path, stat.st_size)
        except OSError:
            return -1, ""
        self._memo[path] = (identity, content)
        return stat.st_size, content


_SAMPLE_BYTES = 64 * 1024


def _sampled_digest(path: str, size: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open_regular_file(path) as handle:
        if size <= 3 * _SAMPLE_BYTES:
            digest.update(handle.read())
        else:
            for offset in (0, (size - _SAMPLE_BYTES) // 2, size - _SAMPLE_BYTES):
                handle.seek(offset)
                digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


class FolderDataset(PathListDataset):
    """Every image file under ``root``, recursively, in sorted path order.

    Labels come from the layout only when it is unambiguous: all images sit exactly one level down
    (``root/<class>/<file>``), in at least two sub-folders, with none directly in ``root``. Class names are
    then the sorted sub-folder names. Any other layout is unlabelled (``labels is None``).

    Hidden files and folders (names starting with ".") are skipped: they hold thumbnails, checkpoints and
    macOS ``._*`` resource forks, never the user's images.

    Args:
        root: the folder to scan.
        extensions: file extensions to include, compared case-insensitively.
        follow_symlinks: enter symlinked folders and include symlinked files. A folder reached twice (a
            symlink loop, or two links to one folder) is scanned once. When False, symlinks are ignored.
        max_pixels, draft_size: as for :class:`PathListDataset`.

    Attributes:
        root: the scanned folder, absolute.
        unreadable_dirs: sub-folders that could not be listed (permission denied…), skipped.

    Raises:
        ImgclustError: ``root`` does not exist, is a file, cannot be listed, or holds no image file.
    """

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 follow_symlinks: bool = True, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 draft_size: int | None = None):
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        _check_root(self.root)
        wanted = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        self.unreadable_dirs: list[str] = []
        found, n_other = self._scan(wanted, follow_symlinks)
        files = sorted(found, key=lambda rel: rel.parts)
        if not files:
            content = f"it holds {n_other} other files" if n_other else "it is empty"
            raise ImgclustError(f"no image files found in {self.root}: {content} (searched recursively for "
                                f"{', '.join(wanted)}, any letter case, skipping hidden names and imgclust's own "
                                "output folders)",
                                "point to the folder that contains your images (Python: extensions= "
                                "selects other file types)")
        labels, class_names = _labels_from_layout(files)
        super().__init__([self.root / f for f in files], labels, class_names, max_pixels=max_pixels,
                         draft_size=draft_size, name=str(self.root))
        self._fingerprint_base = str(self.root)

    def _scan(self, extensions: tuple[str, ...], follow_symlinks: bool) -> tuple[list[Path], int]:
        """Paths relative to the root of the matching files (each real folder scanned once), and the number
        of other files seen (for the error message when nothing matches)."""
        found: list[Path] = []
        n_other = 0
        visited: set[tuple[int, int]] = set()
        pending = [Path()]
        while pending:
            rel = pending.pop()
            folder = self.root / rel
            try:
                stat = os.stat(folder)
                if (stat.st_dev, stat.st_ino) in visited:
                    continue  # a symlink loop or a second link to an already scanned folder
                visited.add((stat.st_dev, stat.st_ino))
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                if rel == Path():
                    raise ImgclustError(f"cannot list the image folder {self.root}: {exc.strerror or exc}",
                                        "check the folder's permissions") from None
                self.unreadable_dirs.append(str(folder))
                continue
            subdirs = []
            for entry in entries:
                if entry.name.startswith(".") or (entry.is_symlink() and not follow_symlinks):
                    continue
                if _is_dir(entry):
                    if not os.path.exists(os.path.join(entry.path, OUTPUT_MARKER)):  # imgclust's own outputs
                        subdirs.append(rel / entry.name)
                elif os.path.splitext(entry.name)[1].lower() in extensions:
                    # kept even if unreadable or a broken link: load() then reports it as a bad image
                    found.append(rel / entry.name)
                else:
                    n_other += 1
            # reversed onto the stack = visited in sorted path order, so of two links to one folder the
            # first in sorted order is the one kept
            pending.extend(reversed(subdirs))
        return found, n_other


def _check_root(root: Path) -> None:
    if not root.exists():
        raise ImgclustError(f"image folder {root} does not exist", "check the path")
    if not root.is_dir():
        raise ImgclustError(f"{root} is a file, not a folder",
                            "pass the folder that contains the images (a .npy/.npz file is read as arrays)")


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; symlinks are filtered before this when not followed
    except OSError:
        return False


def _labels_from_layout(files: list[Path]) -> tuple[list[int] | None, list[str] | None]:
    """Class labels from ``root/<class>/<file>``, or ``(None, None)`` when the layout is anything else."""
    if any(len(f.parts) != 2 for f in files):
        return None, None
    class_names = sorted({f.parts[0] for f in files})
    if len(class_names) < 2:
        return None, None
    index = {name: i for i, name in enumerate(class_names)}
    return [index[f.parts[0]] for f in files], class_names
