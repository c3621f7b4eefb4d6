"""5. Concurrent use: a second run on the same output folder is refused with a clear message, never interleaved.

The first run (ICBPL on embeddings, in a child process) holds ``OUT/.imgclust.lock`` (``flock``) from start to
end. While it trains, a second ``imgclust cluster`` with other settings is pointed at the same folder: it exits
2 at once, naming the folder and what to do, and writes nothing. The first run then finishes, and every file
of the folder is its own (its K, its epochs, its method). The lock dies with its process: after a SIGKILL the
folder is usable again at once (see also test_interruption.py, where killed runs are rerun in place).

The temporaries of unfinished writes (``.NAME.XXXX.imgclust-tmp``) that a killed process leaves behind are
removed by the next run; a temporary that a live process is still writing is kept (its writer holds an
``flock`` on it), so the clean-up is safe while other processes write into the same folder.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustness_support import (  # noqa: F401 (robustness_summary is an autouse fixture)
    LOCK_NAME,
    assert_whole_files,
    child_env,
    digits_embeddings,
    epochs_logged,
    record,
    robustness_summary,
    run_cli,
    start_child,
    temporaries,
)


def _locked(folder: Path) -> bool:
    """Whether a live process holds the run lock of ``folder``."""
    try:
        with open(folder / LOCK_NAME, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_second_run_on_the_same_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    embeddings = digits_embeddings(tmp_path / "digits.npz")
    out = tmp_path / "run"
    first = start_child(["cluster", embeddings, "-k", "10", "--method", "icbpl", "--set", "epochs=30",
                         "--set", "batch_size=50", "--set", "latent_dim=16", "--set", "hidden_dim=32",
                         "--set", "n_neighbors=5", "--out", out, "--no-report", "-q"], tmp_path / "logs")
    try:
        first.wait_until(lambda: epochs_logged(out) >= 1 and _locked(out))
        code, text = run_cli(["cluster", embeddings, "-k", "3", "--out", out, "--no-report", "-q"], capsys)
        assert code == 2, text
        assert f"another imgclust run is writing to {out}" in text and "fix:" in text
        assert first.process.poll() is None, "the refusal must come while the first run still works"
        # the first writes its results only at its end: anything there now would be the second's
        assert not {"assignments.csv", "run.json", "model.json"} & {p.name for p in out.iterdir()}
    finally:
        assert first.wait() == 0, first.output()[-3000:]
    record("concurrent use", "second run on a locked output folder refused")

    run = json.loads((out / "run.json").read_text())
    assert run["config"]["n_clusters"] == 10 and run["config"]["method"] == "icbpl"
    assert len(run["cluster_sizes"]) == 10 and run["fit_info"]["epochs"] == 30
    model = json.loads((out / "model.json").read_text())
    assert model["method"] == "icbpl" and model["model_config"]["icbpl"]["n_clusters"] == 10
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(30))
    assert_whole_files(out)
    assert not _locked(out)  # released at the end
    code, text = run_cli(["cluster", embeddings, "-k", "3", "--out", out, "--no-report", "-q"], capsys)
    assert code == 0, text


DIES_WHILE_WRITING = """
import os, signal, sys
from imgclust._io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half of it")
    os.kill(os.getpid(), signal.SIGKILL)
"""

WRITES_UNTIL_TOLD = """
import sys, time
from pathlib import Path
from imgclust._io import atomic_path
target, go = Path(sys.argv[1]), Path(sys.argv[2])
with atomic_path(target) as tmp:
    tmp.write_bytes(b"all of it")
    (target.parent / "writing").touch()
    while not go.exists():
        time.sleep(0.01)
"""


def test_stale_temporaries_go_and_live_ones_stay(tmp_path: Path) -> None:
    from imgclust._io import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", DIES_WHILE_WRITING, str(tmp_path / "dead.bin")], env=child_env())
    assert dead.returncode == -9 and len(temporaries(tmp_path)) == 1 and not (tmp_path / "dead.bin").exists()
    go = tmp_path / "go"
    live = subprocess.Popen([sys.executable, "-c", WRITES_UNTIL_TOLD, str(tmp_path / "live.bin"), str(go)],
                            env=child_env())
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "writing").exists() and live.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(temporaries(tmp_path)) == 2
        assert remove_stale_temporaries(tmp_path) == 1  # the killed writer's
        [kept] = temporaries(tmp_path)
        assert kept.name.startswith(".live.bin.")
    finally:
        go.touch()
        assert live.wait(60) == 0
    assert (tmp_path / "live.bin").read_bytes() == b"all of it" and not temporaries(tmp_path)
    record("concurrent use", "clean-up of temporaries beside a live writer")
