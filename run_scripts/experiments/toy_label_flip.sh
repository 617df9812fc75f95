#!/usr/bin/env bash
# COUP Sec. 5.3.2 / Fig. 3b: label-flip probability vs guidance scale on the 1-D two-Gaussian toy (closed-form score).
# Writes a PNG and its numbers (CSV/JSON) to results/experiments/toy_label_flip/ (or --out DIR); all options: --help.
# Full setting (defaults): 50000 paths/point, 112 points, t* = 0.1; 2.1 min on 1 CPU thread (measured 2026-11-30).
# e.g. --t-star 0.05 --out results/experiments/toy_label_flip_tstar0.05   or   --paths 10000 --lambdas 0,1,2
set -euo pipefail
cd "$(dirname "$0")/../.."
source utils/tcmalloc.sh
PYTHON=python3
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
exec "$PYTHON" -m experiments.toy_label_flip "$@"
