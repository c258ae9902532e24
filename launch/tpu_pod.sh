#!/usr/bin/env bash
# Cloud TPU VM pod slice: create it, install r1jax on every worker, run one r1jax process per
# worker (jax.distributed finds the coordinator and the process ids from the TPU metadata), and
# stream every worker's output here (each worker also keeps it in ~/r1jax-<name>.log).
#
# Usage (from the repository root):
#   export TPU_NAME=r1 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32   # required
#   export RUNTIME_VERSION=... PROJECT=my-project  # optional (runtime: by ACCELERATOR_TYPE)
#   launch/tpu_pod.sh create
#   launch/tpu_pod.sh install
#   launch/tpu_pod.sh run configs/grpo.py:qwen2.5-7b-tpu /mnt/shared/runs/r1zero-7b [--config.x=y ...]
#   launch/tpu_pod.sh logs        # the running job's output, from every worker
#   launch/tpu_pod.sh delete
#   launch/tpu_pod.sh all CONFIG WORKDIR [overrides]   # create + install + run
# WORKDIR must be storage every worker sees (NFS / Filestore, or a gcsfuse-mounted bucket):
# checkpoints are written collectively, each worker its own shards. R1JAX_DATA (exported on
# the workers) points the configs at the data folder. DRY_RUN=1 prints the commands instead.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

usage() {  # the comment block above
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0" >&2
  exit 2
}

run() {  # runs a command, or prints it (shell-quoted) under DRY_RUN=1
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

action=${1:-}
[[ -n $action ]] || usage
shift
: "${TPU_NAME:?set TPU_NAME, the name of the TPU VM (pod slice)}"
: "${ZONE:?set ZONE, e.g. us-central2-b}"
project=()
[[ -n ${PROJECT:-} ]] && project=(--project="$PROJECT")
tpu=(gcloud compute tpus tpu-vm)
# shellcheck disable=SC2088  # a path on the workers: their shell expands the ~
remote_dir='~/r1jax'
# shellcheck disable=SC2088
log="~/r1jax-${TPU_NAME}.log"
venv="$remote_dir/.venv"

ssh_all() {  # runs a shell command on every worker, their output streamed here
  run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" ${project[@]+"${project[@]}"} --worker=all --command="$1"
}

runtime() {  # Cloud TPU's software version for the accelerator (its docs' table)
  case $ACCELERATOR_TYPE in
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;  # v2, v3, v4
  esac
}

create() {
  : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE, e.g. v4-32 or v5litepod-16}"
  run "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" ${project[@]+"${project[@]}"} \
    --accelerator-type="$ACCELERATOR_TYPE" --version="${RUNTIME_VERSION:-$(runtime)}"
}

install() {
  # The working tree as it is here (uncommitted changes included), copied to every worker; not a
  # local ./.venv (the workers make their own there) nor ./runs.
  local tarball
  tarball=$(mktemp "${TMPDIR:-/tmp}/r1jax-src.XXXXXX")  # (BSD mktemp: the Xs last)
  run tar -czf "$tarball" --exclude=.git --exclude=./runs --exclude=./.venv --exclude='*.egg-info' \
    -C "$repo" .
  run "${tpu[@]}" scp "$tarball" "$TPU_NAME:~/r1jax-src.tar.gz" --zone="$ZONE" \
    ${project[@]+"${project[@]}"} --worker=all
  # r1jax needs Python >= 3.11 (jax, flax, orbax, grain); the runtimes' python3 is 3.10: uv
  # makes a 3.11 environment in $remote_dir/.venv, which `run` puts first on PATH.
  ssh_all "mkdir -p $remote_dir && tar -xzf ~/r1jax-src.tar.gz -C $remote_dir \
&& python3 -m pip install -q -U uv && python3 -m uv venv -q -p 3.11 $venv \
&& python3 -m uv pip install -q -p $venv/bin/python -U 'jax[tpu]' -e $remote_dir"
  rm -f "$tarball"
}

start() {
  local config=${1:?config spec, e.g. configs/grpo.py:qwen2.5-7b-tpu}
  local workdir=${2:?workdir on storage shared by all workers}
  shift 2
  local cmd
  cmd=$(printf '%q ' r1jax --config="$config" --workdir="$workdir" --distributed=on "$@")
  local data=""
  [[ -n ${R1JAX_DATA:-} ]] && data="export R1JAX_DATA=$(printf '%q' "$R1JAX_DATA") && "
  # Every worker runs the same command; all of them stream here, and into $log on the worker.
  # JAX_PLATFORMS=tpu: a worker without libtpu stops at start-up instead of training on its CPU.
  local env="export PATH=$venv/bin:\$PATH JAX_PLATFORMS=tpu; "
  ssh_all "set -o pipefail; ${env}${data}cd $remote_dir && $cmd 2>&1 | tee $log"
}

case $action in
  create) create ;;
  install) install ;;
  run) start "$@" ;;
  logs) ssh_all "tail -n 50 -f $log" ;;
  delete) run "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" ${project[@]+"${project[@]}"} --quiet ;;
  all)
    create
    install
    start "$@"
    ;;
  *) usage ;;
esac
