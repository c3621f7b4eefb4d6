"""``benchmarks/secu_cifar10_gpu.sh`` end to end on a CPU (2 epochs, a tiny folder): the script that reproduces
the SeCu paper on a lent GPU must not rot while no GPU is around."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, copy_cifar10_subset


@pytest.mark.slow
def test_secu_gpu_script_runs_on_cpu_and_writes_the_epoch_table(tmp_path: Path, cifar10_dir: Path) -> None:
    data = tmp_path / "cifar"
    for split, per_class in (("train", 20), ("test", 5)):
        copy_cifar10_subset(cifar10_dir, split, per_class, data / split)
    out = tmp_path / "run"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DATA": str(data), "EPOCHS": "2", "OUT": str(out), "PY": sys.executable,
           "IMGCLUST": str(bin_dir / "imgclust"), "TORCHRUN": str(bin_dir / "torchrun"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "secu_cifar10_gpu.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SeCu CIFAR-10 test: ACC" in done.stdout

    test_metrics = json.loads((out / "test_metrics.json").read_text())
    assert set(test_metrics) == {"acc", "nmi", "ari"} and 0.1 <= test_metrics["acc"] <= 1.0
    rows = (out / "epochs.md").read_text().strip().splitlines()
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["0", "1"]
    # 200 training images; the last epoch is evaluated, so it carries the train-split accuracy.
    images_per_s = float(rows[-1].split("|")[3])
    seconds = float(rows[-1].split("|")[2])
    assert images_per_s == pytest.approx(200 / seconds, rel=0.02, abs=1)
    assert 0.0 < float(rows[-1].split("|")[4]) <= 1.0
