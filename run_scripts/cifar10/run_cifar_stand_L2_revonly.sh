#!/usr/bin/env bash
# Reverse-only (COUP with lambda 0), AutoAttack 'standard', L2 0.5; t* from configs/cifar10_L2.yml.
# Gradient: the config's backend (papers: torchsde adjoint, approximate); GRADIENT=exact bash run_scripts/cifar10/run_cifar_stand_L2_revonly.sh ... for exact gradients.
# usage: bash run_scripts/cifar10/run_cifar_stand_L2_revonly.sh SEED DATA_SEED   (e.g. 121 0; from any directory)
source "$(dirname "$0")/../eval_common.sh"
autoattack reverse_only standard L2 "$@"
