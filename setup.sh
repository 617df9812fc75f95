#!/usr/bin/env bash
# One setup path for a fresh machine: venv + pinned packages, Fashion-MNIST and tcmalloc from Debian when possible.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

need_apt=()
[ -x "$VENV/bin/python" ] || "$PYTHON" -c "import ensurepip" 2>/dev/null || need_apt+=(python3-venv)
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || need_apt+=(libtcmalloc-minimal4)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null
  else
    echo "setup: skipping 'apt-get install ${need_apt[*]}' (needs apt and root): run it with sudo, or, for the" \
         "Fashion-MNIST demo data only, DEMO_DOWNLOAD=1 bash run_demo.sh (torchvision downloads it into data/)" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r requirements.txt
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
