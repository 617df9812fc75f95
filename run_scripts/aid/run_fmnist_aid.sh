#!/usr/bin/env bash
# AID-Purifier on the Fashion-MNIST demo models, one command: train the discriminator (resumes from
# results/train_aid/; prints detection and non-adaptive accuracy and writes pretrained/demo/aid_fmnist.{pt,md}),
# then evaluate clean, non-adaptive and adaptive (exact-gradient PGD, joint PGD) robust accuracy with 95 % CIs
# (configs/aid_fmnist.yml) and print the table.
# usage: bash run_scripts/aid/run_fmnist_aid.sh [eval_sde_adv.py options, e.g. --num_sub 64]
set -euo pipefail
cd "$(dirname "$0")/../.."
source utils/tcmalloc.sh
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
OUT=${OUT:-results/aid_fmnist}
"$PYTHON" -m training.train_aid --config configs/train/aid_fmnist.yml
"$PYTHON" eval_sde_adv.py --config configs/aid_fmnist.yml --output_dir "$OUT" "$@" > /dev/null
"$PYTHON" -m evaluation.report --results "$OUT" --config configs/aid_fmnist.yml --out "$OUT" \
  --title "AID-Purifier (10 steps, eps 8/255) on the demo classifier; attacks from configs/aid_fmnist.yml."
