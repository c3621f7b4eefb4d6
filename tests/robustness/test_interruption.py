"""1. Interruption: SIGKILL during feature extraction, training and export; the same command then resumes.

Each test runs the real command in a child process, SIGKILLs it (with its whole process group) as soon as the
files it writes show the wanted progress, checks that every file it left reads back whole, runs the same
command again (more than once for extraction and training: a resumed run is killed too), and compares the end
result with an uninterrupted run of that command.

The kill points are read from disk: shard records of the feature cache, lines of ``train_log.jsonl``,
exported files; no hook in the library. Extraction runs with ``--shard-size 4`` (40 images = 10 shards) so
that a CPU reaches them in seconds; the killed export (a test-side patch of the child process) copies each file
in two halves with a pause between them, so that the kill lands in the middle of a file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from imgclust.train import load_checkpoint

from robustness_support import (  # noqa: F401 (robustness_summary is an autouse fixture)
    MixedRun,
    assert_same_assignments,
    assert_whole_files,
    copy_cifar,
    digits_embeddings,
    epochs_logged,
    mixed_run,
    record,
    robustness_summary,
    run_cli,
    start_child,
    temporaries,
    tree,
)

SHARD_SIZE = 4


def _finished_shards(cache: Path) -> int:
    return len(list(cache.glob("*/shards/*.json")))


@pytest.mark.slow
@pytest.mark.shared_data
def test_feature_extraction_killed_twice_resumes_to_the_uninterrupted_result(
        tmp_path: Path, cifar10_dir: Path, capsys: pytest.CaptureFixture, single_thread: None) -> None:
    photos = tmp_path / "photos"
    copy_cifar(cifar10_dir, photos, 10, ["airplane", "cat", "ship", "truck"])  # 40 images = 10 shards
    n_shards = 40 // SHARD_SIZE
    out, cache, logs = tmp_path / "run", tmp_path / "cache", tmp_path / "logs"
    # Without the whitening's views: one cache entry, whose shards the kill points count (the views are cached by
    # the same code).
    options = ["-k", "4", "--workers", "0", "--shard-size", str(SHARD_SIZE), "--batch-size", str(SHARD_SIZE),
               "--whitening", "none"]
    command = ["cluster", photos, *options, "--out", out, "--cache-dir", cache]

    done_before = 0
    for _ in range(2):
        child = start_child(command, logs)
        child.kill_when(lambda: _finished_shards(cache) >= done_before + 2)
        if done_before:
            assert f"resuming extraction: {done_before} of {n_shards} shards already done" in child.output()
        done = _finished_shards(cache)
        assert done_before < done < n_shards, "the kill must land mid-extraction"
        assert not list(cache.glob("*/features.npy")), "a killed extraction leaves no merged array"
        assert assert_whole_files(cache) >= 2 * done  # every shard array and record on disk is whole
        assert_whole_files(out)
        done_before = done
        record("interruption", "SIGKILL during feature extraction")

    final = start_child(command, logs)
    assert final.wait() == 0, final.output()[-3000:]
    assert f"resuming extraction: {done_before} of {n_shards} shards already done" in final.output()

    # The same command, never interrupted.
    ref_out, ref_cache = tmp_path / "ref", tmp_path / "ref-cache"
    code, text = run_cli(["cluster", photos, *options, "--out", ref_out, "--cache-dir", ref_cache, "-q"], capsys)
    assert code == 0, text
    [resumed_features], [straight_features] = cache.glob("*/features.npy"), ref_cache.glob("*/features.npy")
    np.testing.assert_allclose(np.load(resumed_features), np.load(straight_features), rtol=1e-5, atol=1e-5)
    assert_same_assignments(out / "assignments.csv", ref_out / "assignments.csv")
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (out, ref_out))
    assert metrics["acc"] == ref_metrics["acc"] and metrics["nmi"] == pytest.approx(ref_metrics["nmi"])
    # Nothing half-written and nothing left over: the same files as the uninterrupted run.
    assert not temporaries(out) and not temporaries(cache) and not list(cache.glob("*/shards"))
    assert set(tree(out)) == set(tree(ref_out))
    assert assert_whole_files(out) == assert_whole_files(ref_out)
    record("lost", "feature extraction", 0)


ICBPL_OPTIONS = ["--method", "icbpl", "--set", "epochs=40", "--set", "batch_size=50", "--set", "latent_dim=16",
                 "--set", "hidden_dim=32", "--set", "n_neighbors=5"]


def _resumed_after(output: str) -> int:
    """N of the loop's "resuming icbpl from … after epoch N" line."""
    found = re.search(r"resuming icbpl from \S+ after epoch (\d+)", output)
    assert found, output[-3000:]
    return int(found.group(1))


