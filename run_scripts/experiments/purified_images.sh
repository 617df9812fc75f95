#!/usr/bin/env bash
# COUP Fig. 5/6: image grid of clean / adversarial / DiffPure / reverse-only / COUP.
# Writes a PNG and its numbers (CSV/JSON) to results/experiments/purified_images/ (or --out DIR); all options: --help.
# e.g. --num-images 8 --attack-target reverse_only --attack-param iterations=20
set -euo pipefail
cd "$(dirname "$0")/../.."
source utils/tcmalloc.sh
PYTHON=python3
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
exec "$PYTHON" -m experiments.purified_images "$@"
