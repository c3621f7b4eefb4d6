"""CLI: clear errors that name the fix, exit code 2, and nothing written to the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclust.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize("k", ["1", "0", "-3"])
def test_k_below_two_refused(k: str, cifar10_small_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                             ) -> None:
    code, text = _run(["cluster", str(cifar10_small_folder), "-k", k, "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "fix:" in text and "2" in text


def test_k_above_number_of_images_refused(tmp_path: Path, cifar10_dir: Path, capsys: pytest.CaptureFixture
                                          ) -> None:
    folder = tmp_path / "three"
    folder.mkdir()
    for i, p in enumerate(sorted((cifar10_dir / "test" / "cat").glob("*.jpg"))[:3]):
        (folder / f"{i}.jpg").write_bytes(p.read_bytes())
    code, text = _run(["cluster", str(folder), "-k", "5", "--out", str(tmp_path / "o"), "-q",
                       "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2 and "only 3" in text and "fix:" in text


def test_empty_folder_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    code, text = _run(["cluster", str(tmp_path / "empty"), "-k", "2", "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "fix:" in text


def test_missing_source_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, text = _run(["cluster", str(tmp_path / "nope"), "-k", "2", "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "nope" in text


def test_unknown_backbone_refused(cifar10_small_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                  ) -> None:
    code, text = _run(["cluster", str(cifar10_small_folder), "-k", "3", "--backbone", "efficientnet_lite9",
                       "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "efficientnet_lite0" in text


def test_missing_weights_file_refused(cifar10_small_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                      ) -> None:
    missing = tmp_path / "dino.safetensors"
    code, text = _run(["cluster", str(cifar10_small_folder), "-k", "3", "--backbone", "vit_small_patch16_224",
                       "--weights", str(missing), "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and str(missing) in text


def test_unknown_method_refused(cifar10_small_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, text = _run(["cluster", str(cifar10_small_folder), "-k", "3", "--method", "dbscan",
                       "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "kmeans" in text


def test_unknown_precision_refused_before_any_work(cifar10_small_folder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    code, text = _run(["cluster", str(cifar10_small_folder), "-k", "3", "--precision", "half",
                       "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"), "-q"], capsys)
    assert code == 2 and "unknown precision 'half'" in text and "bfloat16" in text
    assert not (tmp_path / "cache").exists()  # refused before extracting anything


def test_list_commands(capsys: pytest.CaptureFixture) -> None:
    assert main(["backbones"]) == 0 and "efficientnet_lite0" in capsys.readouterr().out
    listed = main(["methods"]) == 0 and capsys.readouterr().out
    names = [line.split(":")[0] for line in listed.splitlines() if not line.startswith(" ")]
    assert "kmeans" in names and "umap-pacmap-kmeans (the default)" in names and "pacmap-kmeans" in names
    assert main(["datasets"]) == 0 and "builtin:digits" in capsys.readouterr().out
