"""Atomic file writes and the run-folder lock: a killed process never leaves a half-written file.

A write goes to a hidden temporary ``.NAME.XXXXXXXX.imgclust-tmp`` next to the target and is renamed onto it
when complete. The writer holds an ``flock`` on its temporary, so :func:`remove_stale_temporaries` can tell the
leftovers of a killed writer (lock free) from a write in progress (lock held) and delete only the former.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import ImgclustError

#: Suffix of the temporaries of :func:`atomic_path` (distinctive, so that only they are ever swept).
TEMP_SUFFIX = ".imgclust-tmp"
#: File marking a run folder: a folder walk skips sub-folders holding it, so a run folder placed inside an image
#: folder never adds its own outputs (plots) to the next run of that folder.
OUTPUT_MARKER = ".imgclust-output"


def mark_output_folder(folder: str | os.PathLike, what: str) -> None:
    """Put :data:`OUTPUT_MARKER` into ``folder`` (created if needed); ``what`` says which command wrote it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OUTPUT_MARKER
    if not marker.exists():
        write_text(marker, f"imgclust {what}: folders holding this file are skipped when a folder above is "
                           "clustered.\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it becomes ``path`` in one step (atomic on POSIX).

    Args:
        path: the file to write.
        replace: replace an existing ``path`` (default); when False, a ``path`` that already exists is left
            alone and :class:`FileExistsError` is raised, so a file that appeared meanwhile is never overwritten.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # at most 64 bytes of the name in the prefix: the temporary's name must stay within the 255-byte limit
    short_name = os.fsencode(path.name)[:64].decode("utf-8", "ignore")
    fd, tmp = tempfile.mkstemp(prefix=f".{short_name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    tmp_path = Path(tmp)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the end: marks the temporary as in use
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual permissions
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp_path, path)
        else:
            _place_new(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
        os.close(fd)


def _place_new(tmp: Path, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path`` unless that name is taken (then FileExistsError)."""
    try:
        os.link(tmp, path)  # atomic, and never replaces an existing file (FileExistsError then)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        # A file system without hard links (FAT, exFAT): rename, once the name is known to be free.
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.rename(tmp, path)


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporaries that killed writers left in ``folder`` and its direct sub-folders (as deep as
    imgclust writes: ``checkpoints/``, ``plots/``, ``shards/``); return how many were removed.

    A temporary whose writer is alive is locked and kept, so this is safe while other processes write there.
    """
    removed = 0
    pattern = f".*{TEMP_SUFFIX}"
    for tmp in [*Path(folder).glob(pattern), *Path(folder).glob(f"*/{pattern}")]:
        try:
            fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # gone meanwhile, or not a plain file: not ours to touch
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer holds it
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class RunLock:
    """Exclusive lock on an output folder so two runs never interleave their files.

    The lock is ``DIR/.imgclust.lock`` held with ``fcntl.flock``; the kernel releases it when the process
    dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, folder: str | os.PathLike, remove_when_done: bool = False):
        self.path = Path(folder) / ".imgclust.lock"
        self.remove_when_done = remove_when_done
        self._created: list[Path] = []
        self._fh: Any = None

    def __enter__(self) -> "RunLock":
        self._created = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self._fh = open(self.path, "a+")
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._fh.close()
                self._fh = None
                raise ImgclustError(
                    f"another imgclust run is writing to {self.path.parent}",
                    "wait for it to finish, or choose another --out folder",
                ) from None
            if self._is_current_lock_file():
                break
            # The run that held it finished and removed the file between our open and flock: open the new one.
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        else:
            raise ImgclustError(f"could not lock {self.path.parent}: other runs keep starting and finishing there",
                                "wait for them to finish, or choose another --out folder")
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        # Holding the lock, no other run writes here: temporaries a killed run left behind can go.
        remove_stale_temporaries(self.path.parent)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            if self.remove_when_done:
                # Unlinked while still held, so no other run can take a lock on this file in between.
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                self._remove_created_if_empty()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def _is_current_lock_file(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fh.fileno()).st_ino
        except FileNotFoundError:
            return False

    def _remove_created_if_empty(self) -> None:
        """Folders this lock created that are still empty (a command refused or failed before writing)."""
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                return
