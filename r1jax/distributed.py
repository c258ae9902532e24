"""Multi-process start-up (JAX's multi-controller runtime) and the few host collectives r1jax uses.

Every process runs the same program on its own devices; `jax.jit` with shardings over a mesh of
all processes' devices (GSPMD) does the rest. `initialize` must run before anything touches JAX
devices. The collectives below are identities in a single process, so single-process code paths
pay nothing for them.
"""

import contextlib
import json
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from r1jax import files

MODES = ("auto", "on", "off")

# Environment variables that, set by a launcher, mean "this process is one of several".
_CLUSTER_HINTS = (
    # srun with several tasks (the batch script itself is one process, whatever SLURM_NTASKS
    # the job has: there a bare r1jax runs alone).
    ("SLURM_STEP_NUM_TASKS", lambda v: int(v) > 1),
    ("OMPI_COMM_WORLD_SIZE", lambda v: int(v) > 1),  # mpirun
    ("TPU_WORKER_HOSTNAMES", lambda v: "," in v),  # a multi-host Cloud TPU slice (GKE, QR)
    ("MEGASCALE_COORDINATOR_ADDRESS", bool),  # multi-slice TPU
)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _int(name: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None


def cluster_detected() -> bool:
    """True when a launcher's environment says this is one of several processes."""
    for name, test in _CLUSTER_HINTS:
        value = _env(name)
        if value:
            try:
                if test(value):
                    return True
            except ValueError:
                continue
    return False


def _use_gloo_on_cpu() -> None:
    # CPU devices of different processes talk through gloo; without it cross-process
    # collectives on CPU fail. Accelerators use their own (NCCL, ICI) and ignore this.
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError) as e:  # renamed or removed in a later JAX
        logging.warning("could not select gloo CPU collectives: %s", e)


def _leave_sigterm_to_r1jax() -> None:
    # JAX's preemption service takes SIGTERM for its sync points, which r1jax does not use: a
    # SIGTERM to an evaluation, a collection or a start-up was caught and ignored (a two-process
    # eval stage ran to its end). Without it SIGTERM ends the process, as in one process, and
    # the training loops save first (trainer.Preemption, agreed by every process).
    try:
        jax.config.update("jax_enable_preemption_service", False)
    except (AttributeError, ValueError) as e:  # renamed or removed in a later JAX
        logging.warning("could not turn JAX's preemption service off: %s", e)


