#!/usr/bin/env bash
# Wang et al. 2023's WRN-28-10 (Linf and L2 models) under the framework's strongest attacks: AutoAttack 'standard' on
# the classifier alone; AutoAttack 'rand' (EOT 20) and exact-gradient PGD-EOT (200 x 20) on reverse-only and COUP.
# Gradient: AutoAttack 'rand' through the configs' backend (torchsde adjoint, approximate); GRADIENT=exact bash
# run_scripts/robustbench/run_wang2023_strongest.sh ... for exact gradients there too (PGD-EOT always uses them).
# usage: bash run_scripts/robustbench/run_wang2023_strongest.sh SEED DATA_SEED [eval_sde_adv.py options]
source "$(dirname "$0")/common.sh"
start "$@"
for norm in Linf L2; do
  combination "Wang2023Better_WRN-28-10 ($norm), none, AutoAttack standard $norm" "${WANG[$norm]}" none \
    --attack autoattack --attack_version standard
  for purifier in reverse_only coup; do
    combination "Wang2023Better_WRN-28-10 ($norm), $purifier, AutoAttack rand $norm" "${WANG[$norm]}" "$purifier" \
      --attack autoattack --attack_version rand
    combination "Wang2023Better_WRN-28-10 ($norm), $purifier, PGD-EOT $norm (exact gradients)" "${WANG[$norm]}" \
      "$purifier" --attack pgd_eot --backend exact
  done
done
