#!/usr/bin/env bash
# One GPU: pip install -U "jax[cuda12]" first. Usage: launch/single_gpu.sh configs/sft.py:qwen2.5-1.5b runs/x [overrides]
set -euo pipefail
config=${1:?config spec}; workdir=${2:?workdir}; shift 2
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} exec r1jax --config="$config" --workdir="$workdir" "$@"
