#!/usr/bin/env bash
# COUP (classifier-guided reverse SDE), AutoAttack 'rand', Linf 8/255; t* and lambda from configs/cifar10.yml.
# Gradient: the config's backend (papers: torchsde adjoint, approximate); GRADIENT=exact bash run_scripts/cifar10/run_cifar_rand_inf_guide.sh ... for exact gradients.
# usage: bash run_scripts/cifar10/run_cifar_rand_inf_guide.sh SEED DATA_SEED   (e.g. 121 0; from any directory)
source "$(dirname "$0")/../eval_common.sh"
autoattack coup rand Linf "$@"
