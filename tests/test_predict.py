"""imgclust predict: a saved run assigns new images; the training images get their training clusters back."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from imgclust import ImageClusterer
from imgclust.cli import main

pytestmark = pytest.mark.shared_data


def _read(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["path"]: int(row["cluster"]) for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path) -> tuple[Path, Path, Path]:
    """(flat folder of 30 CIFAR-10 test images of 3 classes, its run folder with -k 3, feature cache)."""
    root = tmp_path_factory.mktemp("predict")
    photos = root / "photos"
    photos.mkdir()
    for name in ("cat", "ship", "truck"):
        for p in sorted((cifar10_dir / "test" / name).glob("*.jpg"))[:10]:
            shutil.copy(p, photos / f"{name} {p.name}")
    (photos / "broken.jpg").write_bytes(b"not an image")
    out, cache = root / "run", root / "cache"
    assert main(["cluster", str(photos), "-k", "3", "--out", str(out), "--cache-dir", str(cache), "-q",
                 "--no-report"]) == 0
    return photos, out, cache


def test_training_images_get_their_training_clusters(run: tuple[Path, Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    photos, out, _ = run
    capsys.readouterr()
    assert main(["predict", str(out), str(photos), "--out", str(tmp_path / "p.csv"), "-q"]) == 0
    assert "written 31 rows" in capsys.readouterr().out
    trained, predicted = _read(out / "assignments.csv"), _read(tmp_path / "p.csv")
    assert predicted == trained  # same paths, same clusters (-1 for the broken file in both)
    assert trained[str(photos / "broken.jpg")] == -1 and len(set(trained.values()) - {-1}) == 3


def test_api_round_trip(run: tuple[Path, Path, Path]) -> None:
    photos, out, _ = run
    trained = _read(out / "assignments.csv")
    loaded = ImageClusterer.load(out)
    files = sorted(str(p) for p in photos.glob("*.jpg") if p.name != "broken.jpg")
    assert loaded.predict(files).tolist() == [trained[f] for f in files]


def test_new_images_printed(run: tuple[Path, Path, Path], cifar10_dir: Path, capsys: pytest.CaptureFixture
                            ) -> None:
    _, out, _ = run
    new = [str(p) for name in ("cat", "ship") for p in sorted((cifar10_dir / "test" / name).glob("*.jpg"))[50:52]]
    capsys.readouterr()
    assert main(["predict", str(out), *new]) == 0
    text = capsys.readouterr().out
    assert all(Path(p).name in text for p in new) and text.count("cluster ") >= 4 and "per cluster:" in text


def test_readable_errors(run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photos, out, _ = run
    assert main(["predict", str(tmp_path), str(photos)]) == 2
    err = capsys.readouterr().err
    assert "no saved model" in err and "fix:" in err
    assert main(["predict", str(out), str(tmp_path / "missing.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_from_scratch_secu_never_runs_the_backbone(run: tuple[Path, Path, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A ResNet trained from scratch needs the decoded images only: no backbone pass is spent on fitting (or
    # on predicting), and the saved run reproduces its assignments.
    import imgclust.features as features_module

    photos, _, _ = run

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was run for a from-scratch model")

    monkeypatch.setattr(features_module, "extract_features", no_backbone)
    monkeypatch.setattr(features_module.FeatureSource, "extract", no_backbone)  # the estimator's way in
    clusterer = ImageClusterer(n_clusters=3, method="secu", num_workers=0, progress=False,
                               method_options={"encoder": "resnet18_cifar", "epochs": 1, "batch_size": 16})
    labels = clusterer.fit_predict(str(photos))
    assert "decode" in clusterer.timings_ and "features" not in clusterer.timings_
    assert (labels == -1).sum() == 1 and (labels >= 0).sum() == 30  # the broken file is skipped
    clusterer.save(tmp_path / "scratch")
    files = sorted(str(p) for p in photos.glob("*.jpg") if p.name != "broken.jpg")
    valid = [i for i, item in enumerate(clusterer.items_) if item in files]
    assert ImageClusterer.load(tmp_path / "scratch").predict(files).tolist() == \
        [int(labels[i]) for i in sorted(valid, key=lambda i: clusterer.items_[i])]


def test_average_pooled_runs_predict_with_average_pooled_features(run: tuple[Path, Path, Path], tmp_path: Path
                                                                  ) -> None:
    """``--pooling avg`` reaches the saved model, and a model saved before the setting existed (no ``pooling`` in
    model.json: fitted on average-pooled features) loads with it, so new images are encoded as its training ones."""
    import json

    photos, out, cache = run
    avg_run = tmp_path / "avg"
    assert main(["cluster", str(photos), "-k", "3", "--pooling", "avg", "--out", str(avg_run), "--cache-dir",
                 str(cache), "-q", "--no-report"]) == 0
    meta = json.loads((avg_run / "model.json").read_text())
    assert meta["estimator"]["pooling"] == "avg"
    files = sorted(str(p) for p in photos.glob("*.jpg") if p.name != "broken.jpg")
    trained = _read(avg_run / "assignments.csv")
    assert ImageClusterer.load(avg_run).predict(files).tolist() == [trained[f] for f in files]

    del meta["estimator"]["pooling"]
    (avg_run / "model.json").write_text(json.dumps(meta))
    older = ImageClusterer.load(avg_run)
    assert older.pooling == "avg" and older.feature_source().backbone(0).pooling == "avg"
    assert older.predict(files).tolist() == [trained[f] for f in files]
    current = ImageClusterer.load(out)
    assert current.pooling == "auto" and current.feature_source().backbone(0).pooling == "gem"
