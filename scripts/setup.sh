#!/usr/bin/env bash
# Creates .venv and installs imgclust with its test and plotting extras, once (again when pyproject.toml changes).
# Everything comes from the package registries; torch/torchvision are the releases pip may take on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.imgclust-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "imgclust: installing into .venv (first run only; a few minutes)..." >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet -e ".[dev,plots]" 2> >(grep -v "^WARNING: Location" >&2)
  touch "$stamp"
fi
