#!/usr/bin/env bash
# The same images and budget as run_celebahq_bpda.sh, attacked with exact gradients through all 500 DDPM steps
# (DiffPure's protocol on the step-checkpointed ancestral sampler), which DiffPure's sampler could not provide.
# usage: bash run_scripts/celebahq/run_celebahq_exact.sh SEED DATA_SEED ATTRIBUTE [eval_sde_adv.py options]
source "$(dirname "$0")/common.sh"
celebahq pgd_eot_diffpure "$@"
