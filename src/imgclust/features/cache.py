"""On-disk feature cache: shards written atomically while extracting, merged into one memory-mapped array.

Layout of one cache entry, ``CACHE_DIR/<key>/``::

    manifest.json        what was computed (backbone, weights hash, preprocessing, encoder, augmentation,
                         view, dataset fingerprint, file list, dtype, shape) and ``"complete": true`` at the end
    shards/000123.npy    features of rows [123*S, 124*S) while extraction runs (S = shard size)
    shards/000123.json   written after the .npy: marks the shard finished and lists its unreadable files
    features.npy         (N_valid, *shape) once complete; opened with mmap_mode="r", never loaded whole
    valid_indices.npy    (N_valid,) int64 rows of the dataset that decoded

An entry is reused only when its manifest matches the request field by field; a killed extraction resumes
from its finished shards. All files are written through a temporary file and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .._io import atomic_path, remove_stale_temporaries, write_json, write_npy

_logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$IMGCLUST_CACHE`` or ``$XDG_CACHE_HOME/imgclust`` (``~/.cache/imgclust``) + ``/features``."""
    root = os.environ.get("IMGCLUST_CACHE")
    if root:
        return Path(root) / "features"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "imgclust" / "features"


def cache_key(identity: dict[str, Any]) -> str:
    """A short stable hash of the fields that decide what the features are."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@dataclass
class FeatureSet:
    """Features of the rows of a dataset that could be decoded.

    Attributes:
        features: (N_valid, *shape) array, memory-mapped from the cache (read-only) when cached.
        valid_indices: (N_valid,) int64 dataset rows the features belong to.
        skipped: ``{"item": path, "reason": why}`` for each row that could not be decoded.
        manifest: the cache manifest (identity, shape, timings).
        path: the cache entry folder, or ``None`` when nothing was cached.
    """

    features: np.ndarray
    valid_indices: np.ndarray
    skipped: list[dict[str, str]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


class FeatureCache:
    """One cache entry: the folder, its manifest, its shards, and the final merge."""

    def __init__(self, root: Path, identity: dict[str, Any], items: list[str]):
        self.identity = {"format_version": CACHE_FORMAT_VERSION, **identity}
        self.items = items
        self.path = Path(root) / cache_key({**self.identity, "n_items": len(items)})
        self.shard_dir = self.path / "shards"

    # -- reuse -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this entry's lock: another process filling the same entry is waited for (its shards are not
        merged away under this one), and then its finished entry is reused."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Beside the entry, not in it: start() may delete and recreate the entry's folder.
        with open(self.path.parent / f"{self.path.name}.lock", "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _logger.warning("waiting for another process that is extracting the same features (%s)", self.path)
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def load_complete(self) -> FeatureSet | None:
        """The finished entry if its manifest matches this request exactly, else ``None``."""
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not manifest.get("complete") or manifest.get("identity") != self.identity:
            return None
        if manifest.get("items") != self.items:
            return None
        features = np.load(self.path / "features.npy", mmap_mode="r")
        valid = np.load(self.path / "valid_indices.npy")
        return FeatureSet(features, valid, manifest["skipped"], manifest, self.path)

    def start(self) -> None:
        """Create the entry, or keep its finished shards when the identity is the same (resume)."""
        manifest_path = self.path / "manifest.json"
        if manifest_path.exists():
            try:
                old = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError):
                old = {}
            if old.get("identity") != self.identity or old.get("items") != self.items:
                shutil.rmtree(self.path)
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)  # half-written shards or merges of a killed extraction
        if not manifest_path.exists():
            write_json(manifest_path, {"identity": self.identity, "items": self.items, "complete": False})

    # -- shards ------------------------------------------------------------------------------------------
    def _shard_paths(self, shard: int) -> tuple[Path, Path]:
        return self.shard_dir / f"{shard:06d}.npy", self.shard_dir / f"{shard:06d}.json"

    def finished_shard(self, shard: int) -> dict[str, Any] | None:
        """The shard's record when both its files are on disk, else ``None``."""
        array_path, record_path = self._shard_paths(shard)
        if not (array_path.exists() and record_path.exists()):
            return None
        try:
            return json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def write_shard(self, shard: int, features: np.ndarray, valid: np.ndarray, bad: list[dict[str, Any]],
                    seconds: float, rank: int = 0) -> None:
        """Store one shard: array first, record second, so the record proves the array is whole.

        ``rank`` records which process encoded it (under torchrun the shards are shared out)."""
        array_path, record_path = self._shard_paths(shard)
        write_npy(array_path, features)
        write_json(record_path, {"valid": valid.tolist(), "bad": bad, "seconds": seconds,
                                 "shape": list(features.shape), "rank": int(rank)})

    # -- merge -------------------------------------------------------------------------------------------
    def merge(self, n_shards: int, extra_manifest: dict[str, Any]) -> FeatureSet:
        """Concatenate finished shards into ``features.npy`` without holding them all in memory."""
        records = [self.finished_shard(s) for s in range(n_shards)]
        missing = [s for s, r in enumerate(records) if r is None]
        if missing:
            raise RuntimeError(f"cannot merge: shards {missing[:5]} of {self.path} are not finished")
        valid = np.concatenate([np.asarray(r["valid"], dtype=np.int64) for r in records]) if records \
            else np.zeros(0, dtype=np.int64)
        first = np.load(self._shard_paths(0)[0], mmap_mode="r")
        total = int(sum(r["shape"][0] for r in records))
        with atomic_path(self.path / "features.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(total, *first.shape[1:]))
            row = 0
            for s in range(n_shards):
                part = np.load(self._shard_paths(s)[0], mmap_mode="r")
                out[row:row + len(part)] = part
                row += len(part)
            out.flush()
            del out
        write_npy(self.path / "valid_indices.npy", valid)
        skipped = [b for r in records for b in r["bad"]]
        manifest = {"identity": self.identity, "items": self.items, "complete": True,
                    "n_valid": int(total), "shape": [total, *first.shape[1:]], "dtype": str(first.dtype),
                    "skipped": skipped, "extract_seconds": float(sum(r["seconds"] for r in records)),
                    "shards_per_rank": _shards_per_rank(records),
                    **extra_manifest}
        write_json(self.path / "manifest.json", manifest)
        shutil.rmtree(self.shard_dir, ignore_errors=True)
        merged = self.load_complete()
        assert merged is not None, f"{self.path}: manifest written but not readable"
        return merged


def _shards_per_rank(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many shards each process encoded, e.g. ``{"0": 3, "1": 3}`` after torchrun with 2 processes."""
    counts: dict[str, int] = {}
    for record in records:
        key = str(record.get("rank", 0))
        counts[key] = counts.get(key, 0) + 1
    return counts
