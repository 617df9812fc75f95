#!/usr/bin/env bash
# Reverse-only (COUP with lambda 0), AutoAttack 'standard', Linf 8/255; t* from configs/cifar10.yml.
# Gradient: the config's backend (papers: torchsde adjoint, approximate); GRADIENT=exact bash run_scripts/cifar10/run_cifar_stand_inf_revonly.sh ... for exact gradients.
# usage: bash run_scripts/cifar10/run_cifar_stand_inf_revonly.sh SEED DATA_SEED   (e.g. 121 0; from any directory)
source "$(dirname "$0")/../eval_common.sh"
autoattack reverse_only standard Linf "$@"
