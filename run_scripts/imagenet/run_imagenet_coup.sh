#!/usr/bin/env bash
# COUP on ImageNet (ADM 256x256 unconditional, classifier-guided reverse SDE from t* = 0.15), AutoAttack standard Linf 4/255.
# usage: bash run_scripts/imagenet/run_imagenet_coup.sh SEED DATA_SEED [eval_sde_adv.py options]
set -euo pipefail
cd "$(dirname "$0")/../.."
source utils/tcmalloc.sh
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
if [ $# -lt 2 ]; then echo "usage: bash $0 SEED DATA_SEED [options]   (e.g. 121 0)" >&2; exit 2; fi
seed=$1 data_seed=$2
shift 2
exec "$PYTHON" eval_sde_adv.py --config configs/imagenet_coup.yml --seed "$seed" --data_seed "$data_seed" "$@"
