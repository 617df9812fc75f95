#!/usr/bin/env bash
# The test command of the README: set up what is missing (setup.sh), then the fast suite (slow benchmarks are
# behind the 'slow' marker).
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
source utils/tcmalloc.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
