#!/usr/bin/env bash
# COUP Table 4: purification time per image for DiffPure, reverse-only and COUP at several t*.
# Writes a PNG and its numbers (CSV/JSON) to results/experiments/speed/ (or --out DIR); all options: --help.
# e.g. --t-stars 0.05,0.1,0.2 --num-images 8 --batch-size 8 --with-grad --device cpu
set -euo pipefail
cd "$(dirname "$0")/../.."
source utils/tcmalloc.sh
PYTHON=python3
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
exec "$PYTHON" -m experiments.speed "$@"
