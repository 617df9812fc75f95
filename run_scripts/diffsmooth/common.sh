#!/usr/bin/env bash
# Shared by the DiffSmooth run scripts (sourced, never run directly).
# certify DATASET_CONFIG CHECKPOINT_PATTERN OUTPUT_SUBDIR SIGMA [extra certify_diffsmooth.py options]:
# certify_diffsmooth.py at SIGMA with m = ${M:-5}, local sigma ${LOCAL_SIGMA:-0.25} and the base classifier trained
# at noise ${BASE_NOISE:-0.25} (CHECKPOINT_PATTERN's @NOISE@, a path relative to the config file).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source utils/tcmalloc.sh
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi

certify() {
  local config=$1 pattern=$2 subdir=$3
  shift 3
  if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]*\.?[0-9]+$ ]]; then
    echo "usage: bash $0 SIGMA [certify_diffsmooth.py options]   (SIGMA: 0.25, 0.5 or 1.0)" >&2
    exit 2
  fi
  local sigma=$1 noise=${BASE_NOISE:-0.25} local_sigma=${LOCAL_SIGMA:-0.25}
  shift
  exec "$PYTHON" certify_diffsmooth.py --config "$config" --sigma "$sigma" --m "${M:-5}" \
    --local_sigma "$local_sigma" --set "classifier.checkpoint=${pattern//@NOISE@/$noise}" \
    --output_dir "results/diffsmooth/$subdir/base${noise}_local${local_sigma}_m${M:-5}" "$@"
}
