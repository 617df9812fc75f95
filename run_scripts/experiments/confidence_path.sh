#!/usr/bin/env bash
# COUP Fig. 2a: p(y_true | x_t) and p(y_adv | x_t) along the purification path, COUP vs reverse-only.
# Writes a PNG and its numbers (CSV/JSON) to results/experiments/confidence_path/ (or --out DIR); all options: --help.
# Default config configs/demo.yml; attack parameters start from its pgd_eot entry (--attack-param to change).
# e.g. --num-images 16 --attack-param iterations=20 --attack-param eot_samples=1
set -euo pipefail
cd "$(dirname "$0")/../.."
source utils/tcmalloc.sh
PYTHON=python3
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
exec "$PYTHON" -m experiments.confidence_path "$@"
