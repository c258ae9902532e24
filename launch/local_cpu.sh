#!/usr/bin/env bash
# Run any stage on this machine's CPU. Usage: launch/local_cpu.sh configs/sft.py:tiny runs/sft [--config.x=y ...]
set -euo pipefail
config=${1:?config spec, e.g. configs/sft.py:tiny}; workdir=${2:?workdir}; shift 2
JAX_PLATFORMS=cpu exec r1jax --config="$config" --workdir="$workdir" "$@"
