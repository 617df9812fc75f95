#!/usr/bin/env bash
# Does a smooth surrogate of the guidance in the attack's gradient path find more? COUP on the demo models
# attacked with exact gradients (grad_mode full) and through the softplus surrogate (grad_mode surrogate), same
# images and seeds (configs/surrogate.yml), then the paired comparison: docs/surrogate/paired.{md,csv}.
# Env: BETA (softplus beta of the surrogate, default 10), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
BETA=${BETA:-10}
SLUG=$(printf '%g' "$BETA")  # as the run folder names it (10.0 -> 10)
"$PY" eval_sde_adv.py --config configs/surrogate.yml --grad_mode full
"$PY" eval_sde_adv.py --config configs/surrogate.yml --grad_mode surrogate --set "purifier.surrogate_beta=$BETA"
"$PY" -m experiments.paired --out docs/surrogate \
  --runs docs/surrogate/surrogate_coup_*_lam1_full_exact_* docs/surrogate/surrogate_coup_*_lam1_surrogate_beta"$SLUG"_exact_*
