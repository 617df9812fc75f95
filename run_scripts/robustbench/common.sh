#!/usr/bin/env bash
# Shared by run_scripts/robustbench/*.sh (sourced, never run directly). Each script runs several eval_sde_adv.py
# combinations in turn and stops at the first failure with its exit code. Arguments after SEED DATA_SEED go to
# every run (e.g. --dry-run, --num_sub 64, --set eval.precision=tf32), then $EXTRA_ARGS as in ../eval_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../eval_common.sh"

CONFIGS=configs/robustbench
declare -A WANG=([Linf]=$CONFIGS/wang2023_wrn28_linf.yml [L2]=$CONFIGS/wang2023_wrn28_l2.yml)
declare -A OTHER_NORM=([Linf]=L2 [L2]=Linf)
declare -A EPS=([Linf]=0.03137254901960784 [L2]=0.5)

# start SEED DATA_SEED [ARGS...]: check the seeds; ARGS are passed to every combination
start() {
  require_seeds "$@"
  SEED=$1 DATA_SEED=$2
  shift 2
  PASSED=("$@")
}

# combination TITLE CONFIG ARGS...: one run under a '--- # TITLE' line (so --dry-run prints a YAML stream)
combination() {
  local title=$1 config=$2 extra=()
  shift 2
  read -r -a extra <<< "${EXTRA_ARGS:-}"
  echo "--- # $title"
  "$PYTHON" eval_sde_adv.py --config "$config" --seed "$SEED" --data_seed "$DATA_SEED" "$@" "${PASSED[@]}" \
    "${extra[@]}"
}
