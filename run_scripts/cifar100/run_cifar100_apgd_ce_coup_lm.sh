#!/usr/bin/env bash
# COUP-LM (LM + classifier-confidence guidance), APGD-CE, Linf 8/255 on CIFAR-100 (COUP Sec. 5.2.1: 40.55 %).
# usage: bash run_scripts/cifar100/run_cifar100_apgd_ce_coup_lm.sh SEED DATA_SEED   (e.g. 121 0; from any directory)
source "$(dirname "$0")/common.sh"
lm_eval coup_lm apgd_ce "$@"
