#!/usr/bin/env bash
# COUP paper Sec. 5.4.1, cross-threat: each of Wang et al. 2023's WRN-28-10 models attacked under the other norm
# (the Linf-trained one at L2 0.5, the L2-trained one at Linf 8/255), alone and with COUP (purifier settings of the
# model's own config). The attack is APGD-CE (EOT 20); env ATTACK=autoattack or pgd_eot picks another.
# Gradient: the configs' backend (papers: torchsde adjoint, approximate); for exact gradients:
#   GRADIENT=exact bash run_scripts/robustbench/run_cross_threat.sh ...
# usage: bash run_scripts/robustbench/run_cross_threat.sh SEED DATA_SEED [eval_sde_adv.py options]
source "$(dirname "$0")/common.sh"
start "$@"
attack=${ATTACK:-apgd_ce}
for norm in Linf L2; do
  other=${OTHER_NORM[$norm]}
  for purifier in none coup; do
    combination "Wang2023Better_WRN-28-10 ($norm), $purifier, $attack $other" "${WANG[$norm]}" "$purifier" \
      --attack "$attack" --lp_norm "$other" --adv_eps "${EPS[$other]}"
  done
done
