#!/usr/bin/env bash
# One GPU: pip install -U "jax[cuda12]" first. Usage: launch/single_gpu.sh configs/sft.py:qwen2.5-1.5b runs/x [overrides]
# CUDA_VISIBLE_DEVICES picks the GPU (default 0); DRY_RUN=1 prints the command instead.
# JAX_PLATFORMS=cuda (default; rocm for AMD GPUs): a missing GPU plugin stops the run at start-up
# instead of training on the CPU.
# XLA_PYTHON_CLIENT_MEM_FRACTION: the share of the GPU's memory JAX takes at start (default 0.92).
set -euo pipefail
config=${1:?config spec}; workdir=${2:?workdir}; shift 2
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
# --distributed=off: one process even inside a SLURM or MPI allocation.
cmd=(r1jax --config="$config" --workdir="$workdir" --distributed=off "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
