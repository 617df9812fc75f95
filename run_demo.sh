#!/usr/bin/env bash
# The demo: install what is missing, attack four defenses on real Fashion-MNIST with exact, fully adaptive
# PGD-EOT (configs/demo.yml), print one table and write results/demo/{table.md,examples.png}.
#   bash run_demo.sh          # <= 10 minutes on 2 CPU cores
#   bash run_demo.sh --fresh  # recompute everything (a second run otherwise reuses the results, marked in the table)
#   bash run_demo.sh --full   # 256 images, PGD 10 x 1 EOT, plus COUP with detached attack gradients (see README for its runtime and numbers)
#   bash run_demo.sh --lm     # the demo plus LM and COUP-LM (likelihood maximization) in the same table (finished runs are reused)
# Env: DEMO_DOWNLOAD=1 reads Fashion-MNIST through torchvision, downloading it into data/ once (no root needed),
# instead of the Debian package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
source utils/tcmalloc.sh
PY=.venv/bin/python
CONFIG=configs/demo.yml
OUT=results/demo
ARGS=()
SELECT=()  # what defines the experiment: the runs and the report get the same options
if [ "${1:-}" = "--full" ]; then
  OUT=results/demo_full
  SELECT=(--num_sub 256 --set attacks.0.iterations=10 --set attacks.0.eot_samples=1)
fi
if [ "${DEMO_DOWNLOAD:-0}" = 1 ]; then
  SELECT+=(--set data.source=torchvision --set data.download=true)
fi
if [ "${!#:-}" = "--fresh" ]; then  # recompute instead of reusing the results of an earlier run
  ARGS+=(--fresh)
fi
PURIFIERS=(none diffpure reverse_only coup)
if [ "${1:-}" = "--lm" ]; then
  PURIFIERS+=(lm coup_lm)
fi
for purifier in "${PURIFIERS[@]}"; do
  "$PY" eval_sde_adv.py --config "$CONFIG" --purifier "$purifier" --output_dir "$OUT" "${SELECT[@]}" "${ARGS[@]}" > /dev/null
done
if [ "${1:-}" = "--full" ]; then  # COUP again with the guidance term hidden from the attack (as released)
  "$PY" eval_sde_adv.py --config "$CONFIG" --purifier coup --grad_mode detached --output_dir "$OUT" "${SELECT[@]}" "${ARGS[@]}" > /dev/null
fi
if [ "${1:-}" = "--full" ]; then
  TITLE="Full demo: 256 images, 10 reverse steps (dt 0.01), PGD 10 x 1 EOT."
elif [ "${1:-}" = "--lm" ]; then
  TITLE="Demo budget with LM and COUP-LM (5 Adam steps, sigma in [0.4, 0.6]): 32 images, PGD 8 x 2 EOT."
else
  TITLE="Demo budget: 32 images, 10 reverse steps (dt 0.01), PGD 8 x 2 EOT, chosen to finish in <= 10 min on 2 CPU cores."
fi
"$PY" -m evaluation.report --results "$OUT" --config "$CONFIG" --out "$OUT" --title "$TITLE" "${SELECT[@]}"
