#!/usr/bin/env bash
# One setup path for a fresh machine: venv + pinned packages, Fashion-MNIST and tcmalloc from Debian when possible.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r requirements.txt

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || need_apt+=(libtcmalloc-minimal4)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null
  else
    echo "setup: skipping 'apt-get install ${need_apt[*]}' (needs apt and root); Fashion-MNIST demo data" \
         "then comes from --data_dir or torchvision's download" >&2
  fi
fi
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
