#!/usr/bin/env bash
# The consequence of the adjoint's gradient error: the demo's PGD-EOT 8 x 2 on reverse-only (first 16 demo images),
# once with exact gradients and once through the torchsde adjoint, same seeds, at each dt; then the paired table
# docs/adjoint_pgd/dt<dt>/paired.{md,csv} (experiments.paired).
# Env: DTS (default "0.01 0.002"), NUM_SUB (default 16), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
for dt in ${DTS:-0.01 0.002}; do
  out=docs/adjoint_pgd/dt$dt
  [ "${NUM_SUB:-16}" = 16 ] || out=$out/n$NUM_SUB  # one folder per image count, so each glob below finds one run
  for backend in exact torchsde; do
    "$PY" eval_sde_adv.py --config configs/demo.yml --purifier reverse_only --num_sub "${NUM_SUB:-16}" \
      --set purifier.dt="$dt" --set eval.save_examples=0 --backend "$backend" --output_dir "$out/$backend"
  done
  "$PY" -m experiments.paired --out "$out" --runs "$out"/exact/demo_reverse_only_* "$out"/torchsde/demo_reverse_only_*
done
