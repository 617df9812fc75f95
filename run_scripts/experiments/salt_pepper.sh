#!/usr/bin/env bash
# COUP App. E.1: accuracy under salt-and-pepper noise for no defense, reverse-only and COUP.
# Writes a PNG and its numbers (CSV/JSON) to results/experiments/salt_pepper/ (or --out DIR); all options: --help.
# Points are saved as they finish: rerun to resume.
# e.g. --amounts 0,0.05,0.1,0.2 --set data.num_sub=64 --num-images 64   (62 s on 1 CPU thread)
set -euo pipefail
cd "$(dirname "$0")/../.."
source utils/tcmalloc.sh
PYTHON=python3
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
exec "$PYTHON" -m experiments.salt_pepper "$@"
