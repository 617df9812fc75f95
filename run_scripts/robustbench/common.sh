#!/usr/bin/env bash
# Shared by run_scripts/robustbench/*.sh (sourced, never run directly). Each script runs several eval_sde_adv.py
# combinations in turn and stops at the first failure with its exit code. Arguments after SEED DATA_SEED go to
# every run (e.g. --dry-run, --num_sub 64, --set eval.precision=tf32), then $EXTRA_ARGS as in ../eval_common.sh.
# GRADIENT=exact (as in ../eval_common.sh) attacks the diffusion purifiers through the exact-gradient solver instead of
# the configs' torchsde adjoint (the papers' protocol, approximate gradients; README "Gradient audit").
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

declare -A SOLVER=([none]=false [reverse_only]=true [diffpure]=true [coup]=true)  # which purifiers have a backend

# combination TITLE CONFIG PURIFIER ARGS...: one run of PURIFIER under a '--- # TITLE' line (so --dry-run prints a
# YAML stream); GRADIENT applies to the purifiers that run a diffusion solver
combination() {
  local title=$1 config=$2 purifier=$3 extra=()
  shift 3
  read -r -a extra <<< "${EXTRA_ARGS:-}"
  gradient_args
  [ "${SOLVER[$purifier]:-false}" = true ] || GRADIENT_ARGS=()
  echo "--- # $title"
  "$PYTHON" eval_sde_adv.py --config "$config" --seed "$SEED" --data_seed "$DATA_SEED" --purifier "$purifier" "$@" \
    "${GRADIENT_ARGS[@]}" "${PASSED[@]}" "${extra[@]}"
}
