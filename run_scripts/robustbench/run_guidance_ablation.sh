#!/usr/bin/env bash
# COUP paper Sec. 5.3.3 / Fig. 2b: purification with (coup) and without (reverse_only) guidance, classifiers
# WRN-28-10 (RobustBench 'Standard') and WRN-70-16 (DiffPure's), APGD-CE Linf 8/255 (EOT 20).
# Gradient: the configs' backend (papers: torchsde adjoint, approximate); for exact gradients:
#   GRADIENT=exact bash run_scripts/robustbench/run_guidance_ablation.sh ...
# usage: bash run_scripts/robustbench/run_guidance_ablation.sh SEED DATA_SEED [eval_sde_adv.py options]
source "$(dirname "$0")/common.sh"
start "$@"
for classifier in wrn28_10 wrn70_16; do
  for purifier in reverse_only coup; do
    combination "$classifier, $purifier, APGD-CE Linf" "$CONFIGS/fig2b_$classifier.yml" "$purifier" --attack apgd_ce
  done
done
