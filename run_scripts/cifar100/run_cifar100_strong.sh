#!/usr/bin/env bash
# The strongest attacks the framework has, on LM or COUP-LM (CIFAR-100, Linf 8/255, exact gradients through every
# LM step): AutoAttack 'rand' (APGD-CE + APGD-DLR, EOT 20) and PGD-EOT (200 x 20), per-image worst case in summary.md.
# usage: bash run_scripts/cifar100/run_cifar100_strong.sh SEED DATA_SEED [lm|coup_lm]   (default coup_lm)
source "$(dirname "$0")/common.sh"
USAGE_TAIL=" [lm|coup_lm]" require_seeds "$@"
lm_eval "${3:-coup_lm}" autoattack "$1" "$2" --attack pgd_eot
