"""Atomic file writes and the run-folder lock: a killed process never leaves a half-written file.

A write goes to a hidden temporary ``.NAME.XXXXXXXX.imgclust-tmp`` next to the target and is renamed onto it
when complete. The writer holds an ``flock`` on its temporary, so :func:`remove_stale_temporaries` can tell the
leftovers of a killed writer (lock free) from a write in progress (lock held) and delete only the former.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import ImgclustError

#: Suffix of the temporaries of :func:`atomic_path` (distinctive, so that only they are ever swept).
TEMP_SUFFIX = ".imgclust-tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it becomes ``path`` in one step (atomic on POSIX).

    Args:
        path: the file to write.
        replace: replace an existing ``path`` (default); when False, a ``path`` that already exists is left
            alone and :class:`FileExistsError` is raised, so a file that appeared meanwhile is never overwritten.
    """
    import fcntl

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
    import fcntl

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

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / ".imgclust.lock"
        self._fh: Any = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        # Holding the lock, no other run writes here: temporaries a killed run left behind can go.
        remove_stale_temporaries(self.path.parent)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
