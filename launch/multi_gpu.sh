#!/usr/bin/env bash
# Several GPUs on one host. pip install -U "jax[cuda12]" first.
#
# Usage: launch/multi_gpu.sh CONFIG WORKDIR [--config.x=y ...]
#   MODE=single   (default) one process drives every visible GPU: the config's mesh spans them.
#   MODE=per-gpu  one process per GPU (jax.distributed on 127.0.0.1, process i owns GPU i);
#                 what multi-node runs do, on one host. Logs: WORKDIR/logs/process_<i>.log,
#                 process 0's also here; one failing process stops the others.
#   NUM_GPUS      GPUs to use (default: those CUDA_VISIBLE_DEVICES names, else all that
#                 nvidia-smi lists); PORT coordinator port
#                 (default 12355). DRY_RUN=1 prints the commands instead of running them.
#   JAX_PLATFORMS cuda (default; rocm for AMD GPUs): a missing GPU plugin stops the run at
#                 start-up instead of training on the CPU.
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of each GPU's memory JAX takes at start (default 0.92).
# Example: MODE=per-gpu launch/multi_gpu.sh configs/grpo.py:qwen2.5-1.5b runs/grpo-1.5b
set -euo pipefail

config=${1:?config spec, e.g. configs/grpo.py:qwen2.5-1.5b}
workdir=${2:?workdir}
shift 2
mode=${MODE:-single}
r1jax=(r1jax --config="$config" --workdir="$workdir")
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

run() {  # runs a command, or prints it (shell-quoted) under DRY_RUN=1
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

gpu_count() {
  if [[ -n ${NUM_GPUS:-} ]]; then
    echo "$NUM_GPUS"
  elif [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then  # what JAX sees, not every GPU of the host
    local -a visible
    IFS=, read -ra visible <<< "$CUDA_VISIBLE_DEVICES"
    echo "${#visible[@]}"
  elif command -v nvidia-smi > /dev/null; then
    nvidia-smi -L | grep -c '^GPU'
  else
    echo "multi_gpu.sh: nvidia-smi not found; set NUM_GPUS" >&2
    exit 2
  fi
}

case $mode in
  single)
    # --distributed=off: one process even inside a SLURM or MPI allocation.
    run "${r1jax[@]}" --distributed=off "$@"
    ;;
  per-gpu)
    n=$(gpu_count)
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "multi_gpu.sh: NUM_GPUS=$n is not a count" >&2; exit 2; }
    address=127.0.0.1:${PORT:-12355}
    [[ ${DRY_RUN:-0} == 1 ]] || mkdir -p "$workdir/logs"
    pids=()
    for ((i = 0; i < n; i++)); do
      cmd=("${r1jax[@]}" --distributed=on --coordinator_address="$address" \
        --num_processes="$n" --process_id="$i" --local_device_ids="$i" "$@")
      if [[ ${DRY_RUN:-0} == 1 ]]; then
        run "${cmd[@]}"
      elif ((i == 0)); then
        "${cmd[@]}" > >(tee "$workdir/logs/process_0.log") 2>&1 &
        pids+=($!)
      else
        "${cmd[@]}" > "$workdir/logs/process_$i.log" 2>&1 &
        pids+=($!)
      fi
    done
    status=0
    # Ctrl-C / SIGTERM reach only this shell (background jobs ignore SIGINT): pass a SIGTERM on,
    # which makes each r1jax save a checkpoint and exit.
    trap 'status=130; kill -TERM "${pids[@]}" 2> /dev/null || true' INT TERM
    # The first process to fail stops the rest (the others would wait on it forever). Polled,
    # not `wait -n -p`: that needs bash 5.1 (Ubuntu 20.04 has 5.0, RHEL 8 4.4), where it failed
    # at once and every process was stopped.
    while ((${#pids[@]})) && ((status == 0)); do
      alive=()
      for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2> /dev/null; then
          alive+=("$pid")
        elif ! wait "$pid"; then  # ended: its exit status
          ((status)) && break 2  # interrupted by the trap above
          status=1
          echo "multi_gpu.sh: a process failed; stopping the others (logs: $workdir/logs)" >&2
          kill "${pids[@]}" 2> /dev/null || true
          break 2
        fi
      done
      pids=("${alive[@]+"${alive[@]}"}")
      if ((${#pids[@]})); then
        # In the background: a Ctrl-C then interrupts the wait builtin, not a foreground sleep
        # (after which the last `wait` below returned before the processes had ended).
        sleep 0.2 &
        wait "$!" || true
      fi
    done
    wait || true
    exit "$status"
    ;;
  *)
    echo "multi_gpu.sh: MODE=$mode; expected single or per-gpu" >&2
    exit 2
    ;;
esac
