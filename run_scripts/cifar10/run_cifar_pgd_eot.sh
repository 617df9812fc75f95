#!/usr/bin/env bash
# PGD-EOT with exact gradients through the purifier: 200 steps x 20 EOT samples, step 0.007, Linf 8/255.
# Gradient: always exact (backend exact); GRADIENT is ignored here.
# usage: bash run_scripts/cifar10/run_cifar_pgd_eot.sh SEED DATA_SEED [PURIFIER]   (PURIFIER: coup by default,
#        or reverse_only | diffpure | none; also settable as env PURIFIER)
source "$(dirname "$0")/../eval_common.sh"
linf_attack pgd_eot exact "$@"
