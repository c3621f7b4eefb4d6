"""3. Bad numbers: NaN/inf, identical and duplicate images, K > distinct images, one class — clear or documented.

Every case runs ``imgclust cluster`` in this process under an alarm, so a hang fails the test instead of
stalling the suite. What each case does:

* NaN or inf in provided embeddings: exit 2, naming how many rows and which; values a float64 file holds
  beyond the float32 range: exit 2, saying so (not "NaN or inf", which the file does not contain).
* all-identical images (or embeddings), K larger than the number of distinct images, all-zero embeddings,
  a single image: exit 2 with the number of distinct images (or the reason) and a fix. Estimating K on
  identical images: exit 2 with a fix.
* duplicate images (K <= distinct): clustered; the copies of one image always share its cluster.
* one class: clustered; ACC/NMI/ARI are computed against that one label (NMI = ARI = 0 by definition).
  A folder with a single class sub-folder is not labelled at all (labels need two or more sub-folders).
* documented behaviour of the trainable methods: ICBPL (and SeCu) do not refuse K > distinct images as k-means
  does; they finish and leave the clusters they cannot fill empty (sizes 0 in the summary and in run.json).

A hypothesis test feeds random float arrays (any dtype width, NaN, inf, subnormals, huge values, repeated rows)
with a random K: the command either clusters every row into 0..K-1 or exits 2 with a message and a fix;
never a traceback, never a hang.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustness_support import (  # noqa: F401 (robustness_summary is an autouse fixture)
    copy_cifar,
    read_assignments,
    record,
    robustness_summary,
    run_cli,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _cluster(source: Path, out: Path, capsys: pytest.CaptureFixture, *options: str) -> tuple[int, str]:
    return run_cli(["cluster", source, "--out", out, "--cache-dir", out.parent / "cache", "-q", *options],
                   capsys, seconds=120)


def _sizes(run: Path) -> list[int]:
    return json.loads((run / "run.json").read_text())["cluster_sizes"]


def _embeddings(path: Path, features: np.ndarray, labels: np.ndarray | None = None) -> Path:
    np.savez(path, features=features, **({} if labels is None else {"labels": labels}))
    return path


@pytest.fixture
def blobs() -> np.ndarray:
    """30 embeddings in 3 well-separated groups."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    return (np.repeat(centres, 10, axis=0) + rng.normal(size=(30, 8))).astype(np.float32)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_are_refused_naming_the_rows(value: float, blobs: np.ndarray, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    blobs[3, 0] = value
    blobs[17, 5] = value
    code, text = _cluster(_embeddings(tmp_path / "e.npz", blobs), tmp_path / "run", capsys, "-k", "3")
    assert code == 2 and "2 of 30 embedding rows contain NaN or inf (rows [3, 17])" in text and "fix:" in text
    assert not (tmp_path / "run" / "assignments.csv").exists()
    record("bad input", f"embeddings with {value}")


