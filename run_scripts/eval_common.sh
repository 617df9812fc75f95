#!/usr/bin/env bash
# Shared by the CIFAR-10 and ImageNet run scripts (sourced, never run directly). t* and lambda come from the config:
# configs/cifar10.yml for Linf, configs/cifar10_L2.yml for L2; nothing here overrides them.
# Env: CONFIG replaces that config (e.g. configs/tiny.yml); EXTRA_ARGS is appended to the command line
# (e.g. EXTRA_ARGS="--num_sub 64 --output_dir /scratch/results"); PURIFIER picks the method of the PGD scripts.
# GRADIENT=exact attacks through the exact-gradient solver (--backend exact) instead of the config's backend
# (the papers' protocol: the torchsde adjoint, whose gradient is approximate; README "Gradient audit").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source utils/tcmalloc.sh
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi

declare -A NORM_CONFIG=([Linf]=configs/cifar10.yml [L2]=configs/cifar10_L2.yml)

# require_seeds SEED DATA_SEED ...: fail with the usage line unless both are integers
require_seeds() {
  if [ $# -lt 2 ] || ! [[ "$1" =~ ^[0-9]+$ && "$2" =~ ^[0-9]+$ ]]; then
    echo "usage: bash $0 SEED DATA_SEED${USAGE_TAIL:-}   (e.g. 121 0)" >&2
    exit 2
  fi
}

# gradient_args: GRADIENT_ARGS=(--backend exact) under GRADIENT=exact, () under GRADIENT=adjoint or unset
gradient_args() {
  case "${GRADIENT:-config}" in
    config | adjoint) GRADIENT_ARGS=() ;;
    exact) GRADIENT_ARGS=(--backend exact) ;;
    *) echo "GRADIENT must be 'exact' or 'adjoint' (the config's backend), got '$GRADIENT'" >&2; exit 2 ;;
  esac
}

# evaluate NORM SEED DATA_SEED ARGS...: eval_sde_adv.py on the norm's config (or $CONFIG), then $EXTRA_ARGS
evaluate() {
  local norm=$1 seed=$2 data_seed=$3 extra=()
  shift 3
  read -r -a extra <<< "${EXTRA_ARGS:-}"
  gradient_args
  exec "$PYTHON" eval_sde_adv.py --config "${CONFIG:-${NORM_CONFIG[$norm]}}" --lp_norm "$norm" \
    --seed "$seed" --data_seed "$data_seed" "$@" "${GRADIENT_ARGS[@]}" "${extra[@]}"
}

# autoattack PURIFIER VERSION NORM SEED DATA_SEED: AutoAttack 'standard' or 'rand' on PURIFIER
autoattack() {
  local purifier=$1 version=$2 norm=$3
  shift 3
  require_seeds "$@"
  evaluate "$norm" "$1" "$2" --purifier "$purifier" --attack autoattack --attack_version "$version"
}

# linf_attack ATTACK BACKEND SEED DATA_SEED [PURIFIER]: a PGD-type attack at Linf 8/255 (its defaults:
# pgd_eot 200 x 20 EOT, step 0.007; bpda_eot 20 steps) on PURIFIER (default $PURIFIER, else coup);
# BACKEND 'exact' runs diffusion purifiers with the exact-gradient solver, 'config' keeps the config's
linf_attack() {
  local attack=$1 backend=$2 args=()
  shift 2
  USAGE_TAIL=" [PURIFIER]" require_seeds "$@"
  local purifier=${3:-${PURIFIER:-coup}}
  GRADIENT=config  # the attack script fixes the backend itself
  case "$purifier:$backend" in
    *:config | none:* | aid:*) ;;
    *) args=(--backend "$backend") ;;
  esac
  evaluate Linf "$1" "$2" --purifier "$purifier" --attack "$attack" "${args[@]}"
}
