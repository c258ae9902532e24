"""Host memory for XLA:CPU: keep freed blocks for reuse instead of handing them back to the OS.

Why. XLA:CPU allocates each execution's temporaries as one block with `malloc` and frees it when
the program ends. glibc serves blocks above its mmap threshold (at most 32 MiB) with a fresh
`mmap` and returns them with `munmap`, so every execution of a big program page-faults and zeroes
all of its temporaries again. One GRPO update of the 4-layer benchmark model has a 498 MiB temp
block: 127 000 minor faults and ~0.3 s of kernel time per step on 2 cores; reusing the block
makes that update ~17% faster (benchmarks/README.md). Accelerator memory does not go through
`malloc` and is unaffected.

What. `reuse_freed_memory()` sets three glibc `mallopt` parameters for this process:
- `M_MMAP_MAX = 0`: no block is served by its own `mmap`; all come from the heap;
- `M_TRIM_THRESHOLD` = 2 GiB - 1: free memory at the top of the heap stays mapped;
- `M_ARENA_MAX = 1`: threads share the main arena, whose heap can grow past the 64 MiB limit of
  a thread arena (a large block in a thread arena would otherwise fall back to `mmap`).
Then a freed temp block is reused by the next execution without faults. The cost: the process
keeps its high-water mark of heap memory until it exits. That mark can be a few temp blocks
rather than one: a small block that stays live inside a freed temp block makes the hole too small
for the next execution, and the heap grows once more. It settles after a few growths (a 128 MiB
temp block, 2000 calls: 3 growths in the first 50, then flat). Where it ends depends on the
allocation order: the GRPO benchmark's RSS stayed below its peak without reuse, while the sampler
benchmark's small model (8x8, a 249 MiB temp block; two versions of its decode) peaked at 1005
and 1488 MiB with reuse against 1157 and 1203 MiB without.

Call it early, before JAX creates its CPU client (that is when XLA's worker threads start and
take their arenas). The CLI does, through `configure(mode)` with `--host_malloc` (default "auto":
only where JAX will run on the CPU); the benchmarks do, and say so. Elsewhere (musl, macOS,
Windows) it does nothing and returns False.
"""

import ctypes
import ctypes.util
import importlib.util
import os
import pkgutil
import platform

from absl import logging

# From glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int

MODES = ("auto", "reuse", "system")

_applied = False


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def reuse_freed_memory() -> bool:
    """Keeps freed host memory in the heap for reuse (see the module docstring); True if applied.

    Idempotent. Returns False where there is no glibc `mallopt` or glibc refuses a setting.
    """
    global _applied
    if _applied:
        return True
    libc = _libc()
    if libc is None:
        logging.info("hostmem: no glibc mallopt on this platform; host allocator left as is")
        return False
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    refused = [param for param, value in settings if libc.mallopt(param, value) != 1]
    if refused:
        logging.warning("hostmem: glibc refused mallopt parameters %s", refused)
        return False
    _applied = True
    logging.info("hostmem: freed host memory is kept for reuse (no per-block mmap, no trim)")
    return True


def accelerator_expected() -> bool:
    """Whether JAX will likely run on an accelerator, judged without starting a JAX backend.

    JAX_PLATFORMS decides when set; otherwise an installed PJRT plugin (the `jax_plugins`
    namespace: CUDA, ROCm) or libtpu counts as an accelerator.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] != "cpu"
    try:
        import jax_plugins  # namespace package of the CUDA / ROCm PJRT plugins

        if any(pkgutil.iter_modules(jax_plugins.__path__)):
            return True
    except ImportError:
        pass
    return importlib.util.find_spec("libtpu") is not None


def configure(mode: str = "auto") -> bool:
    """Applies `mode`: "reuse" always, "system" never, "auto" unless an accelerator is expected."""
    if mode not in MODES:
        raise ValueError(f"host malloc mode {mode!r} not in {MODES}")
    if mode == "system" or (mode == "auto" and accelerator_expected()):
        return False
    return reuse_freed_memory()
