# CUDA image for the purification evaluations (COUP, DiffPure, reverse-only, AID). Build from the repo root:
#   docker build -f diffpure.Dockerfile -t coup-purification .
# Run with the weights and datasets mounted (they are not baked in):
#   docker run --gpus all --rm -v "$PWD/pretrained:/workspace/coup/pretrained" \
#     -v "$PWD/data:/workspace/coup/data" -v "$PWD/results:/workspace/coup/results" \
#     coup-purification bash run_scripts/cifar10/run_cifar_stand_inf_guide.sh 121 0
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# git: the commit hash saved with every result; tcmalloc: preloaded by utils/tcmalloc.sh in the run scripts
RUN apt-get update \
    && apt-get install -y --no-install-recommends git libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/coup
COPY requirements.txt .
# torch 2.14.1 (CUDA) comes with the base image and satisfies the pin; the rest is installed at the pinned versions
RUN pip install -r requirements.txt

COPY . .
CMD ["python", "eval_sde_adv.py", "--help"]
