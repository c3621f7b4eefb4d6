"""6. Offline: with the network namespace cut (``unshare -n``), local work runs; what needs a download fails
at once, naming what is missing.

One child process runs the commands one after the other inside a new network namespace (no interface but a
down loopback) with empty hub and torch caches, and reports each command's exit code, output and duration:

* needing no download, they succeed: ``backbones``/``methods``/``datasets``, ``cluster`` of a local folder with
  the default backbone (its weights ship in a pip package), with K given and estimated, ``cluster`` of
  embeddings with ICBPL, ``report``, ``predict``, ``export``;
* needing one, they exit 2 within seconds (the bound asserted is 30 s) with a message naming it: a timm
  backbone without ``--weights`` (the backbone, and how to pass a local file), a ``--weights`` file that is not
  there (its path), a built-in data set that is not on disk (the files expected and where they come from).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustness_support import (  # noqa: F401 (robustness_summary is an autouse fixture)
    child_env,
    copy_cifar,
    digits_embeddings,
    record,
    robustness_summary,
)

FAST_FAILURE_S = 30


def _unshare_prefix() -> list[str]:
    """``unshare -n`` (root) or ``unshare -rn`` (an unprivileged user namespace), whichever works here."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to cut the network")
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("cannot create a network namespace here (unshare -n needs root, unshare -rn user namespaces)")


RUN_COMMANDS = """
import contextlib, io, json, socket, sys, time
from imgclust.cli import main

try:
    socket.create_connection(("1.1.1.1", 443), timeout=3).close()
    network = "reachable"
except OSError as err:
    network = f"cut ({err})"
results = {"network": network, "commands": []}
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exit:
            code = exit.code
    results["commands"].append({"args": args, "code": code, "output": err.getvalue() + out.getvalue(),
                                "seconds": time.monotonic() - started})
json.dump(results, open(sys.argv[2], "w"), indent=1)
"""


@pytest.mark.slow
@pytest.mark.shared_data
def test_commands_under_a_cut_network(tmp_path: Path, cifar10_dir: Path) -> None:
    prefix = _unshare_prefix()
    photos = tmp_path / "photos"
    copy_cifar(cifar10_dir, photos, 4, ["cat", "ship", "truck"])
    digits = digits_embeddings(tmp_path / "digits.npz", 120)
    (tmp_path / "no-data").mkdir()
    run, cache = tmp_path / "run", tmp_path / "cache"
    missing_weights = tmp_path / "weights" / "dinov2_vits14.safetensors"
    local = [  # (command, what it shows)
        (["backbones"], "efficientnet_lite0"),
        (["methods"], "icbpl"),
        (["datasets"], "builtin:digits"),
        (["cluster", photos, "-k", "3", "--out", run, "--cache-dir", cache, "--workers", "0", "-q"], "ACC"),
        (["cluster", photos, "--k-range", "2:4", "--out", tmp_path / "auto", "--cache-dir", cache, "-q"],
         "estimated"),
        (["cluster", digits, "-k", "4", "--method", "icbpl", "--set", "epochs=1", "--set", "n_neighbors=3",
          "--set", "latent_dim=8", "--set", "hidden_dim=16", "--out", tmp_path / "icbpl", "-q"], "icbpl"),
        (["report", run, "-q"], "report.html"),
        (["predict", run, photos, "--out", tmp_path / "new.csv", "-q"], "written 12 rows"),
        (["export", run, "--to", tmp_path / "sorted", "-q"], "exported 12 new symlinks"),
    ]
    needs_download = [
        (["cluster", photos, "-k", "3", "--backbone", "vit_small_patch16_224", "--out", tmp_path / "vit",
          "--cache-dir", cache, "-q"], ["vit_small_patch16_224", "unreachable", "--weights"]),
        (["cluster", photos, "-k", "3", "--backbone", "dinov2_vits14", "--weights", missing_weights,
          "--out", tmp_path / "dino", "--cache-dir", cache, "-q"], [str(missing_weights)]),
        (["cluster", "builtin:cifar10", "-k", "10", "--data-root", tmp_path / "no-data", "--out", tmp_path / "c10",
          "-q"], ["data_batch_1", "cifar-10-python.tar.gz"]),
    ]
    commands = [[str(a) for a in c] for c, _ in local + needs_download]
    report = tmp_path / "offline.json"
    env = child_env(HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
                    XDG_CACHE_HOME=str(tmp_path / "xdg"))
    for name in ("HF_HUB_OFFLINE", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy",
                 "ALL_PROXY", "IMGCLUST_CACHE", "IMGCLUST_DATA"):
        env.pop(name, None)
    child = subprocess.run([*prefix, sys.executable, "-c", RUN_COMMANDS, json.dumps(commands), str(report)],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(report.read_text())
    assert results["network"].startswith("cut"), results["network"]

    for (command, shows), result in zip(local, results["commands"]):
        assert result["code"] == 0 and shows in result["output"], (command[:2], result["output"][-2000:])
        record("offline", f"works offline: imgclust {command[0]}")
    for (command, names), result in zip(needs_download, results["commands"][len(local):]):
        assert result["code"] == 2 and "fix:" in result["output"], result["output"][-2000:]
        assert all(name in result["output"] for name in names), (names, result["output"])
        assert result["seconds"] < FAST_FAILURE_S, (command, result["seconds"])
        record("offline", "fails at once offline, naming what is missing")
