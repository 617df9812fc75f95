#!/usr/bin/env bash
# DiffPure's CelebA-HQ protocol (run_celebahq_bpda_{glasses,smiling}.sh): t* 0.5, BPDA+EOT Linf 16/255, step 2/255,
# 50 iterations, 15 EOT samples, broken-looking images re-checked on 20 purifications, early stop; the bare
# classifier is attacked too.
# usage: bash run_scripts/celebahq/run_celebahq_bpda.sh SEED DATA_SEED ATTRIBUTE [eval_sde_adv.py options]
source "$(dirname "$0")/common.sh"
celebahq bpda_eot_diffpure "$@"
