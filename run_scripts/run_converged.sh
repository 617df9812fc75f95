#!/usr/bin/env bash
# The converged evaluation of the demo defenses (configs/converged.yml): resumable, rerun to continue.
# Per-image records go to docs/converged/<run>/results.jsonl (committed); then
#   .venv/bin/python -m experiments.convergence --runs docs/converged --out docs/converged
# writes table.csv, checkpoints.csv and convergence.png. Many CPU-hours: run it in the background, niced.
# Env: PURIFIERS (default "none coup diffpure reverse_only"), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
for purifier in ${PURIFIERS:-none coup diffpure reverse_only}; do
  nice -n 15 "${PYTHON:-.venv/bin/python}" eval_sde_adv.py --config configs/converged.yml --purifier "$purifier"
done
