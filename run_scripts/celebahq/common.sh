#!/usr/bin/env bash
# Shared by the CelebA-HQ scripts (sourced): celebahq ATTACK SEED DATA_SEED ATTRIBUTE [eval_sde_adv.py options]
# runs ATTACK of configs/celebahq_diffpure.yml on ATTRIBUTE (Eyeglasses | Smiling): data, classifier and its file.
source "$(dirname "${BASH_SOURCE[0]}")/../eval_common.sh"

celebahq() {
  local attack=$1
  shift
  USAGE_TAIL=" ATTRIBUTE (Eyeglasses | Smiling)" require_seeds "$@"
  if [ $# -lt 3 ] || [[ "$3" == -* ]]; then
    echo "usage: bash $0 SEED DATA_SEED ATTRIBUTE   (ATTRIBUTE: Eyeglasses | Smiling, e.g. 121 0 Smiling)" >&2
    exit 2
  fi
  local seed=$1 data_seed=$2 attribute=$3
  shift 3
  CONFIG=configs/celebahq_diffpure.yml evaluate Linf "$seed" "$data_seed" --attack "$attack" \
    --set "data.name=celebahq-$attribute" --set "classifier.name=celebahq__$attribute" \
    --set "classifier.checkpoint=../pretrained/celebahq/$attribute/net_best.pth" "$@"
}
