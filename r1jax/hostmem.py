"""Host memory for XLA:CPU: its per-execution temporaries on huge pages, or kept for reuse.

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

Huge pages instead (mode "hugepages", what "auto" picks on CPU where it can). The single arena
has a price: every thread of XLA:CPU takes one lock for each malloc, and the decode loop
allocates from several threads at every step. On an Intel Xeon VM (glibc 2.36, transparent huge
pages "madvise") the sampler benchmark's tiny 32x1 ran at 10 600-11 300 tokens/s on two host
devices with reuse against 18 600-19 000 without, and compiles took 30-50% longer. glibc's
tunable `glibc.malloc.hugetlb=1` keeps the default arenas and per-block mmap but asks the kernel
for 2 MiB pages (madvise MADV_HUGEPAGE) for the blocks malloc maps: a 498 MiB temp block then
faults ~250 pages instead of ~127 000. The sampler keeps the defaults' speed; the GRPO
benchmark's step is ~5% slower than with reuse (0.673-0.691 s against 0.635-0.656) and a little
faster than with the defaults (0.682-0.714). A tunable is read when the process starts:
`environ_for(mode)` gives the environment that sets it, and the `r1jax` CLI restarts itself
once with it (`needs_restart`). Where glibc is older than 2.35 or the kernel's transparent huge
pages are "never", "auto" falls back to reuse.

Call `configure` early, before JAX creates its CPU client (that is when XLA's worker threads
start and take their arenas). The CLI does, with `--host_malloc` (default "auto": only where JAX
will run on the CPU); the benchmarks do, and say so. Elsewhere (musl, macOS,
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

MODES = ("auto", "hugepages", "reuse", "system")
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"

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


def huge_pages_supported() -> bool:
    """glibc >= 2.35 (the malloc.hugetlb tunable) and transparent huge pages not "never"."""
    name, version = platform.libc_ver()
    if platform.system() != "Linux" or name != "glibc":
        return False
    try:
        if tuple(int(x) for x in version.split(".")[:2]) < (2, 35):
            return False
        with open(_THP_SETTING) as f:
            return "[never]" not in f.read()
    except (OSError, ValueError):
        return False


def _tunables(environ) -> list[str]:
    return [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]


def huge_pages_active() -> bool:
    """Whether this process started with glibc.malloc.hugetlb=1 where it takes effect."""
    return huge_pages_supported() and HUGE_PAGES_TUNABLE in _tunables(os.environ)


def resolve(mode: str) -> str:
    """The mode `mode` stands for here: "auto" is "system" when JAX will run on an accelerator,
    else "hugepages" where supported, else "reuse"."""
    if mode not in MODES:
        raise ValueError(f"host malloc mode {mode!r} not in {MODES}")
    if mode != "auto":
        return mode
    if accelerator_expected():
        return "system"
    return "hugepages" if huge_pages_supported() else "reuse"


def environ_for(mode: str, environ=None) -> dict:
    """A copy of `environ` (default os.environ) for starting a process in `mode`: with
    GLIBC_TUNABLES holding glibc.malloc.hugetlb=1 when the mode resolves to "hugepages"."""
    env = dict(os.environ if environ is None else environ)
    tunables = _tunables(env)
    if resolve(mode) == "hugepages" and HUGE_PAGES_TUNABLE not in tunables:
        env["GLIBC_TUNABLES"] = ":".join([*tunables, HUGE_PAGES_TUNABLE])
    return env


def needs_restart(mode: str) -> bool:
    """Whether `mode` needs this process restarted with environ_for(mode) to take effect."""
    return resolve(mode) == "hugepages" and not huge_pages_active()


def configure(mode: str = "auto") -> bool:
    """Applies `mode` to this process; True if host memory is managed (reuse or huge pages).

    "reuse": reuse_freed_memory(); "system": nothing; "hugepages": nothing to do when the process
    started with the tunable (environ_for), else a warning and glibc's defaults; "auto": see
    resolve(), where huge pages without the tunable fall back to reuse.
    """
    resolved = resolve(mode)
    if resolved == "system":
        return False
    if resolved == "hugepages":
        if huge_pages_active():
            logging.info("hostmem: malloc asks for transparent huge pages (%s)", HUGE_PAGES_TUNABLE)
            return True
        if mode == "hugepages":
            logging.warning(
                "hostmem: huge pages need GLIBC_TUNABLES=%s when the process starts "
                "(hostmem.environ_for; the r1jax CLI restarts itself with it); "
                "host allocator left as is",
                HUGE_PAGES_TUNABLE,
            )
            return False
    return reuse_freed_memory()