def initialize(
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    *,
    mode: str = "auto",
    local_device_ids: str = "",
) -> bool:
    """Joins this process to a multi-process JAX run; returns whether it did.

    Arguments left empty fall back to R1JAX_COORDINATOR_ADDRESS, R1JAX_NUM_PROCESSES,
    R1JAX_PROCESS_ID and R1JAX_LOCAL_DEVICE_IDS. mode="auto" initialises when a coordinator is
    given or a launcher (SLURM, Open MPI, a multi-host TPU slice) is detected; "on" always calls
    `jax.distributed.initialize` (JAX then finds the coordinator itself on TPU, SLURM, MPI and
    Kubernetes); "off" never does.
    """
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r}: expected one of {MODES}")
    address = coordinator_address or _env("R1JAX_COORDINATOR_ADDRESS")
    count = num_processes or _int("R1JAX_NUM_PROCESSES", _env("R1JAX_NUM_PROCESSES") or "0")
    index = process_id
    if index < 0:
        index = _int("R1JAX_PROCESS_ID", _env("R1JAX_PROCESS_ID") or "-1")
    device_ids = local_device_ids or _env("R1JAX_LOCAL_DEVICE_IDS")
    if mode == "auto" and not address and not cluster_detected() and (count > 1 or index >= 0):
        raise ValueError(
            "--num_processes/--process_id (or R1JAX_NUM_PROCESSES/R1JAX_PROCESS_ID) need "
            "--coordinator_address (R1JAX_COORDINATOR_ADDRESS), or --distributed=on where JAX "
            "finds the coordinator itself (SLURM, a TPU pod): alone, each process would run as "
            "process 0 of its own and write the same files"
        )
    if mode == "off" or (mode == "auto" and not address and not cluster_detected()):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    if address:
        kwargs["coordinator_address"] = address
    if count:
        kwargs["num_processes"] = count
    if index >= 0:
        kwargs["process_id"] = index
    if device_ids:
        kwargs["local_device_ids"] = [_int("--local_device_ids", i) for i in device_ids.split(",")]
    _use_gloo_on_cpu()
    _leave_sigterm_to_r1jax()
    jax.distributed.initialize(**kwargs)
    logging.info(
        "process %d of %d: %d local devices, %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_primary() -> bool:
    """The process that writes shared files (config, tokenizer, metrics)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier called `name` (no-op in one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def gather_rows(x_local) -> np.ndarray:
    """Concatenates every process's rows (same shape on each), in process order, bit-exactly."""
    x_local = np.asarray(x_local)
    if jax.process_count() == 1:
        return x_local
    # Sent as 32-bit words: JAX without x64 would round float64 (and int64) to 32 bits.
    words = np.ascontiguousarray(x_local.reshape(x_local.shape[0], -1)).view(np.uint8)
    pad = (-words.shape[1]) % 4
    words = np.pad(words, ((0, 0), (0, pad))).view(np.uint32)
    out = np.asarray(multihost_utils.process_allgather(words, tiled=True)).view(np.uint8)
    out = np.ascontiguousarray(out[:, : out.shape[1] - pad]).view(x_local.dtype)
    return out.reshape(-1, *x_local.shape[1:])


def local_slice(n_local: int) -> slice:
    """This process's rows in an array gathered by `gather_rows`."""
    start = jax.process_index() * n_local
    return slice(start, start + n_local)


def global_max(value: int) -> int:
    """The largest `value` over all processes."""
    if jax.process_count() == 1:
        return int(value)
    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def global_min(value: int) -> int:
    """The smallest `value` over all processes."""
    if jax.process_count() == 1:
        return int(value)
    return int(np.min(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def from_primary(value):
    """Process 0's `value` (JSON-serializable; other processes may pass None) on every process:
    host-side decisions that must agree (a grade that timed out on one process only) are taken
    from process 0, which also writes them down. `value` itself in a single process."""
    if jax.process_count() == 1:
        return value
    data = json.dumps(value).encode() if is_primary() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    # Sent as 32-bit words, as gather_rows does.
    words = np.zeros(-(-size // 4), np.uint32)
    words.view(np.uint8)[: len(data)] = np.frombuffer(data, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(words)).view(np.uint8)[:size]
    return json.loads(out.tobytes())


class PeerError(RuntimeError):
    """Another process's error, raised by every other process of the run (`shared_errors`);
    the message names that process and its error's first line (its own log has the rest)."""


_sections = 0  # shared_errors sections open (in the main thread)
_MESSAGE_BYTES = 2000  # of another process's error: its first line, as far as this


def _first_line(error: BaseException) -> str:
    line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def raise_together(error: Exception | None) -> None:
    """Every process raises when any process has an `error` (None where it has none): that
    process its own, the others a PeerError naming the first such process and its error's
    first line. One small collective every process must reach; nothing in one process, nor
    inside a `shared_errors` section (which agrees when it ends)."""
    if jax.process_count() == 1 or _sections:
        if error is not None:
            raise error
        return
    message = b"" if error is None else _first_line(error).encode()[:_MESSAGE_BYTES]
    size = -1 if error is None else len(message)  # (an error's message may be empty)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray(size, np.int32)))
    sizes = sizes.reshape(-1)
    failed = np.flatnonzero(sizes >= 0)
    if not failed.size:
        return
    # The first failed process's message, sent to all (the failed ones too: a collective).
    first, size = int(failed[0]), int(sizes[failed[0]])
    words = np.zeros(max(1, -(-size // 4)), np.uint32)
    mine = jax.process_index() == first
    if mine:
        words.view(np.uint8)[:size] = np.frombuffer(message, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(words, is_source=mine))
    if error is not None:
        raise error
    text = got.view(np.uint8)[:size].tobytes().decode(errors="replace")
    raise PeerError(f"process {first} of {jax.process_count()} stopped the run: {text}")


@contextlib.contextmanager
def shared_errors():
    """A section of host work (reading data, process 0 writing a shared file) whose exception
    stops every process: on leaving it, the processes agree (`raise_together`) before any of
    them goes on to the next collective, where the others waited for good (or until a gloo or
    shutdown timeout) while the one that raised had stopped. The section itself must hold no
    collective (another process leaving early would meet it in the agreement's place). A
    section inside another agrees nothing itself (its error reaches the outer one): it is no
    barrier."""
    global _sections
    if _sections:
        yield
        return
    error = None
    _sections += 1
    try:
        yield
    except Exception as e:  # (KeyboardInterrupt and SystemExit pass: a stop, not a failure)
        error = e
    finally:
        _sections -= 1
    raise_together(error)


def open_journal(path, header: dict, name: str) -> list[dict]:
    """The entries of a killed run's journal that every process replays (files.open_journal:
    only when written with `header`): process 0 checks and rewrites it, the others read it."""
    entries = None
    with shared_errors():  # (a barrier too: the others read it once it is written)
        entries = files.open_journal(path, header) if is_primary() else None
    return files.read_jsonl(path)[1:] if entries is None else entries


@contextlib.contextmanager
def workdir_lock(workdir):
    """files.workdir_lock held by process 0 for the whole run; when it cannot take it (another
    run holds the folder, or the lock file cannot be written), every process stops: the others
    went on alone and failed a minute later inside their first collective (gloo's timeout, a
    traceback) or waited there for good."""
    with contextlib.ExitStack() as stack:
        error = None
        if is_primary():
            try:
                stack.enter_context(files.workdir_lock(workdir))
            except (files.WorkdirBusy, OSError) as e:
                error = e
        if global_min(int(error is None)) == 0:
            if error is not None:
                raise error
            raise files.WorkdirBusy(
                f"--workdir {workdir}: process 0 could not take the run's lock (its log says why)"
            )
        yield
