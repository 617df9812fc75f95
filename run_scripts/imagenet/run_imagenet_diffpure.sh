#!/usr/bin/env bash
# DiffPure on ImageNet (ADM 256x256 unconditional, t* = 0.15), AutoAttack standard Linf 4/255.
# Gradient: the config's backend (papers: torchsde adjoint, approximate); GRADIENT=exact bash run_scripts/imagenet/run_imagenet_diffpure.sh ... for exact gradients.
# usage: bash run_scripts/imagenet/run_imagenet_diffpure.sh SEED DATA_SEED [eval_sde_adv.py options]
source "$(dirname "$0")/../eval_common.sh"
require_seeds "$@"
CONFIG=configs/imagenet_diffpure.yml evaluate Linf "$@"
