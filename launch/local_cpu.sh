#!/usr/bin/env bash
# Run any stage on this machine's CPU. Usage: launch/local_cpu.sh configs/sft.py:tiny runs/sft [--config.x=y ...]
# DRY_RUN=1 prints the command instead.
set -euo pipefail
config=${1:?config spec, e.g. configs/sft.py:tiny}; workdir=${2:?workdir}; shift 2
export JAX_PLATFORMS=cpu
cmd=(r1jax --config="$config" --workdir="$workdir" --distributed=off "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
