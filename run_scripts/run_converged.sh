#!/usr/bin/env bash
# The converged evaluation of the demo defenses (configs/converged.yml), resumable: rerun to continue.
# A run resumes only under the code that started it (the run store's code fingerprint), and this one spans many
# sessions, so it runs the code of one pinned commit (CONVERGED_COMMIT) from a git worktree next to this checkout,
# and writes its per-image records into this checkout: docs/converged/<run>/results.jsonl (committed). Then
#   .venv/bin/python -m experiments.convergence --runs docs/converged --out docs/converged
# writes table.csv, checkpoints.csv and convergence.png. Many CPU-hours: run it in the background, niced.
# Checkpoints are named by their path inside the repository, so the worktree (or a fresh clone) resumes the same
# runs. Env: PURIFIERS (default "none coup diffpure reverse_only"), PYTHON (default .venv/bin/python here),
#      LANES (default 1; 2 runs two defenses at a time, one thread each), CONVERGED_COMMIT (default the commit the
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
lane() {  # the defenses of one lane, one after the other
  for purifier in "$@"; do
    (cd "$TREE" && nice -n 15 "$PY" eval_sde_adv.py --config configs/converged.yml --purifier "$purifier" \
      --output_dir "$ROOT/docs/converged")
  done
}
read -r -a ALL <<< "${PURIFIERS:-none coup diffpure reverse_only}"
if [ "${LANES:-1}" = 2 ]; then
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  lane "${ALL[@]:0:2}" & first=$!
  lane "${ALL[@]:2}" & second=$!
  status=0
  wait "$first" || status=$?
  wait "$second" || status=$?
  exit "$status"
else
  lane "${ALL[@]}"
fi
