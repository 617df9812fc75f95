#!/usr/bin/env bash
# DiffSmooth on CIFAR-10: improved-diffusion one-shot denoiser + Cohen's ResNet-110, every 20th test image,
# N0 100, N 10000, alpha 0.001 (configs/diffsmooth/cifar10.yml).
# usage: bash run_scripts/diffsmooth/run_cifar_diffsmooth.sh SIGMA [options]   (SIGMA 0.25 | 0.5 | 1.0;
#        e.g. --N 100000 for Cohen's budget; env M, LOCAL_SIGMA, BASE_NOISE as in common.sh)
source "$(dirname "$0")/common.sh"
certify configs/diffsmooth/cifar10.yml \
  ../../pretrained/cohen/models/cifar10/resnet110/noise_@NOISE@/checkpoint.pth.tar cifar10 "$@"
