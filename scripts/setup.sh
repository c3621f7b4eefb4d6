#!/usr/bin/env bash
# Creates .venv and installs imgclust with its test and plotting extras, once (again when pyproject.toml changes).
# Usage: bash scripts/setup.sh [--browser]
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

# With --browser (the test command): headless Chromium for the report's browser test
# (tests/test_report_html.py). Installed only when missing and only as root; otherwise that test skips with a
# reason (and fails under CI=true, so CI cannot skip it silently).
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "imgclust: installing chromium (headless browser for the report test)..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null) \
      || echo "imgclust: could not install chromium; the report's browser test will skip" >&2
  else
    echo "imgclust: chromium missing (not root, so not installed); the report's browser test will skip" >&2
  fi
fi
