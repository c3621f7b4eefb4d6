"""The run module: run_cluster writes what `imgclust cluster` writes; re-runs, checks and outputs that never surprise."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgclust import ImageClusterer, run_cluster
from imgclust.cli import main
from imgclust.errors import ImgclustError
from imgclust.run import default_out
from imgclust.runfolder import LOCK
from imgclust.terminal import format_curve

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path) -> Path:
    """12 CIFAR-10 test images of each of 4 classes, in class sub-folders (labelled)."""
    root = tmp_path_factory.mktemp("photos")
    folder = root / "photos"
    for name in ("cat", "ship", "truck", "frog"):
        (folder / name).mkdir(parents=True)
        for p in sorted((cifar10_dir / "test" / name).glob("*.jpg"))[:12]:
            shutil.copy(p, folder / name / p.name)
    return folder


@pytest.fixture(scope="module")
def flat_photos(photos: Path) -> Path:
    """The same images in one flat folder (no labels)."""
    flat = photos.parent / "flat"
    flat.mkdir()
    for p in sorted(photos.rglob("*.jpg")):
        shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
    return flat


@pytest.fixture(scope="module")
def cache(photos: Path) -> Path:
    return photos.parent / "cache"


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _report(out: Path) -> str:
    """report.html without its embedded images (base64 text matches any short word)."""
    return re.sub(r'data:[^"]*', "data:", (out / "report.html").read_text(encoding="utf-8"))


def test_run_cluster_writes_the_folder_the_cli_writes(photos: Path, cache: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    result = run_cluster(str(photos), out=tmp_path / "api", cache_dir=cache, progress=False)
    code, printed = _cli(["cluster", str(photos), "--out", str(tmp_path / "cli"), "--cache-dir", str(cache), "-q"],
                         capsys)
    assert code == 0, printed
    api, cli = tmp_path / "api", tmp_path / "cli"
    assert sorted(p.name for p in api.iterdir()) == sorted(p.name for p in cli.iterdir())
    assert result.clusterer.k_selection_ is not None and (api / "k_selection.json").exists()  # K was estimated
    for name in ("assignments.csv", "metrics.json", "model.safetensors"):
        assert (api / name).read_bytes() == (cli / name).read_bytes(), name
    api_k, cli_k = (json.loads((d / "k_selection.json").read_text()) for d in (api, cli))
    assert api_k.pop("seconds") >= 0 and cli_k.pop("seconds") >= 0
    assert api_k == cli_k
    api_model, cli_model = (json.loads((d / "model.json").read_text()) for d in (api, cli))
    for params in (api_model["estimator"], cli_model["estimator"]):
        params.pop("run_dir")  # the folder's own name
    assert api_model == cli_model
    api_run, cli_run = (json.loads((d / "run.json").read_text()) for d in (api, cli))
    assert api_run.keys() == cli_run.keys()
    for key in ("source", "cluster_sizes", "n_items", "skipped", "feature_cache"):
        assert api_run[key] == cli_run[key], key
    assert os.path.isabs(api_run["source"])
    for section in ('id="k"', 'id="metrics"', 'id="map"', 'id="clusters"'):
        assert section in _report(api) and section in _report(cli), section
    assert "K = " in printed and "ACC" in printed
    k = result.clusterer.n_clusters_  # the default method's run points to a second backbone and to the baseline
    assert f"better:  -k {k} --backbone efficientnet_lite0,efficientnet_lite2" in printed
    kept_kmeans = result.clusterer.fit_info_.get("partition_from") == "k-means"  # then k-means is no alternative
    assert (f"or:      -k {k} --method kmeans" in printed) != kept_kmeans


def test_rerun_into_a_used_folder_leaves_nothing_stale(photos: Path, flat_photos: Path, cache: Path,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "my-notes.txt").write_text("the user's own file")
    base = ["--out", str(out), "--cache-dir", str(cache), "-q"]
    assert _cli(["cluster", str(photos), *base, "--plots"], capsys)[0] == 0      # K estimated, labelled
    assert (out / "k_selection.json").exists() and (out / "metrics.json").exists() and (out / "plots").is_dir()
    assert 'id="k"' in _report(out) and 'id="metrics"' in _report(out)

    assert _cli(["cluster", str(photos), "-k", "3", *base], capsys)[0] == 0       # estimated K, then fixed K
    assert not (out / "k_selection.json").exists() and not (out / "k_selection.png").exists()
    assert not (out / "plots").exists()
    assert 'id="k"' not in _report(out) and "estimated:" not in _report(out)
    assert json.loads((out / "run.json").read_text())["config"]["n_clusters"] == 3

    assert _cli(["cluster", str(flat_photos), "-k", "4", *base], capsys)[0] == 0  # labelled, then unlabelled
    assert not (out / "metrics.json").exists()
    assert 'id="metrics"' not in _report(out) and "NMI" not in _report(out)
    header = (out / "assignments.csv").read_text().splitlines()[0]
    assert "label" not in header.split(",")
    assert (out / "my-notes.txt").read_text() == "the user's own file"  # never a file this tool did not write
    assert not (out / LOCK).exists()  # a finished run keeps no lock file


@pytest.mark.parametrize("case", [
    "out-is-file", "out-under-file", "cache-is-file", "batch-size-0", "workers-negative", "shard-size-0",
    "unknown-method", "unknown-option", "bad-option-value", "unknown-backbone", "bad-precision", "bad-k-range",
    "max-pixels-0",
])
def test_cluster_checks_every_setting_before_any_work(case: str, photos: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out, cache = tmp_path / "out", tmp_path / "fresh-cache"
    extra = {
        "out-is-file": ["--out", str(a_file)],
        "out-under-file": ["--out", str(a_file / "sub")],
        "cache-is-file": ["--cache-dir", str(a_file)],
        "batch-size-0": ["--batch-size", "0"],
        "workers-negative": ["--workers", "-1"],
        "shard-size-0": ["--shard-size", "0"],
        "unknown-method": ["--method", "nosuch"],
        "unknown-option": ["--set", "nosuch=1"],
        "bad-option-value": ["--set", "n_init=many"],
        "unknown-backbone": ["--backbone", "efficientnet_lite9"],
        "bad-precision": ["--precision", "half"],
        "bad-k-range": ["--k-range", "9:3"],
        "max-pixels-0": ["--max-pixels", "0"],
    }[case]
    args = ["cluster", str(photos), "--out", str(out), "--cache-dir", str(cache), "-q", *extra]
    code, text = _cli(args, capsys)
    assert code == 2, text
    assert "error:" in text and "fix:" in text and "Traceback" not in text
    assert not cache.exists()  # refused before any feature was extracted
    assert not out.exists()    # and no empty output folder (or lock file) is left behind


def test_export_and_predict_check_their_paths_first(photos: Path, cache: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert _cli(["cluster", str(photos), "-k", "4", "--out", str(run), "--cache-dir", str(cache), "-q",
                 "--no-report"], capsys)[0] == 0
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    image = next(photos.rglob("*.jpg"))
    for args in (["export", str(run), "--to", str(a_file / "sub")],
                 ["export", str(run), "--to", str(a_file)],
                 ["export", str(run), "--to", str(photos)],  # the source folder itself
                 ["predict", str(run), str(image), "--out", str(tmp_path)],
                 ["predict", str(run), str(image), "--out", str(a_file / "new.csv")],
                 ["predict", str(run), str(image), "--batch-size", "0"]):
        code, text = _cli(args, capsys)
        assert code == 2 and "fix:" in text and "Traceback" not in text, (args, text)
    assert a_file.read_text() == "x"


def test_outputs_inside_the_source_are_not_clustered_next_time(flat_photos: Path, cache: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "three"
    shutil.copytree(flat_photos, source)
    n_images = len(list(source.glob("*.jpg")))
    base = ["--cache-dir", str(cache), "-q"]
    assert _cli(["cluster", str(source), "-k", "3", "--out", str(source / "run"), "--plots", *base], capsys)[0] == 0
    code, text = _cli(["export", str(source / "run"), "--to", str(source / "sorted"), "-q"], capsys)
    assert code == 2 and "inside the run's source folder" in text and not (source / "sorted").exists()
    assert _cli(["export", str(source / "run"), "--to", str(tmp_path / "sorted"), "-q"], capsys)[0] == 0
    again = run_cluster(str(source), out=tmp_path / "again", n_clusters=3, cache_dir=cache, progress=False,
                        report=False)
    assert len(again.clusterer.items_) == n_images  # not the run folder's plots


def test_default_out_of_the_current_folder_is_named_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    folder = tmp_path / "holiday photos"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert default_out(".", "kmeans", "auto") == Path("runs") / "holiday-photos-kmeans-kauto"
    assert default_out(str(folder) + "/", "icbpl", 5) == Path("runs") / "holiday-photos-icbpl-k5"
    assert default_out("builtin:digits", "kmeans", 10) == Path("runs") / "builtin-digits-kmeans-k10"


def test_report_keeps_its_map_when_rebuilt_from_another_folder(photos: Path, cache: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(photos.parent)
    assert _cli(["cluster", photos.name, "-k", "4", "--out", str(tmp_path / "run"), "--cache-dir", str(cache),
                 "-q"], capsys)[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "run" / "report.html").unlink()
    code, text = _cli(["report", str(tmp_path / "run"), "-q"], capsys)
    assert code == 0, text
    assert 'alt="2-D map of the embeddings"' in _report(tmp_path / "run")
    assert "No 2-D map" not in _report(tmp_path / "run")


def test_predict_on_unreadable_images_says_why(photos: Path, cache: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    run = run_cluster(str(photos), out=tmp_path / "run", n_clusters=4, cache_dir=cache, progress=False,
                      report=False).out
    bad = tmp_path / "bad.gif"
    bad.write_bytes(b"GIF89a not really")
    code, text = _cli(["predict", str(run), str(bad)], capsys)
    assert code == 2 and "bad.gif" in text and "could be read" in text and "(0, " not in text
    with pytest.raises(ImgclustError, match="missing.jpg"):
        ImageClusterer.load(run).predict([str(tmp_path / "missing.jpg")])
    good = next(photos.rglob("*.jpg"))
    code, text = _cli(["predict", str(run), str(good), str(bad)], capsys)
    assert code == 0 and "unreadable: " in text  # the reason follows, not just "unreadable"


def test_estimator_estimates_k_itself(photos: Path, cache: Path) -> None:
    clusterer = ImageClusterer(n_clusters="auto", k_range=(2, 8), cache_dir=str(cache), progress=False)
    clusterer.fit(str(photos))
    selection = clusterer.k_selection_
    assert selection is not None and selection.k_values == list(range(2, 9))
    assert clusterer.n_clusters_ == selection.k == len(np.unique(clusterer.labels_))
    assert clusterer.n_clusters == "auto"  # the parameter stays as given (scikit-learn's convention)
    # 48 images are under the layout's row floor: the raw features' k-means partitions
    assert selection.settings["features"] == "raw" and selection.settings["partitions"] == "kmeans"


def test_whitened_run_estimates_k_on_umap_partitions_of_the_whitened_features(
        photos: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default method whitens, so K is estimated on the whitened features with UMAP-layout partitions (the
    row floor lowered for 48 images); another criterion keeps the raw features' k-means partitions."""
    monkeypatch.setattr("imgclust.kselect.UMAP_MIN_ROWS", 40)
    monkeypatch.setattr("imgclust.estimator.UMAP_MIN_ROWS", 40)
    clusterer = ImageClusterer(n_clusters="auto", k_range=(2, 8), cache_dir=str(cache), progress=False)
    clusterer.fit(str(photos))
    selection = clusterer.k_selection_
    assert selection.settings["features"] == "whitened" and selection.settings["partitions"] == "umap"
    assert selection.settings["resolution"] == 0.75 and clusterer.n_clusters_ == selection.k
    assert "UMAP-layout partitions of the whitened features" in format_curve(selection)
    assert clusterer.fit_info_["kmeans_below_agreement"] == 0.7  # whitened: the declared default
    other = ImageClusterer(n_clusters="auto", k_range=(2, 8), k_criterion="eigengap", cache_dir=str(cache),
                           progress=False).fit(str(photos))
    assert other.k_selection_.settings["features"] == "raw" and other.k_selection_.settings["partitions"] == "kmeans"


