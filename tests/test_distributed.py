"""`imgclust cluster` under torchrun (2 CPU processes, gloo) computes what one process computes.

Feature extraction shares the cache shards out among the processes and rank 0 merges them; ICBPL then trains
with each process holding half of every global batch (MMD on the gathered batch, per-sample draws for the
global batch, gradients averaged by DDP). The run folders of both launches must agree: same features, same
training log, same weights, same assignments. SeCu goes through the same command on the cached views
(counts and duals all-reduced; its library-level equivalence, centres included: tests/test_secu_ddp.py).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, cifar10_subset_paths

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

# 3 classes × 12 images, 8 images per shard: 5 shards, so both processes encode some.
OPTIONS = {
    "icbpl": ["trainable_blocks=0", "n_views=2", "epochs=2", "batch_size=12", "eval_every=1", "n_neighbors=5"],
    "secu": ["trainable_blocks=0", "n_views=2", "epochs=2", "batch_size=12", "eval_every=1", "ks=[3,6]",
             "warmup_epochs=0", "hold_epochs=0"],
}
LOSSES = {"icbpl": ("loss", "mmd", "aug", "knn", "min"), "secu": ("loss",)}


def _torchrun() -> Path:
    torchrun = Path(sys.executable).with_name("torchrun")
    if torchrun.exists():
        return torchrun
    found = shutil.which("torchrun")
    if found is None:
        pytest.skip("torchrun is not installed next to this Python")
    return Path(found)


def _cluster(launcher: list[str], method: str, folder: Path, out: Path, cache: Path, cwd: Path) -> None:
    args = ["cluster", str(folder), "-k", "3", "--method", method, "--out", str(out), "--cache-dir", str(cache),
            "--shard-size", "8", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-report", "-q"]
    for option in OPTIONS[method]:
        args += ["--set", option]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"),
                                                                             os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([*launcher, "-m", "imgclust", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{launcher} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _merged_entries(cache: Path) -> dict[str, dict]:
    """Manifest of every finished feature-cache entry, keyed by its identity (backbone/encoder/view)."""
    entries = {}
    for manifest_path in cache.glob("*/manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        assert manifest["complete"], f"{manifest_path} was left unfinished"
        identity = manifest["identity"]
        entries[f"{identity['encoder']}/{identity['augment']}/{identity['view']}"] = {
            "manifest": manifest, "features": np.load(manifest_path.parent / "features.npy")}
    return entries


@pytest.mark.parametrize("method", ["icbpl", "secu"])
def test_torchrun_extraction_and_training_equal_one_process(tmp_path: Path, cifar10_dir: Path, method: str
                                                            ) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    paths, _, _ = cifar10_subset_paths(cifar10_dir, "test", 12, classes=["airplane", "cat", "ship"])
    folder = tmp_path / "images"
    for p in paths:
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.parent.name / p.name)

    _cluster([sys.executable], method, folder, tmp_path / "one", tmp_path / "cache-one", tmp_path)
    _cluster([str(_torchrun()), "--standalone", "--nproc_per_node", "2"], method, folder, tmp_path / "two",
             tmp_path / "cache-two", tmp_path)

    # Extraction: clean features and both augmented views, identical; the shards were shared out.
    one, two = _merged_entries(tmp_path / "cache-one"), _merged_entries(tmp_path / "cache-two")
    assert sorted(one) == sorted(two) and len(one) == 3
    for key in one:
        np.testing.assert_array_equal(one[key]["features"], two[key]["features"])
        assert one[key]["manifest"]["shards_per_rank"] == {"0": 5}
        assert two[key]["manifest"]["shards_per_rank"] == {"0": 3, "1": 2}
        assert two[key]["manifest"]["world_size"] == 2

    # Training: the same losses every epoch, the same weights, the same clusters.
    logs = [[json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
            for run in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 2
    for a, b in zip(*logs):
        for key in LOSSES[method]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a, b)
    weights = [load_file(tmp_path / run / "model.safetensors") for run in ("one", "two")]
    assert sorted(weights[0]) == sorted(weights[1])
    for name in weights[0]:
        # Sums over processes round differently from one sum, and Adam divides tiny gradients by their tiny
        # running scale: a few of the 655k head weights differ in the 5th decimal.
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-3, atol=2e-4)
    rows = [list(csv.DictReader(open(tmp_path / run / "assignments.csv"))) for run in ("one", "two")]
    assert [r["cluster"] for r in rows[0]] == [r["cluster"] for r in rows[1]]
    assert len(rows[0]) == 36