def test_values_beyond_float32_are_named_as_such(blobs: np.ndarray, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    wide = blobs.astype(np.float64)
    wide[4] *= 1e300
    code, text = _cluster(_embeddings(tmp_path / "e.npz", wide), tmp_path / "run", capsys, "-k", "3")
    assert code == 2 and "beyond the float32 range" in text and "(rows [4])" in text and "NaN" not in text
    record("bad input", "embeddings beyond the float32 range")


@pytest.mark.parametrize(("case", "options", "expected"), [
    ("identical", ["-k", "3"], "the same feature direction"),
    ("identical", [], "fix:"),                      # K estimated
    ("two distinct", ["-k", "3"], "only 2 distinct"),
    ("all zero", ["-k", "2"], "all-zero rows"),
    ("one row", ["-k", "2"], "clustering needs at least 2"),
])
def test_degenerate_embeddings_get_a_clear_error(case: str, options: list[str], expected: str, blobs: np.ndarray,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    features = {"identical": np.repeat(blobs[:1], 30, axis=0), "two distinct": np.repeat(blobs[[0, 15]], 15, axis=0),
                "all zero": np.zeros_like(blobs), "one row": blobs[:1]}[case]
    code, text = _cluster(_embeddings(tmp_path / "e.npz", features), tmp_path / "run", capsys, *options)
    assert code == 2 and expected in text and "fix:" in text, text
    record("bad input", f"embeddings: {case}" + (" (K estimated)" if not options else ""))


def test_one_class_is_clustered_and_scored(blobs: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, text = _cluster(_embeddings(tmp_path / "e.npz", blobs, np.zeros(30, int)), tmp_path / "run", capsys,
                          "-k", "3")
    assert code == 0, text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_classes"] == 1 and metrics["nmi"] == 0 and metrics["ari"] == 0
    assert sum(_sizes(tmp_path / "run")) == 30
    record("bad input", "embeddings: one class")


@pytest.mark.parametrize("method", ["icbpl", "secu"])
def test_trainable_methods_leave_unfillable_clusters_empty(method: str, blobs: np.ndarray, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    options = ["--set", "epochs=2", "--set", "batch_size=10"]
    if method == "icbpl":
        options += ["--set", "n_neighbors=3", "--set", "latent_dim=8", "--set", "hidden_dim=16"]
    features = np.repeat(blobs[:1], 30, axis=0)
    code, text = _cluster(_embeddings(tmp_path / "e.npz", features), tmp_path / "run", capsys,
                          "-k", "3", "--method", method, *options)
    assert code == 0, text
    sizes = _sizes(tmp_path / "run")
    assert sorted(sizes) == [0, 0, 30] and "cluster sizes:" in text
    record("bad input", f"identical embeddings, K > distinct, {method}")


@pytest.mark.shared_data
def test_duplicate_and_identical_images(cifar10_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    originals = copy_cifar(cifar10_dir, tmp_path / "originals", 1, ["cat", "ship", "frog", "truck"])
    photos = tmp_path / "photos"
    photos.mkdir()
    groups = {}
    for i, src in enumerate(originals):  # 4 distinct images, 4 byte-identical copies of each under other names
        groups[i] = [photos / f"copy{c}_{i}.jpg" for c in range(4)]
        for copy in groups[i]:
            copy.write_bytes(src.read_bytes())
    code, text = _cluster(photos, tmp_path / "k4", capsys, "-k", "4")
    assert code == 0, text
    rows = read_assignments(tmp_path / "k4" / "assignments.csv")
    clusters = [{rows[str(p)]["cluster"] for p in copies} for copies in groups.values()]
    assert all(len(c) == 1 for c in clusters) and len(set.union(*clusters)) == 4  # copies together, 4 groups
    code, text = _cluster(photos, tmp_path / "k5", capsys, "-k", "5")
    assert code == 2 and "only 4 distinct" in text and "fix: use K <= 4" in text
    record("bad input", "duplicate images (K <= distinct)")
    record("bad input", "duplicate images, K > distinct")

    same = tmp_path / "same"
    same.mkdir()
    for c in range(6):
        (same / f"{c}.jpg").write_bytes(originals[0].read_bytes())
    for options, expected in ((["-k", "2"], "the same feature direction"), ([], "fix:")):
        code, text = _cluster(same, tmp_path / f"same{len(options)}", capsys, *options)
        assert code == 2 and expected in text, text
        record("bad input", "all-identical images" + (" (K estimated)" if not options else ""))


@pytest.mark.shared_data
def test_folder_of_one_class_is_unlabelled_and_clustered(cifar10_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    copy_cifar(cifar10_dir, tmp_path / "photos", 6, ["horse"])  # photos/horse/*.jpg: one class sub-folder
    code, text = _cluster(tmp_path / "photos", tmp_path / "run", capsys, "-k", "2")
    assert code == 0, text
    assert not (tmp_path / "run" / "metrics.json").exists() and sum(_sizes(tmp_path / "run")) == 6
    with open(tmp_path / "run" / "assignments.csv", newline="") as fh:
        assert "label" not in next(csv.reader(fh))
    record("bad input", "folder with one class")


def _float_arrays() -> st.SearchStrategy[np.ndarray]:
    """Half wild (NaN, inf, subnormals, extremes; mostly one repeated value), half ordinary finite values."""
    shape = st.tuples(st.integers(1, 24), st.integers(1, 6))

    def wild(dtype: np.dtype) -> st.SearchStrategy[np.ndarray]:
        elements = st.floats(width=8 * dtype.itemsize, allow_nan=True, allow_infinity=True, allow_subnormal=True)
        return hnp.arrays(dtype, shape, elements=elements)

    def ordinary(dtype: np.dtype) -> st.SearchStrategy[np.ndarray]:
        elements = st.floats(-1e4, 1e4, width=8 * dtype.itemsize)
        return hnp.arrays(dtype, shape, elements=elements, fill=st.nothing())  # every element drawn

    dtypes = st.sampled_from([np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)])
    return st.one_of(dtypes.flatmap(wild), dtypes.flatmap(ordinary))


# derandomized: CI tries the same examples each time; no shrinking: a hanging example would be rerun for minutes
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(features=_float_arrays(), k=st.integers(2, 6))
def test_random_embeddings_cluster_or_fail_clearly(features: np.ndarray, k: int,
                                                   capsys: pytest.CaptureFixture) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = _embeddings(Path(tmp) / "e.npz", features)
        code, text = run_cli(["cluster", source, "-k", str(k), "--out", Path(tmp) / "run", "--no-report", "-q"],
                             capsys, seconds=60)
        with np.errstate(over="ignore"):
            representable = np.isfinite(features.astype(np.float32)).all()
        if not representable:
            assert code == 2 and ("NaN or inf" in text or "float32 range" in text), text
            outcome = "non-finite or beyond float32: refused"
        elif len(features) < k:
            assert code == 2 and "fix:" in text, text
            outcome = "fewer rows than K: refused"
        elif code == 0:
            clusters = [int(r["cluster"]) for r in read_assignments(Path(tmp) / "run" / "assignments.csv").values()]
            assert len(clusters) == len(features) and all(0 <= c < k for c in clusters)
            outcome = "clustered"
        else:
            assert code == 2 and "imgclust: error: " in text and "\n  fix: " in text, text
            outcome = "refused with a fix (zero rows, too few distinct…)"
    record("bad input", f"random embedding array (hypothesis), {outcome}")
