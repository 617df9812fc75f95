#!/usr/bin/env bash
# DiffSmooth on ImageNet: ADM 256x256 unconditional one-shot denoiser + DiffSmooth's Gaussian-trained BEiT-L/16,
# every 100th val image, N0 100, N 10000, alpha 0.001 (configs/diffsmooth/imagenet.yml; device cuda).
# usage: bash run_scripts/diffsmooth/run_imagenet_diffsmooth.sh SIGMA [options]   (SIGMA 0.25 | 0.5 | 1.0;
#        e.g. --device cpu, --batch 10; env M, LOCAL_SIGMA, BASE_NOISE as in common.sh)
source "$(dirname "$0")/common.sh"
certify configs/diffsmooth/imagenet.yml \
  ../../pretrained/diffsmooth/beit_large_patch16_224/noise_sd@NOISE@/checkpoint.pth.tar imagenet "$@"
