#!/usr/bin/env bash
# COUP paper Sec. 5.4.1: Wang et al. 2023's adversarially trained WRN-28-10 (RobustBench Wang2023Better_WRN-28-10,
# Linf and L2 models) alone, with reverse-only and with COUP, under APGD-CE (EOT 20) at the model's own norm.
# Gradient: the configs' backend (papers: torchsde adjoint, approximate); for exact gradients:
#   GRADIENT=exact bash run_scripts/robustbench/run_wang2023_apgd_ce.sh ...
# usage: bash run_scripts/robustbench/run_wang2023_apgd_ce.sh SEED DATA_SEED [eval_sde_adv.py options, e.g. --dry-run]
source "$(dirname "$0")/common.sh"
start "$@"
for norm in Linf L2; do
  for purifier in none reverse_only coup; do
    combination "Wang2023Better_WRN-28-10 ($norm), $purifier, APGD-CE $norm" "${WANG[$norm]}" "$purifier" \
      --attack apgd_ce
  done
done