def test_clusters_get_names_everywhere(photos: Path, cache: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    """A name per cluster from the backbone's ImageNet head: in the summary, assignments.csv, run.json, the
    report and `export --names auto`; user embeddings fall back to numbers."""
    out = tmp_path / "run"
    code, printed = _cli(["cluster", str(photos), "-k", "4", "--out", str(out), "--cache-dir", str(cache), "-q"],
                         capsys)
    assert code == 0, printed
    names = json.loads((out / "run.json").read_text())["cluster_names"]
    assert len(names) == 4 and len(set(names)) == 4 and all(names)
    assert all(f"({name})" in printed for name in names)
    rows = (out / "assignments.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["path", "cluster", "cluster_name"]
    assert all(row.split(",")[2] == names[int(row.split(",")[1])] for row in rows[1:])
    assert all(name in _report(out) for name in names)
    assert _cli(["export", str(out), "--to", str(tmp_path / "sorted"), "--names", "auto", "-q"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "sorted").iterdir()) == [f"{c:02d}_{n}" for c, n in enumerate(names)]

    features = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    np.save(tmp_path / "emb.npy", features)
    embedded = run_cluster(str(tmp_path / "emb.npy"), out=tmp_path / "emb", n_clusters=3, progress=False)
    assert embedded.clusterer.cluster_names_ is None
    assert "cluster_name" not in (tmp_path / "emb" / "assignments.csv").read_text().splitlines()[0]
    code, text = _cli(["export", str(tmp_path / "emb"), "--to", str(tmp_path / "x"), "--names", "auto"], capsys)
    assert code == 2
