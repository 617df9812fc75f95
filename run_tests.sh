#!/usr/bin/env bash
# The test command of the README: the fast suite (slow benchmarks are behind the 'slow' marker).
set -euo pipefail
cd "$(dirname "$0")"
source utils/tcmalloc.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
