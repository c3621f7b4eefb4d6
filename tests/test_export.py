"""imgclust export: one folder per cluster; never moves/overwrites originals, never writes outside --to."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from imgclust.cli import main
from imgclust.errors import ImgclustError
from imgclust.export import export_clusters, load_names


def _make_run(tmp_path: Path, names: list[str], clusters: list[int], k: int) -> tuple[Path, list[Path]]:
    """A minimal run folder (assignments.csv + run.json) over real files with the given names."""
    src = tmp_path / "photos"
    files = []
    for i, name in enumerate(names):
        sub = src / f"d{i % 2}"  # two sub-folders so that equal base names can occur
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / name
        path.write_bytes(f"image {i} {name}".encode())
        files.append(path)
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "assignments.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "cluster", "confidence", "distance"])
        for path, c in zip(files, clusters):
            w.writerow([str(path), c, "" if c < 0 else "0.9", "" if c < 0 else "0.1"])
    (run / "run.json").write_text(json.dumps({"source": str(src), "cluster_sizes": [0] * k}))
    return run, files


def _tree(root: Path) -> dict[str, str]:
    """relative path → what it is (link target, or file content)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "->" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes().decode()
        else:
            out[str(p.relative_to(root))] = "dir"
    return out


def _snapshot(files: list[Path]) -> list[tuple[str, bytes, int]]:
    return [(str(f), f.read_bytes(), f.stat().st_ino) for f in files]


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
def test_export_tree_idempotent_and_originals_untouched(tmp_path: Path, mode: str) -> None:
    names = ["a.jpg", "b photo.jpg", "Ünïcödé 猫.jpg", "a.jpg", "bad.jpg"]
    run, files = _make_run(tmp_path, names, [0, 1, 1, 0, -1], k=3)
    before = _snapshot(files)
    to = tmp_path / "out"
    first = export_clusters(run, to, mode=mode)
    assert first.ok and len(first.created) == 4 and first.unassigned == [str(files[4])]
    tree = _tree(to)
    assert {p.split(os.sep)[0] for p in tree} == {"cluster_00", "cluster_01"}  # empty cluster 2: no folder
    assert "cluster_01/b photo.jpg" in tree and "cluster_01/Ünïcödé 猫.jpg" in tree
    # the two a.jpg of cluster 0 get distinct, deterministic names
    zero = sorted(p for p in tree if p.startswith("cluster_00/"))
    assert len(zero) == 2 and all(p.startswith("cluster_00/a~") and p.endswith(".jpg") for p in zero)
    for f, c in zip(files[:4], [0, 1, 1, 0]):
        assert any(tree[p] == ("->" + str(f) if mode == "symlink" else f.read_text())
                   for p in tree if p.startswith(f"cluster_0{c}/"))
    second = export_clusters(run, to, mode=mode)  # re-run: same tree, nothing new, no duplicates
    assert second.ok and not second.created and len(second.existing) == 4
    assert _tree(to) == tree
    assert _snapshot(files) == before  # originals neither moved nor changed


def test_existing_different_file_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, files = _make_run(tmp_path, ["x.jpg", "y.jpg"], [0, 1], k=2)
    to = tmp_path / "out"
    (to / "cluster_00").mkdir(parents=True)
    foreign = to / "cluster_00" / "x.jpg"
    foreign.write_bytes(b"someone else's file")
    code = main(["export", str(run), "--to", str(to), "--mode", "copy", "-q"])
    text = capsys.readouterr().out
    assert code == 1 and "conflict" in text and "x.jpg" in text
    assert foreign.read_bytes() == b"someone else's file"
    assert (to / "cluster_01" / "y.jpg").read_bytes() == files[1].read_bytes()


def test_unsafe_file_names_refused(tmp_path: Path) -> None:
    run, files = _make_run(tmp_path, ["ok.jpg", "evil..jpg", "new\nline.jpg"], [0, 0, 1], k=2)
    to = tmp_path / "out"
    result = export_clusters(run, to)
    assert [r["name"] for r in result.refused] == ["evil..jpg", "new\nline.jpg"]
    assert (to / "cluster_00" / "ok.jpg").is_symlink() and not result.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photos", "run"]  # nothing written elsewhere


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", "x..y", "nul\u0000byte", "", "  ", "."])
def test_unsafe_folder_names_refused(tmp_path: Path, bad: str) -> None:
    run, _ = _make_run(tmp_path, ["a.jpg", "b.jpg"], [0, 1], k=2)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"0": "fine name", "1": bad}))
    with pytest.raises(ImgclustError) as err:
        export_clusters(run, tmp_path / "out", names=names)
    assert err.value.fix
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out" / "fine name").exists()


def test_names_map_spaces_unicode_and_duplicates(tmp_path: Path) -> None:
    run, _ = _make_run(tmp_path, ["a.jpg", "b.jpg"], [0, 1], k=3)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"0": "chats et chiens", "1": "voitures 🚗"}), encoding="utf-8")
    result = export_clusters(run, tmp_path / "out", names=names)
    assert result.ok and (tmp_path / "out" / "chats et chiens" / "a.jpg").is_symlink()
    assert (tmp_path / "out" / "voitures 🚗" / "b.jpg").is_symlink()
    assert load_names(names, 3)[2] == "cluster_02"
    names.write_text(json.dumps({"0": "same", "1": "Same"}))
    with pytest.raises(ImgclustError, match="share"):
        export_clusters(run, tmp_path / "out2", names=names)
    names.write_text(json.dumps({"7": "nope"}))
    with pytest.raises(ImgclustError, match="does not exist"):
        load_names(names, 3)


def test_symlinked_cluster_folder_pointing_outside_refused(tmp_path: Path) -> None:
    run, _ = _make_run(tmp_path, ["a.jpg"], [0], k=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    to = tmp_path / "out"
    to.mkdir()
    (to / "cluster_00").symlink_to(outside)
    with pytest.raises(ImgclustError, match="outside"):
        export_clusters(run, to)
    assert list(outside.iterdir()) == []


def test_not_a_run_folder_is_a_readable_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["export", str(tmp_path), "--to", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "not an imgclust run folder" in err and "fix:" in err
