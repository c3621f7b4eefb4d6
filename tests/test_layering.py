"""The stage order (pyproject.toml, [tool.importlinter]) holds, and a back-stair breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under ``root/src`` with ``root/pyproject.toml`` (no cache: a fresh graph)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def lint_available() -> None:
    if not LINT.exists():
        pytest.fail(f"{LINT} missing: import-linter is a dev dependency (bash scripts/setup.sh installs it)")


def test_the_package_keeps_its_stage_order(lint_available: None) -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, back_stair", [
    ("neighbors.py", "from .estimator import ImageClusterer"),      # a lower stage reaching up
    ("kselect.py", "from .report.plots import save_png"),          # the old kselect ↔ report cycle
    ("features/cache.py", "from ..methods import available_methods"),
])
def test_a_lower_stage_importing_a_higher_one_breaks_the_contract(tmp_path: Path, lint_available: None,
                                                                   module: str, back_stair: str) -> None:
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "imgclust" / module
    # inside a function, as the back-stairs used to hide: the contract sees those imports too
    target.write_text(target.read_text() + f"\n\ndef _back_stair():\n    {back_stair}\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and f"imgclust.{module.split('/')[0].removesuffix('.py')}" in result.stdout
