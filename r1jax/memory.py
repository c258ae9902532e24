"""Device memory: refuse a program that cannot fit before it runs, and say so in one line.

Why. A program whose outputs XLA cannot allocate does not always fail: on XLA:CPU (jax 0.10) a
jitted init whose 256 GiB of params could not be allocated left the run waiting forever on the
training step counter, idle, with no message (the same is reported of TPUs, pytorch/xla#9502).
A temporary that cannot be allocated does raise (`RESOURCE_EXHAUSTED: Out of memory allocating
N bytes`), but as a traceback that names no setting. So the two places whose size follows the
config most directly are checked before they run: a training state (params and optimizer
moments, `trainer.init_state`) and a sampler call's KV cache (`sampler.sampling_bytes`). The
check is a lower bound (the bytes spread evenly over the mesh's devices, nothing else counted),
so it refuses only what cannot fit; `pipeline.run_stage` adds the stage's memory settings to
this error and to XLA's own out-of-memory errors.

The limit: CPU devices (also simulated ones) share the host's physical memory, or the process's
cgroup limit where that is lower (`host_memory_bytes`); an accelerator holds its
`memory_stats()["bytes_limit"]`, and a platform that reports none is not checked. With devices
of several processes each process checks its own and all agree (`check_fits`).
"""

import os
import pathlib

import jax
import numpy as np

from r1jax import distributed


class OutOfMemory(RuntimeError):
    """What a program needs is more than the devices' memory."""


def host_memory_bytes() -> int:
    """This host's physical memory, or the memory limit of this process's cgroup (a container's,
    a Slurm job's) where that is lower: past it the kernel kills the process with no message."""
    return _host_limit()[0]


def _host_limit() -> tuple[int, str]:
    """host_memory_bytes and the words for it."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = cgroup_memory_limit()
    if limit is not None and limit < physical:
        return limit, f"this process's cgroup memory limit of {gib(limit)}"
    return physical, f"this host's {gib(physical)} of memory"


def cgroup_memory_limit(
    proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup"
) -> int | None:
    """The lowest memory limit on this process's cgroup and its ancestors (cgroup v2
    `memory.max`, v1 `memory.limit_in_bytes`), or None where none is set or none can be read."""
    try:
        lines = pathlib.Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            folder, name = pathlib.Path(root), "memory.max"
            if (folder / "unified").is_dir():  # hybrid layout: v2 mounted beside v1
                folder = folder / "unified"
        elif "memory" in controllers.split(","):
            folder, name = pathlib.Path(root) / "memory", "memory.limit_in_bytes"
        else:
            continue
        # Inside a container the hierarchy is mounted at its own cgroup: the path may not exist
        # below root, and then root's file is the container's.
        parts = pathlib.PurePosixPath(path).parts[1:]
        for depth in range(len(parts), -1, -1):
            value = _read_limit(folder.joinpath(*parts[:depth]) / name)
            if value is not None:
                limits.append(value)
    return min(limits) if limits else None


def _read_limit(path: pathlib.Path) -> int | None:
    """A limit file's bytes; None for "max", v1's no-limit value (~2**63) or no file."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= 2**62:
        return None
    return int(text)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_fits(nbytes: int, devices, what: str, hint: str = "") -> None:
    """Raises OutOfMemory naming `what`, the sizes and `hint` when `nbytes` (all devices
    together), spread evenly over `devices`, is more than one of them holds (on CPU: more than
    the host holds for this process's devices). Devices of several processes: each checks its
    own, and all agree (hosts of other sizes, a GPU another job holds part of): a process that
    refused alone left the others waiting in the program it would not run."""
    devices = list(devices)
    error = None
    try:
        _check_fits(nbytes, devices, what, hint)
    except OutOfMemory as e:
        error = e
    if len({d.process_index for d in devices}) > 1:
        distributed.raise_together(error)
    elif error is not None:
        raise error


def _check_fits(nbytes: int, devices: list, what: str, hint: str) -> None:
    local = [d for d in devices if d.process_index == jax.process_index()] or devices
    share = nbytes / len(devices)
    if local[0].platform == "cpu":
        need = share * len(local)
        limit, where = _host_limit()
    else:
        limit = (local[0].memory_stats() or {}).get("bytes_limit", 0)
        need, where = share, f"the {gib(limit)} of one {local[0].device_kind}"
    if limit and need > limit:
        spread = f" ({gib(share)} on each of {len(devices)} devices)" if len(devices) > 1 else ""
        raise OutOfMemory(
            f"{what} needs at least {gib(nbytes)}{spread}, more than {where}"
            + (f": {hint}" if hint else "")
        )


def sharded_bytes(abstract, shardings) -> int:
    """Bytes of a tree of arrays (shapes and dtypes) laid out with `shardings` (one per leaf),
    summed over every device: replicated leaves count once per device."""
    total = 0
    for leaf, sh in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True):
        shard = int(np.prod(sh.shard_shape(leaf.shape), dtype=np.int64))
        total += shard * leaf.dtype.itemsize * len(sh.device_set)  # (also typed PRNG keys)
    return total


def is_out_of_memory(error: BaseException) -> bool:
    """True for XLA's out-of-memory errors (RESOURCE_EXHAUSTED, or an allocation that failed
    while a computation was dispatched)."""
    if isinstance(error, OutOfMemory):
        return True
    if not isinstance(error, jax.errors.JaxRuntimeError):
        return False
    message = str(error)
    return message.startswith("RESOURCE_EXHAUSTED") or "Out of memory" in message
