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
from imgclust.duplicates import DuplicateGroup, Outlier, duplicate_rows, outlier_rows
from imgclust.report.html import RunData, load_run, resolve_source, write_report
from imgclust.runfolder import Assignments, RunFolder

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


# -- the report from memory, and its new parts (names, duplicates, outliers, quality) --------------------------

EVIL_CLUSTER_NAME = "<b>tabby</b> & 'cat'"
LONG_SKIPPED = ("holiday_2023_summer_trip_to_the_mountains_with_everyone/day_03_morning_hike_to_the_lake/"
                "IMG_20230714_081532_HDR_edited_final_version_for_the_family_album.jpg")


def _images(folder: Path, n: int, cifar10_dir: Path | None = None) -> list[str]:
    """``n`` image files: CIFAR-10 test photos when given, else flat colours; some with HTML-like names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted((cifar10_dir / "test").glob("*/*.jpg"))[::37][:n] if cifar10_dir else []
    paths = []
    for i in range(n):
        path = folder / (EVIL[i] if i < len(EVIL) else f"img_{i:03d}.jpg")
        if photos:
            shutil.copy(photos[i], path)
        else:
            Image.new("RGB", (32, 32), (40 * (i % 6), 255 - 20 * (i % 12), 9 * i % 256)).save(path)
        paths.append(str(path))
    return paths


def _run_data(run_dir: Path, items: list[str], **parts) -> tuple[RunData, np.ndarray]:
    """Three clusters of ten rows (row 30 skipped), with (N_clustered, 8) features that separate them."""
    n = len(items)
    clusters = np.append(np.repeat(np.arange(3), 10), -1)[:n]
    rng = np.random.default_rng(0)
    confidence = np.where(clusters >= 0, rng.uniform(0.3, 1.0, n), np.nan)
    distance = np.where(clusters >= 0, rng.uniform(0.1, 0.9, n), np.nan)
    features = (np.eye(8)[clusters[clusters >= 0]] * 3 + rng.normal(0, 0.3, (int((clusters >= 0).sum()), 8)))
    run = {"source": str(Path(items[0]).parent), "config": {"method": "kmeans", "backbone": "efficientnet_lite0"},
           "timings_seconds": {"total": 1.5}, "skipped": [{"item": items[-1], "reason": "cannot identify image"}]}
    data = RunData(run_dir=run_dir, items=items, clusters=clusters, confidence=confidence, distance=distance,
                   labels=None, n_clusters=3, run=run, metrics=None, k_selection=None, model=None, **parts)
    return data, features.astype(np.float32)


ALL_PARTS = {
    "cluster_names": [EVIL_CLUSTER_NAME, "ship", "airliner"],
    "duplicates": [{"kind": "exact", "items": [3, 4], "similarity": 1.0},
                   {"kind": "near", "items": [12, 13, 25], "similarity": 0.973}],
    "outliers": [{"row": 4, "score": 2.5}, {"row": 21, "score": 1.75}],
    "quality": {"kappa": 0.8125, "per_space": [0.8, 0.825], "n_folds": 5},
    "candidates": [{"method": "kmeans", "k": 3, "kappa": 0.8125, "chosen": True},
                   {"method": "turtle", "k": 3, "kappa": 0.5}],
}


def _report_with_all_parts(tmp_path: Path, cifar10_dir: Path | None = None) -> tuple[Path, RunData]:
    items = _images(tmp_path / "photos", 31, cifar10_dir)
    out = tmp_path / "run"
    out.mkdir()
    data, features = _run_data(out, items, **ALL_PARTS)
    data.run["skipped"].append({"item": str(tmp_path / LONG_SKIPPED), "reason": "cannot identify image file"})
    data.run["fit_info"] = {"layout_agreement": 0.6312, "partition_from": "k-means"}  # as umap-pacmap-kmeans does

    def no_reading_back(_: RunData) -> None:
        raise AssertionError("features were passed: nothing may be read back")

    write_report(out, data=data, features=features, load_features=no_reading_back, map_method="pca",
                 progress=False)
    return out / "report.html", data


def test_report_from_memory_with_names_duplicates_outliers_quality(tmp_path: Path) -> None:
    report, _ = _report_with_all_parts(tmp_path)
    assert not (tmp_path / "run" / "assignments.csv").exists()  # written from memory alone
    text = report.read_text(encoding="utf-8")
    for section in ("overview", "map", "sizes", "clusters", "duplicates", "outliers", "skipped", "config"):
        assert re.search(f'<section id="{section}"[ >]', text) and f'href="#{section}"' in text
    assert 'alt="2-D map of the embeddings"' in text
    assert EVIL_CLUSTER_NAME not in text
    escaped_name = html.escape(EVIL_CLUSTER_NAME, quote=True)
    assert f'Cluster 0 · <span class="name">{escaped_name}</span>' in text   # gallery heading
    assert f"<td>{escaped_name}</td>" in text                                 # sizes table
    assert "Cluster 2 · <span class=\"name\">airliner</span>" in text
    assert '<span class="badge exact">exact</span>' in text and '<span class="badge near">near</span>' in text
    assert "similarity 0.973" in text and "score 2.5 · cluster 0" in text
    assert "<td>0.8125</td>" in text and "κ in space 1" in text                # quality
    assert "the two layouts agree" in text and "<td>0.6312</td>" in text
    assert "development runs with agreement &lt; 0.7: ACC 0.42-0.82" in text              # what 0.63 meant there
    assert "so the clusters are spherical k-means&#x27; partition" in text                 # and what it changed
    assert LONG_SKIPPED.replace("/", "/<wbr>") in text                         # wraps between folders
    assert '<tr class="chosen"><td>kmeans</td><td>3</td><td>0.8125</td></tr>' in text
    assert "<td>turtle</td>" in text
    # every thumbnail embedded once; repeats (row 4: gallery, duplicates, outliers) copy the first by id
    uris = re.findall(r'src="(data:image/jpeg;base64,[^"]+)"', text)
    assert len(uris) == len(set(uris)) > 20
    copies = re.findall(r'data-copy-of="(thumb-\d+)"', text)
    assert "thumb-4" in copies and all(f'id="{anchor}"' in text for anchor in copies)
    assert len(re.findall(r"<script", text)) == 1


def test_report_without_optional_parts_leaves_their_sections_out(tmp_path: Path) -> None:
    items = _images(tmp_path / "photos", 31)
    data, features = _run_data(tmp_path, items)
    write_report(tmp_path, data=data, features=features, map_method="pca", progress=False)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    for absent in ('id="duplicates"', 'id="outliers"', 'class="name"', "label-free quality", 'id="k"',
                   'id="metrics"', 'data-copy-of="', "layouts agree"):
        assert absent not in text
    assert "<h3>Cluster 1</h3>" in text


def test_report_map_from_the_feature_loader_or_a_note(tmp_path: Path) -> None:
    items = _images(tmp_path / "photos", 31)
    data, features = _run_data(tmp_path, items)
    pixels = np.zeros((30, 0), np.float32)  # a method trained on pixels: not features for the map
    write_report(tmp_path, data=data, features=pixels, load_features=lambda _: features, map_method="pca",
                 progress=False)
    assert 'alt="2-D map of the embeddings"' in (tmp_path / "report.html").read_text(encoding="utf-8")
    write_report(tmp_path, data=data, load_features=lambda _: None, map_method="pca", progress=False)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "2-D map of the embeddings" not in text and "No 2-D map" in text


def test_skipped_names_wrap_between_folders_not_inside_names(tmp_path: Path) -> None:
    items = _images(tmp_path / "a_rather_long_folder_name" / "another_long_folder", 31)
    data, features = _run_data(tmp_path, items)
    write_report(tmp_path, data=data, features=features, map_method="pca", progress=False)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    row = re.search(r'<table class="files">.*?</table>', text, re.DOTALL).group(0)
    assert "a_rather_long_folder_name/<wbr>another_long_folder/<wbr>img_030.jpg" in row
    assert "break-all" not in text and "overflow-wrap:anywhere" not in text


def test_relative_source_resolved_against_the_recorded_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """`imgclust report RUN` from another directory keeps the map of a run whose source was given relative."""
    rng = np.random.default_rng(0)
    embeddings = np.concatenate([rng.normal(c * 3, 0.2, (10, 6)) for c in range(3)]).astype(np.float32)
    work = tmp_path / "work"
    work.mkdir()
    np.savez(work / "emb.npz", features=embeddings)
    run_dir = tmp_path / "run"
    folder = RunFolder(run_dir)
    run_dir.mkdir()
    clusters = np.repeat(np.arange(3), 10)
    folder.write_assignments(Assignments([f"emb.npz[{i}]" for i in range(30)], clusters, np.full(30, 0.9),
                                         np.full(30, 0.1)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    folder.write_json("run.json", {"source": "emb.npz", "cwd": str(work), "config": {}, "cluster_sizes": [10] * 3})
    assert resolve_source({"source": "emb.npz", "cwd": str(work)}) == (str(work / "emb.npz"), "")
    write_report(run_dir, map_method="pca", progress=False)
    assert 'alt="2-D map of the embeddings"' in (run_dir / "report.html").read_text(encoding="utf-8")

    folder.write_json("run.json", {"source": "emb.npz", "config": {}, "cluster_sizes": [10] * 3})
    spec, note = resolve_source({"source": "emb.npz"})
    assert spec is None and "relative path" in note
    write_report(run_dir, map_method="pca", progress=False)  # fails soft: the report without its map
    assert "No 2-D map: cannot reopen the source" in (run_dir / "report.html").read_text(encoding="utf-8")


@pytest.mark.shared_data
def test_report_subcommand_keeps_the_map_from_another_directory(run: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(run), "-q", "--map", "pca"]) == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    assert 'alt="2-D map of the embeddings"' in text  # the features came from the feature cache


@pytest.mark.shared_data
def test_report_with_all_parts_in_headless_chromium(tmp_path: Path, cifar10_dir: Path) -> None:
    report, _ = _report_with_all_parts(tmp_path, cifar10_dir)
    url = report.resolve().as_uri()
    dom = _browser(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-images-ok="true"' in body, body  # the copied thumbnails decoded too
    shot = tmp_path / "report.png"
    result = _browser(tmp_path, "--window-size=1280,4200", f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report_sections_screenshot.png")


def test_report_subcommand_shows_the_parts_the_folder_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """load_run reads names (assignments.csv), duplicates.csv, outliers.csv and run.json's quality back."""
    items = _images(tmp_path / "photos", 31)
    data, features = _run_data(tmp_path / "run", items)
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_assignments(Assignments(items, data.clusters, data.confidence, data.distance,
                                         cluster_names=ALL_PARTS["cluster_names"]))
    rows = duplicate_rows([DuplicateGroup("exact", (3, 4), 1.0), DuplicateGroup("near", (12, 13, 25), 0.973)], items)
    folder.write_table("duplicates.csv", list(rows[0]), [list(r.values()) for r in rows])
    rows = outlier_rows([Outlier(4, 0.21, -5.5), Outlier(21, 0.3, -3.75)], items)
    folder.write_table("outliers.csv", list(rows[0]), [list(r.values()) for r in rows])
    folder.write_json("run.json", {**data.run, "quality": ALL_PARTS["quality"], "cluster_sizes": [10] * 3})

    loaded = load_run(folder.path)
    assert loaded.cluster_names == ALL_PARTS["cluster_names"]
    assert loaded.duplicates == ALL_PARTS["duplicates"]
    assert loaded.outliers == [{"row": 4, "score": 5.5}, {"row": 21, "score": 3.75}]
    write_report(folder.path, load_features=lambda _: features, map_method="pca", progress=False)
    text = (folder.path / "report.html").read_text(encoding="utf-8")
    assert 'id="duplicates"' in text and 'id="outliers"' in text and "score 5.5 · cluster 0" in text
    assert "Cluster 1 · <span class=\"name\">ship</span>" in text and "<td>0.8125</td>" in text
