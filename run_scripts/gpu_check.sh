#!/usr/bin/env bash
# The GPU check (docs/gpu.md): correctness, speed, gradient memory and GPU-hour projections on one GPU, with
# random weights from the real key lists (no checkpoints, no network). tcmalloc is not preloaded on a GPU host.
# Usage: bash run_scripts/gpu_check.sh [--device cuda:N] [--out DIR] [--sections a,b] [--budget_s S] [--tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
source utils/tcmalloc.sh
exec "$PYTHON" benchmarks/gpu_check.py --device cuda --out results/gpu_check "$@"
