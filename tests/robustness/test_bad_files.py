"""2. Bad files, fuzzed: in a folder of good images, every bad file is listed (exactly those), the rest clustered.

Hypothesis draws the bad files (kind, count, content, extension, cut point, declared size) next to real
CIFAR-10 images and images with a misleading extension; the folder is scanned and decoded with the library's
extraction path (``FolderDataset`` + ``decode_images``, no backbone, so each example takes milliseconds). One
fixed folder holding every kind goes through the real commands: ``imgclust cluster`` (decoding in a worker
process), then ``imgclust predict`` on the same folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from imgclust.backbones.base import Preprocess
from imgclust.data import DEFAULT_MAX_PIXELS, FolderDataset, IMAGE_EXTENSIONS
from imgclust.features import decode_images

from robustness_support import (  # noqa: F401 (robustness_summary is an autouse fixture)
    BAD_KINDS,
    MixedRun,
    mixed_run,
    modes_apply,
    no_hang,
    plant,
    png_bytes,
    read_assignments,
    record,
    robustness_summary,
    run_cli,
)

pytestmark = [pytest.mark.shared_data, pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

FUZZED_KINDS = [k for k in BAD_KINDS if k != "unreadable (mode 000)" or modes_apply()]
EXTENSIONS = [e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]
TINY = Preprocess(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def jpegs(cifar10_dir: Path) -> list[bytes]:
    """Real CIFAR-10 JPEGs (one per class) to build good and bad files from."""
    return [sorted((cifar10_dir / "test" / c).glob("*.jpg"))[7].read_bytes()
            for c in ("airplane", "bird", "cat", "deer", "ship", "truck")]


def bad_file_arguments(kind: str) -> st.SearchStrategy[dict]:
    """plant() arguments of one bad file of ``kind``."""
    if kind == "random bytes":
        return st.fixed_dictionaries({"data": st.binary(min_size=1, max_size=3000)})
    if kind.startswith("truncated"):
        return st.fixed_dictionaries({"cut": st.floats(0.0, 0.9)})
    if kind == "huge declared size (PNG)":
        return st.integers(1, 2**31 - 1).flatmap(lambda width: st.fixed_dictionaries(
            {"size": st.tuples(st.just(width), st.integers(DEFAULT_MAX_PIXELS // width + 1, 2**31 - 1))}))
    if kind == "huge declared size (JPEG)":
        return st.integers(DEFAULT_MAX_PIXELS // 65535 + 1, 65535).flatmap(lambda width: st.fixed_dictionaries(
            {"size": st.tuples(st.just(width), st.integers(DEFAULT_MAX_PIXELS // width + 1, 65535))}))
    if kind == "symlink loop":
        return st.fixed_dictionaries({"links": st.integers(1, 3)})
    return st.just({})


#: 0..2 files of every kind per example, each with its own extension (any image extension, any case).
bad_files = st.tuples(*[st.lists(st.tuples(st.just(kind), st.sampled_from(EXTENSIONS), bad_file_arguments(kind)),
                                 max_size=2) for kind in FUZZED_KINDS]
                      ).map(lambda per_kind: [f for files in per_kind for f in files]).filter(bool)


GOOD_FORMS = ("JPEG as is", "PNG named .jpg", "JPEG named .png", "JPEG named .JPEG")


# derandomized: CI tries the same examples each time; no shrinking: a hanging example would be rerun for minutes
@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bad=bad_files,
       good=st.lists(st.tuples(st.sampled_from(GOOD_FORMS), st.integers(0, 5)), min_size=1, max_size=5),
       depth=st.lists(st.booleans(), min_size=5 + 2 * len(FUZZED_KINDS), max_size=5 + 2 * len(FUZZED_KINDS)))
def test_fuzzed_bad_files_are_listed_exactly_and_the_rest_decoded(
        bad: list[tuple[str, str, dict]], good: list[tuple[str, int]], depth: list[bool], jpegs: list[bytes]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "up").symlink_to("..")  # a folder loop: must not make the scan endless or count twice
        good_paths = []
        for i, (form, source) in enumerate(good):
            folder = root / "sub" if depth[i] else root
            name, data = {"JPEG as is": (f"good{i}.jpg", jpegs[source]),
                          "PNG named .jpg": (f"good{i}.jpg", png_bytes(jpegs[source])),
                          "JPEG named .png": (f"good{i}.png", jpegs[source]),
                          "JPEG named .JPEG": (f"good{i}.JPEG", jpegs[source])}[form]
            (folder / name).write_bytes(data)
            good_paths.append(str(folder / name))
        bad_paths = []
        for i, (kind, ext, args) in enumerate(bad):
            folder = root / "sub" if depth[5 + i] else root
            made = plant(kind, folder / f"bad{i}{ext}", jpegs[i % len(jpegs)], **args)
            bad_paths += [str(p) for p in made]
            record("bad input", f"bad file: {kind}", len(made))
        record("bad input", "good image with a misleading extension",
               sum(form != "JPEG as is" for form, _ in good))

        with no_hang(30, "scanning and decoding the folder"):
            dataset = FolderDataset(root)
            images, valid, skipped = decode_images(dataset, TINY, num_workers=0, progress=False)

        listed = [s["item"] for s in skipped]
        assert sorted(listed) == sorted(bad_paths)                      # exactly the bad ones, each once
        assert sorted(dataset.items[i] for i in valid) == sorted(good_paths)  # all the rest, each once
        assert images.shape == (len(good_paths), 3, 16, 16)
        for entry in skipped:
            assert entry["reason"].startswith(entry["item"] + ": ") and len(entry["reason"]) > len(entry["item"]) + 5


@pytest.mark.skipif(not modes_apply(), reason="running as root: file modes do not stop root from reading "
                                                "(the fuzzed and fixed folders include the kind otherwise)")
def test_unreadable_file_is_listed(tmp_path: Path, jpegs: list[bytes]) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "ok.jpg").write_bytes(jpegs[0])
    secret = plant("unreadable (mode 000)", root / "secret.jpg", jpegs[1])[0]
    try:
        _, valid, skipped = decode_images(FolderDataset(root), TINY, num_workers=0, progress=False)
        assert [s["item"] for s in skipped] == [str(secret)] and "permission denied" in skipped[0]["reason"]
        assert len(valid) == 1
    finally:
        secret.chmod(0o644)
    record("bad input", "bad file: unreadable (mode 000)")


@pytest.fixture
def mixed(tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path) -> MixedRun:
    return mixed_run(tmp_path_factory, cifar10_dir)


def test_cluster_lists_exactly_the_bad_files_and_clusters_the_rest(mixed: MixedRun) -> None:
    """The fixed folder: every bad kind (HTML-like names too), through `imgclust cluster` with a decoding worker."""
    run = json.loads((mixed.run / "run.json").read_text())
    listed = {s["item"]: s["reason"] for s in run["skipped"]}
    assert sorted(listed) == sorted(mixed.bad)
    assert run["n_skipped"] == len(mixed.bad) and run["n_clustered"] == len(mixed.good)
    assert "pipe" in listed[next(p for p, k in mixed.bad.items() if k == "pipe (FIFO)")]
    assert "loop" in listed[next(p for p, k in mixed.bad.items() if k == "symlink loop")]
    rows = read_assignments(mixed.run / "assignments.csv")
    assert sorted(rows) == sorted(mixed.good + list(mixed.bad))      # nothing counted twice, .txt ignored
    assert all(0 <= int(rows[p]["cluster"]) < 3 and rows[p]["confidence"] for p in mixed.good)
    assert all(rows[p]["cluster"] == "-1" and rows[p]["confidence"] == "" for p in mixed.bad)
    for kind in set(mixed.bad.values()):
        record("bad input", f"bad file through `imgclust cluster`: {kind}",
               sum(k == kind for k in mixed.bad.values()))


def test_predict_lists_the_same_bad_files(mixed: MixedRun, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "new.csv"
    code, text = run_cli(["predict", mixed.run, mixed.photos, "--out", out, "-q"], capsys)
    assert code == 0, text
    predicted = read_assignments(out)
    clustered = read_assignments(mixed.run / "assignments.csv")
    assert sorted(predicted) == sorted(mixed.good + list(mixed.bad))
    assert all(predicted[p]["cluster"] == "-1" for p in mixed.bad)
    # the saved model puts the same images in the same clusters
    assert all(predicted[p]["cluster"] == clustered[p]["cluster"] for p in mixed.good)
    record("bad input", "bad file through `imgclust predict`", len(mixed.bad))
