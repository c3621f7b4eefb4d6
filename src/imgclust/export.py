"""``imgclust export``: one folder per cluster, filled with links to (or copies of) the original images.

Safety rules:

- originals are only read (linked or copied), never moved, renamed or overwritten;
- nothing is written outside the ``--to`` folder: folder names (from ``--names`` or ``cluster_NN``) and file
  names that contain ``..``, a path separator or NUL, that are empty / ``.``, or whose destination resolves
  outside ``--to`` (e.g. through an existing symlinked folder) are refused;
- idempotent: re-running gives the same tree; a destination that already holds the same file (same link
  target, same inode, or same bytes) is left alone; one that holds a different file is never overwritten but
  reported as a conflict.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ._io import atomic_path, remove_stale_temporaries
from .errors import ImgclustError
from .runfolder import RUN_INFO, RunFolder, check_output_folder, refuse_inside_source

MODES = ("symlink", "hardlink", "copy")
#: ``--names auto``: the run's own cluster names (from the backbone's ImageNet head) as folder names.
AUTO_NAMES = "auto"


@dataclass
class ExportResult:
    """What an export did.

    Attributes:
        created: destinations written this time.
        existing: destinations that already held the same file (left alone).
        conflicts: ``{"source", "destination", "reason"}`` for destinations that hold a different file.
        refused: ``{"source", "name", "reason"}`` for files whose name is unsafe.
        unassigned: items not exported because they were skipped at clustering time (cluster -1).
        folders: cluster number → folder path.
    """

    created: list[Path] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    unassigned: list[str] = field(default_factory=list)
    folders: dict[int, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.conflicts and not self.refused


def _unsafe(name: str) -> str | None:
    """Why ``name`` may not be used as one path component, or None when it is safe."""
    if not name or name.strip() == "":
        return "empty name"
    if name in (".", ".."):
        return f"{name!r} is not a name"
    if ".." in name:
        return "contains '..'"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "contains a path separator"
    if "\0" in name:
        return "contains a NUL character"
    if any(ord(ch) < 32 for ch in name):
        return "contains a control character"
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        return "longer than 255 bytes"
    return None


def _inside(root: Path, path: Path) -> bool:
    """Does ``path`` (resolved, following any existing symlinked folder) stay inside ``root``?"""
    try:
        path.resolve(strict=False).relative_to(root)
        return True
    except ValueError:
        return False


def load_names(path: str | os.PathLike | None, n_clusters: int,
               cluster_names: list[str] | None = None) -> dict[int, str]:
    """Folder name of every cluster: ``cluster_00``… overridden by a JSON map ``{"0": "cats", ...}`` (or a list),
    or with ``path="auto"`` by the run's own cluster names (``cluster_names``): ``00_mammal``, ``01_truck``…

    Raises:
        ImgclustError: unreadable file, keys that are not cluster numbers, unsafe or duplicate names; ``auto`` for
            a run without names.
    """
    width = max(2, len(str(max(n_clusters - 1, 0))))
    names = {c: f"cluster_{c:0{width}d}" for c in range(n_clusters)}
    if path is None:
        return names
    if str(path) == AUTO_NAMES:
        if not cluster_names:
            raise ImgclustError("this run has no cluster names (its backbone has no ImageNet head, or it clustered "
                                "your own embeddings)", 'pass --names NAMES.json, e.g. {"0": "cats", "1": "cars"}')
        raw: Any = {str(c): f"{c:0{width}d}_{name}" for c, name in enumerate(cluster_names) if c < n_clusters}
    else:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ImgclustError(f"cannot read the names file {path}: {err}",
                                'write a JSON object such as {"0": "cats", "1": "cars"}') from err
    if isinstance(raw, list):
        raw = {str(i): v for i, v in enumerate(raw)}
    if not isinstance(raw, dict):
        raise ImgclustError(f"{path} must hold a JSON object mapping cluster numbers to names",
                            'write e.g. {"0": "cats", "1": "cars"}')
    for key, value in raw.items():
        try:
            c = int(key)
        except (TypeError, ValueError):
            raise ImgclustError(f"{path}: key {key!r} is not a cluster number",
                                f"use keys 0..{n_clusters - 1}") from None
        if not 0 <= c < n_clusters:
            raise ImgclustError(f"{path}: cluster {c} does not exist (the run has {n_clusters})",
                                f"use keys 0..{n_clusters - 1}")
        if not isinstance(value, str):
            raise ImgclustError(f"{path}: the name of cluster {c} must be a string, got {value!r}",
                                'write e.g. {"0": "cats"}')
        value = value.strip()
        why = _unsafe(value)
        if why:
            raise ImgclustError(f"{path}: the name {value!r} of cluster {c} is refused ({why})",
                                "use a plain folder name without '..', '/', '\\' or control characters")
        names[c] = value
    seen: dict[str, int] = {}
    for c, value in names.items():
        key = value.casefold()
        if key in seen:
            raise ImgclustError(f"{path}: clusters {seen[key]} and {c} would share the folder {value!r}",
                                "give every cluster a different name")
        seen[key] = c
    return names


def _same_file(src: Path, dst: Path, mode: str) -> bool:
    """Does the existing ``dst`` already hold ``src`` as ``mode`` would have made it?"""
    try:
        if dst.is_symlink():
            return mode == "symlink" and os.readlink(dst) == str(src)
        if not dst.is_file():
            return False
        if mode == "hardlink":
            return os.path.samefile(src, dst)
        if mode == "copy":
            if os.path.samefile(src, dst):
                return False
            if src.stat().st_size != dst.stat().st_size:
                return False
            return _digest(src) == _digest(dst)
        return False
    except OSError:
        return False


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _place(src: Path, dst: Path, mode: str) -> None:
    """Create ``dst`` from ``src``; never replaces an existing ``dst`` (FileExistsError instead).

    A copy is written to a hidden temporary and appears under its name only when complete, so an export
    killed mid-copy never leaves a truncated image behind (the next export removes the temporary).
    """
    if mode == "symlink":
        os.symlink(src, dst)
    elif mode == "hardlink":
        os.link(src, dst)
    else:
        with atomic_path(dst, replace=False) as tmp:
            with open(src, "rb") as inp, open(tmp, "wb") as out:
                shutil.copyfileobj(inp, out, 1 << 20)
            shutil.copystat(src, tmp)


def _file_names(items: list[tuple[str, int]]) -> list[str]:
    """Destination file name of each (source, cluster): the base name, disambiguated by a short hash of the full
    source path when two sources in one cluster share it (deterministic, so re-runs agree)."""
    counts: dict[tuple[int, str], int] = {}
    for src, c in items:
        key = (c, os.path.basename(src).casefold())
        counts[key] = counts.get(key, 0) + 1
    names = []
    for src, c in items:
        base = os.path.basename(src)
        if counts[(c, base.casefold())] > 1:
            stem, ext = os.path.splitext(base)
            tag = hashlib.sha1(src.encode("utf-8", "surrogateescape")).hexdigest()[:8]
            base = f"{stem}~{tag}{ext}"
        names.append(base)
    return names


def export_clusters(run_dir: str | os.PathLike, to: str | os.PathLike, mode: str = "symlink",
                    names: str | os.PathLike | None = None, progress: bool = False) -> ExportResult:
    """Build ``to/<cluster folder>/<file>`` for every clustered image of a run.

    Args:
        run_dir: the ``--out`` folder of ``imgclust cluster`` (its ``assignments.csv`` is read).
        to: destination root (created if needed).
        mode: ``"symlink"`` (default; absolute links to the originals), ``"hardlink"`` (same file system only)
            or ``"copy"``.
        names: optional JSON file mapping cluster numbers to folder names.
        progress: show a progress bar.

    Returns:
        :class:`ExportResult` (conflicts and refused names are reported there, not raised).

    Raises:
        ImgclustError: bad mode, not a run folder, items that are not files (array / built-in sources),
            unsafe names in ``names``, a destination root that is a file, hard links across file systems.
    """
    if mode not in MODES:
        raise ImgclustError(f"unknown export mode {mode!r}", f"use one of: {', '.join(MODES)}")
    run = RunFolder(run_dir)
    data = run.read_assignments()
    to = Path(to).expanduser()
    check_output_folder(to, "--to")
    info = run.read_json(RUN_INFO) or {}
    source = info.get("source")
    if isinstance(source, str) and os.path.isdir(source):
        refuse_inside_source(to, source, "--to")
    n_clusters = max(len(info.get("cluster_sizes") or []), int(data.clusters.max()) + 1 if data.clusters.size else 0)
    folder_names = load_names(names, n_clusters, data.cluster_names)
    rows = [(item, int(c)) for item, c in zip(data.items, data.clusters)]
    result = ExportResult(unassigned=[item for item, c in rows if c < 0])
    rows = [(item, c) for item, c in rows if c >= 0]
    not_files = [item for item, _ in rows if not os.path.isabs(item)]
    if not_files:
        raise ImgclustError(f"this run clustered {len(not_files)} items that are not image files "
                            f"(e.g. {not_files[0]!r}): nothing to link",
                            "export works on runs over a folder or a list of image files")

    to.mkdir(parents=True, exist_ok=True)
    root = to.resolve()
    for c, name in folder_names.items():
        folder = to / name
        if not _inside(root, folder) or folder.resolve() == root:
            raise ImgclustError(f"the folder {name!r} of cluster {c} resolves outside {to}",
                                "remove that symlink from the destination, or choose another --to")
        result.folders[c] = folder

    iterator: Any = list(zip(rows, _file_names(rows)))
    if progress:
        iterator = tqdm(iterator, desc="export", unit="file", leave=False)
    made_folders: set[int] = set()
    for (item, c), file_name in iterator:
        why = _unsafe(file_name)
        if why:
            result.refused.append({"source": item, "name": file_name, "reason": why})
            continue
        src = Path(item)
        folder = result.folders[c]
        dst = folder / file_name
        if c not in made_folders:
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise ImgclustError(f"{folder} exists and is not a plain folder", "remove it or choose another --to")
            folder.mkdir(exist_ok=True)
            remove_stale_temporaries(folder)  # copies a killed export left unfinished
            made_folders.add(c)
        if not _inside(root, dst.parent / "x"):
            result.refused.append({"source": item, "name": file_name, "reason": f"resolves outside {to}"})
            continue
        if not src.is_file():
            result.conflicts.append({"source": item, "destination": str(dst),
                                     "reason": "the original file is missing"})
            continue
        if os.path.lexists(dst):
            if _same_file(src, dst, mode):
                result.existing.append(dst)
            else:
                result.conflicts.append({"source": item, "destination": str(dst),
                                         "reason": "a different file is already there (left untouched)"})
            continue
        try:
            _place(src.absolute(), dst, mode)
        except FileExistsError:
            result.conflicts.append({"source": item, "destination": str(dst),
                                     "reason": "appeared while exporting (left untouched)"})
            continue
        except OSError as err:
            if mode == "hardlink" and err.errno in (18, 1, 95):  # EXDEV, EPERM, EOPNOTSUPP
                raise ImgclustError(f"cannot hard-link {src} into {folder}: {err.strerror}",
                                    "use --mode symlink or --mode copy (hard links need one file system)") from err
            raise ImgclustError(f"cannot write {dst}: {err.strerror or err}",
                                "check the destination's permissions and free space") from err
        result.created.append(dst)
    return result


def format_result(result: ExportResult, to: str | os.PathLike, mode: str, limit: int = 10) -> str:
    """A short summary for the terminal."""
    noun = {"symlink": "symlinks", "hardlink": "hard links", "copy": "copies"}.get(mode, mode)
    used = len({dst.parent for dst in result.created + result.existing})
    lines = [f"exported {len(result.created)} new {noun} ({len(result.existing)} already in place) into "
             f"{used} cluster folders under {to}"]
    if result.unassigned:
        lines.append(f"  {len(result.unassigned)} unreadable image(s) were not clustered and are not exported")
    for title, entries, key in (("conflict(s), not overwritten", result.conflicts, "destination"),
                                ("refused name(s)", result.refused, "name")):
        if entries:
            lines.append(f"  {len(entries)} {title}:")
            lines += [f"    {e[key]!r}: {e['reason']}" for e in entries[:limit]]
            if len(entries) > limit:
                lines.append(f"    … and {len(entries) - limit} more")
    return "\n".join(lines)
