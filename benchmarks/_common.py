"""Helpers shared by the benchmark scripts: where the data is, what machine this is, how results are saved."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMGCLUST_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "cpus": os.cpu_count(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(),
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                            "load_avg_1min_at_end": round(os.getloadavg()[0], 2)}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def feature_pooling() -> str | None:
    """How the EfficientNet-Lite features of this run were pooled (``_kfeatures.POOLING`` resolved: ``auto`` is the
    library's default, GeM since session 30; results written before then carry no such field and were averaged)."""
    kfeatures = sys.modules.get("_kfeatures")
    if kfeatures is None:
        return None
    return "gem" if kfeatures.POOLING == "auto" else kfeatures.POOLING


def save_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit(),
               "command": shlex.join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
               "feature_pooling": feature_pooling(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table (printed and returned, for BENCHMARKS.md)."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def require_cifar10() -> Path:
    root = SHARED_DATA / "cifar10"
    if not root.exists():
        sys.exit(f"benchmark needs the CIFAR-10 JPEG copy at {root} (set IMGCLUST_SHARED_DATA)")
    return root