@pytest.mark.slow
def test_training_killed_twice_resumes_to_the_uninterrupted_result(
        tmp_path: Path, capsys: pytest.CaptureFixture, single_thread: None) -> None:
    embeddings = digits_embeddings(tmp_path / "digits.npz")
    out, logs = tmp_path / "run", tmp_path / "logs"
    command = ["cluster", embeddings, "-k", "10", *ICBPL_OPTIONS, "--out", out, "--resume", "--no-report"]

    epochs_before = 0
    for _ in range(2):
        child = start_child(command, logs)
        child.kill_when(lambda: epochs_logged(out) >= epochs_before + 3)
        if epochs_before:
            assert _resumed_after(child.output()) == epochs_before
        assert_whole_files(out)
        epochs = load_checkpoint(out / "checkpoints" / "last.pt")["epochs_done"]
        assert epochs_before < epochs < 40, "the kill must land mid-training"
        epochs_before = epochs
        record("interruption", "SIGKILL during training (ICBPL, per-epoch checkpoint)")

    final = start_child(command, logs)
    assert final.wait() == 0, final.output()[-3000:]
    assert _resumed_after(final.output()) == epochs_before
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(40))  # every epoch exactly once

    ref = tmp_path / "ref"
    code, text = run_cli(["cluster", embeddings, "-k", "10", *ICBPL_OPTIONS, "--out", ref, "--resume",
                          "--no-report", "-q"], capsys)
    assert code == 0, text
    ref_log = [json.loads(line) for line in (ref / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in ref_log], rel=1e-5)
    assert_same_assignments(out / "assignments.csv", ref / "assignments.csv")
    resumed, straight = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert resumed.keys() == straight.keys()
    for name in straight:
        np.testing.assert_allclose(resumed[name], straight[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert not temporaries(out) and set(tree(out)) == set(tree(ref))
    assert assert_whole_files(out) == assert_whole_files(ref)
    record("lost", "training", 0)


# Copy each file in two halves with a pause between them: the kill then lands inside a file being copied.
SLOW_COPY = """
import shutil, time

def copy_in_two_halves(source, target, length=0):
    data = source.read()
    target.write(data[:len(data) // 2])
    target.flush()
    time.sleep(0.3)
    target.write(data[len(data) // 2:])

shutil.copyfileobj = copy_in_two_halves
"""


@pytest.fixture
def mixed(tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path) -> MixedRun:
    return mixed_run(tmp_path_factory, cifar10_dir)


@pytest.mark.shared_data
def test_export_killed_mid_copy_leaves_no_truncated_file_and_resumes(
        mixed: MixedRun, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    to, logs = tmp_path / "sorted", tmp_path / "logs"
    command = ["export", mixed.run, "--to", to, "--mode", "copy", "-q"]

    sources = {Path(p).name: Path(p).read_bytes() for p in mixed.good}

    def exported() -> list[Path]:
        return [p for p in to.rglob("*") if p.is_file() and not p.name.startswith(".")]

    def inside_a_file() -> bool:
        """4 files copied, and a 5th (or later) begun: on disk, but not (yet) equal to its original."""
        try:
            contents = [(p.name, p.read_bytes()) for p in to.rglob("*") if p.is_file()]
        except FileNotFoundError:  # a temporary renamed while we looked: look again
            return False
        whole = sum(data == sources.get(name) for name, data in contents)
        return whole >= 4 and len(contents) > whole

    child = start_child(command, logs, setup=SLOW_COPY)
    child.kill_when(inside_a_file)
    for copy in exported():  # every file under its final name is complete
        assert copy.read_bytes() == sources[copy.name], f"{copy} is truncated"
    assert len(exported()) < len(mixed.good), "the kill must land mid-export"
    assert temporaries(to), "the kill must land inside a file (its half copy stays hidden)"
    record("interruption", "SIGKILL during export (copy mode, mid-file)")

    copied_before = len(exported())
    again = start_child(command, logs)
    assert again.wait() == 0, again.output()[-3000:]  # no conflict with a half-copied file of the first try
    assert f"exported {len(mixed.good) - copied_before} new copies ({copied_before} already in place)" \
        in again.output()  # resumed: what was copied whole is kept
    code, text = run_cli(["export", mixed.run, "--to", tmp_path / "ref", "--mode", "copy", "-q"], capsys)
    assert code == 0, text
    assert tree(to) == tree(tmp_path / "ref")  # same files, same bytes, no leftover temporary
    assert len(exported()) == len(mixed.good)
    record("lost", "export", 0)
