#!/usr/bin/env bash
# COUP Fig. 4a / Sec. 5.4: robust accuracy vs t* and vs guidance scale (resumable: rerun to continue).
# Writes a PNG and its numbers (CSV/JSON) to results/experiments/sweeps/ (or --out DIR); all options: --help.
# Each point is an adaptive attack on COUP(t*, lambda); points are saved as they finish: rerun to resume.
# e.g. --t-stars 0.05,0.1,0.2 --lambdas 0,1,2,4 --num-images 16 --attack-param iterations=10
set -euo pipefail
cd "$(dirname "$0")/../.."
source utils/tcmalloc.sh
PYTHON=python3
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
exec "$PYTHON" -m experiments.sweeps "$@"
