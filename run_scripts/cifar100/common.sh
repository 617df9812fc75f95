#!/usr/bin/env bash
# Shared by the CIFAR-100 LM / COUP-LM scripts (sourced): configs/cifar100_lm.yml unless $CONFIG is set, and the
# method switch. Env as in run_scripts/eval_common.sh (CONFIG, EXTRA_ARGS).
source "$(dirname "${BASH_SOURCE[0]}")/../eval_common.sh"
CONFIG=${CONFIG:-configs/cifar100_lm.yml}
# the purifier options of each method: LM is COUP-LM's config at lambda 0
declare -A METHOD_ARGS=([lm]="--purifier lm --guidance_scale 0" [coup_lm]="--purifier coup_lm")

# lm_eval METHOD ATTACK SEED DATA_SEED ARGS...: one attack of the config on LM or COUP-LM, Linf 8/255
lm_eval() {
  local method=$1 attack=$2 args
  shift 2
  require_seeds "$@"
  if [ -z "${METHOD_ARGS[$method]:-}" ]; then
    echo "unknown method '$method': use lm or coup_lm" >&2
    exit 2
  fi
  read -r -a args <<< "${METHOD_ARGS[$method]}"
  local seed=$1 data_seed=$2
  shift 2
  evaluate Linf "$seed" "$data_seed" "${args[@]}" --attack "$attack" "$@"
}
