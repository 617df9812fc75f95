#!/usr/bin/env bash
# LM (Chen et al.), APGD-CE, Linf 8/255 on CIFAR-100 (COUP Sec. 5.2.1: 38.67 %); settings in configs/cifar100_lm.yml.
# usage: bash run_scripts/cifar100/run_cifar100_apgd_ce_lm.sh SEED DATA_SEED   (e.g. 121 0; from any directory)
source "$(dirname "$0")/common.sh"
lm_eval lm apgd_ce "$@"
