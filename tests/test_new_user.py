"""The small things a new user trips over (issue 19): messages that name what the CLI has, quiet warnings, honest
timings, and `imgclust methods` listing each method's options."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import pytest

from imgclust.cli import build_parser, main
from imgclust.data import open_image
from imgclust.errors import BadImageError


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels (its data is one empty row: never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_a_huge_image_is_refused_quietly_with_the_cli_option_named(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_declaring(9500, 9500))  # 90 M pixels: over the limit, under twice Pillow's own
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here if it escaped
        with pytest.raises(BadImageError) as refused:
            open_image(path)
    assert "--max-pixels" in str(refused.value) and "raise max_pixels" not in str(refused.value)


def test_cli_errors_name_cli_things(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["cluster", str(tmp_path / "empty"), "-k", "2", "--out", str(tmp_path / "o"), "-q"]) == 2
    text = capsys.readouterr().err
    assert "fix:" in text and "ImageDataset" not in text
    assert "pass extensions=" not in text
    (tmp_path / "weird.bin").write_bytes(b"\0" * 10)
    assert main(["cluster", str(tmp_path / "weird.bin"), "-k", "2", "--out", str(tmp_path / "o"), "-q"]) == 2
    text = capsys.readouterr().err
    assert "builtin:NAME" in text and "ImageDataset" not in text and "EmbeddingDataset" not in text


def test_precision_help_matches_the_readme() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["cluster"].format_help()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "1.7x" in " ".join(help_text.split()) and "1.7×" in readme and "2x faster" not in help_text


def test_methods_command_lists_every_option_with_its_default(capsys: pytest.CaptureFixture) -> None:
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for method, option in (("kmeans", "n_init"), ("icbpl", "n_views"), ("secu", "epochs")):
        assert f"{method}:" in text and f".{option}=" in text, (method, option)
    # with what each does, from the docstring it is declared in
    assert "method.kmeans_below_agreement=0.7  where the two layouts' partitions agree less than this" in text
    assert "train.epochs=50  passes over the N samples" in text


@pytest.mark.shared_data
def test_summary_times_features_and_the_k_estimate_apart(cifar10_small_folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """On a first run (empty cache) the summary shows the extraction under "features", not under the K estimate,
    and not as 0.0 s."""
    assert main(["cluster", str(cifar10_small_folder), "--out", str(tmp_path / "run"), "--cache-dir",
                 str(tmp_path / "fresh-cache"), "-q", "--no-report", "--k-range", "2:6"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("time:"))
    stages = dict(part.strip().rsplit(" ", 2)[:2] for part in line.split(":", 1)[1].split(","))
    assert float(stages["features"]) > 1.0 and float(stages["estimate_k"]) < float(stages["features"]), line
