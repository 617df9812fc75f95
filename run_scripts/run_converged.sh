#!/usr/bin/env bash
# The converged evaluation of the demo defenses (configs/converged.yml), resumable: rerun to continue.
# A run resumes only under the code that started it (the run store's code fingerprint), and this one spans many
# sessions, so it runs the code of one pinned commit (CONVERGED_COMMIT) from a git worktree next to this checkout,
# and writes its per-image records into this checkout: docs/converged/<run>/results*.jsonl (committed). Then
#   .venv/bin/python -m experiments.convergence --runs docs/converged --out docs/converged
# writes table.csv, checkpoints.csv and convergence.png. Many CPU-hours: run it in the background, niced.
# Checkpoints are named by their path inside the repository, so the worktree (or a fresh clone) resumes the same
# runs. Env: PURIFIERS (default "none coup diffpure reverse_only"), PYTHON (default .venv/bin/python here),
#      RANKS (default 1; N runs each defense as a torchrun job of N processes, one thread each, which take its
#      batches in turn and write the same records as one process), CONVERGED_COMMIT (default the commit the
#      committed records were started with), CONVERGED_TREE (default ../<this folder>-converged-<commit>).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PIN=${CONVERGED_COMMIT:-0d00dbdbb861316111609725a338724e1e54fd6e}
TREE=${CONVERGED_TREE:-$ROOT/../$(basename "$ROOT")-converged-${PIN:0:7}}
PY=${PYTHON:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute, since the runs start in the worktree
if [ ! -d "$TREE" ]; then
  git worktree add --detach "$TREE" "$PIN"
fi
[ "$(git -C "$TREE" rev-parse HEAD)" = "$(git rev-parse "$PIN")" ] || {
  echo "error: $TREE is not at $PIN; remove it (git worktree remove $TREE) and rerun" >&2; exit 2; }
RANKS=${RANKS:-1}
[[ "$RANKS" =~ ^[1-9][0-9]*$ ]] || { echo "error: RANKS must be a positive integer, got '$RANKS'" >&2; exit 2; }
if [ "$RANKS" = 1 ]; then
  RUN=("$PY")
else  # one thread per process, so N processes share N cores
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$RANKS")
fi
read -r -a ALL <<< "${PURIFIERS:-none coup diffpure reverse_only}"
for purifier in "${ALL[@]}"; do
  (cd "$TREE" && nice -n 15 "${RUN[@]}" eval_sde_adv.py --config configs/converged.yml --purifier "$purifier" \
    --output_dir "$ROOT/docs/converged")
done
