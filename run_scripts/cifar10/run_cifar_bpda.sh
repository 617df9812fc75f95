#!/usr/bin/env bash
# BPDA+EOT PGD-20 (the purifier's backward is the identity), Linf 8/255.
# Gradient: straight-through (BPDA), the solver is never differentiated; GRADIENT does not apply.
# usage: bash run_scripts/cifar10/run_cifar_bpda.sh SEED DATA_SEED [PURIFIER]   (PURIFIER: coup by default,
#        or reverse_only | diffpure | none; also settable as env PURIFIER)
source "$(dirname "$0")/../eval_common.sh"
linf_attack bpda_eot config "$@"
