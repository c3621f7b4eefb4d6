"""report.html: self-contained, escaped, and it renders in a real (headless) browser with every image loaded."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from imgclust.cli import main

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"  # git-ignored; screenshots land here for a human to look at
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]
EVIL = ["<script>alert(1)<script>.jpg", "<img src=x onerror=alert(2)>.jpg", "ünï cødé & \"quotes\".jpg"]
EVIL_CLASS = "<i>cats & dogs"


def chromium() -> str:
    """Path of a headless-capable Chromium; skip (fail under CI=true) when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    reason = "needs Chromium for the browser test (scripts/setup.sh installs Debian's chromium as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path) -> Path:
    """A labelled folder (2 classes, one with an HTML-like name; files with HTML-like names), clustered with K
    estimated over 2..4, report and PNG plots written."""
    root = tmp_path_factory.mktemp("report")
    photos = root / "photos"
    for cls, folder in (("cat", EVIL_CLASS), ("ship", "ships")):
        (photos / folder).mkdir(parents=True)
        for p in sorted((cifar10_dir / "test" / cls).glob("*.jpg"))[:10]:
            shutil.copy(p, photos / folder / p.name)
    for i, name in enumerate(EVIL):
        shutil.copy(sorted((cifar10_dir / "test" / "cat").glob("*.jpg"))[20 + i], photos / EVIL_CLASS / name)
    (photos / "ships" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    out = root / "run"
    assert main(["cluster", str(photos), "--k-range", "2:4", "--out", str(out), "--cache-dir", str(root / "cache"),
                 "--plots", "-q"]) == 0
    return out


@pytest.mark.shared_data
def test_report_files_and_escaping(run: Path) -> None:
    text = (run / "report.html").read_text(encoding="utf-8")
    for name in EVIL + [EVIL_CLASS]:
        assert name not in text                                  # never raw
        assert html.escape(name, quote=True) in text             # shown as text
    assert len(re.findall(r"<script", text)) == 1                # only the report's own check
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # nothing fetched from a network
    for section in ('id="overview"', 'id="k"', 'id="metrics"', 'id="clusters"', 'id="skipped"', 'id="config"'):
        assert section in text
    assert "truncated.jpg" in text                               # listed as skipped
    assert {p.name for p in (run / "plots").glob("*.png")} == {"cluster_sizes.png", "embedding_map.png",
                                                               "k_selection.png", "confusion.png"}
    assert (run / "k_selection.json").exists() and (run / "k_selection.png").exists()
    selection = json.loads((run / "k_selection.json").read_text())
    chosen = [step for step in selection["resolution_profile"]
              if step["resolution_from"] <= selection["settings"]["resolution"] < (step["resolution_to"] or 1e9)]
    assert [step["k"] for step in chosen] == [selection["k"]]    # the profile agrees with the estimate
    assert f"<tr><th>K = {selection['k']} (chosen)</th>" in text  # and the report shows it


@pytest.mark.shared_data
def test_report_in_headless_chromium(run: Path, tmp_path: Path) -> None:
    url = (run / "report.html").resolve().as_uri()
    dom = _browser(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', body.group(0))
    assert loaded and int(loaded.group(2)) > 20 and loaded.group(1) == loaded.group(2), body.group(0)
    assert 'data-images-ok="true"' in body.group(0)
    assert "<script>alert" not in dom.stdout and "<img src=x" not in dom.stdout  # no injected element
    shot = tmp_path / "report.png"
    result = _browser(tmp_path, "--window-size=1280,2600", f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2600)
        colours = np.asarray(im.convert("RGB").resize((64, 130))).reshape(-1, 3)
        assert len(np.unique(colours, axis=0)) > 50  # a page with figures and photos, not a blank one
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report_screenshot.png")


@pytest.mark.shared_data
def test_report_subcommand_rebuilds(run: Path, capsys: pytest.CaptureFixture) -> None:
    (run / "report.html").unlink()
    assert main(["report", str(run), "-q", "--map", "pca"]) == 0
    assert "report.html" in capsys.readouterr().out
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "2-D map" in text and text.count("data:image/jpeg;base64,") > 20


def test_report_of_an_image_array_has_thumbnails(tmp_path: Path) -> None:
    """A source that is not files (uint8 array): thumbnails come through the dataset."""
    rng = np.random.default_rng(0)
    images = np.zeros((24, 32, 32, 3), dtype=np.uint8)
    images[:12, :, :, 0] = 200   # reddish
    images[12:, :, :, 2] = 200   # bluish
    images += rng.integers(0, 40, size=images.shape, dtype=np.uint8)
    np.savez(tmp_path / "arr.npz", images=images, labels=np.repeat([0, 1], 12))
    out = tmp_path / "run"
    assert main(["cluster", str(tmp_path / "arr.npz"), "-k", "2", "--out", str(out),
                 "--cache-dir", str(tmp_path / "c"), "-q"]) == 0
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.count("data:image/jpeg;base64,") == 24 and 'id="metrics"' in text


def test_not_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "fix:" in capsys.readouterr().err
