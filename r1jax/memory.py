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

The limit: CPU devices (also simulated ones) share the host's physical memory; an accelerator
holds its `memory_stats()["bytes_limit"]`, and a platform that reports none is not checked.
"""

import os

import jax
import numpy as np


class OutOfMemory(RuntimeError):
    """What a program needs is more than the devices' memory."""


def host_memory_bytes() -> int:
    """This host's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_fits(nbytes: int, devices, what: str, hint: str = "") -> None:
    """Raises OutOfMemory naming `what`, the sizes and `hint` when `nbytes` (all devices
    together), spread evenly over `devices`, is more than one of them holds (on CPU: more than
    the host holds for this process's devices)."""
    devices = list(devices)
    local = [d for d in devices if d.process_index == jax.process_index()] or devices
    share = nbytes / len(devices)
    if local[0].platform == "cpu":
        need, limit = share * len(local), host_memory_bytes()
        where = f"this host's {gib(limit)} of memory"
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
