"""Test set-up: 8 host CPU devices before JAX starts, and strict rank promotion."""

import os

# Cheap compiles: LLVM at -O0 and XLA:CPU's older fused-kernel emitters (as the two-process
# test's runs). On a clean machine the suite spends most of its time compiling small programs
# whose run time barely moves: test_rl.py + test_steps.py, cold cache, 124 s -> 76 s (-O0 alone
# 99 s). Numbers may differ from the default build's by float rounding (reductions fused in
# another order); R1JAX_TEST_FULL_OPT=1 runs the suite as users' runs compile.
_OPT = " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
_OPT = "" if os.environ.get("R1JAX_TEST_FULL_OPT") == "1" else _OPT
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8" + _OPT
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Runs that rebuild the same programs (resume tests, repeated stages) compile them once; set
# in the environment, so the runs tests start as subprocesses (the CLI killed and resumed)
# share the cache too (sigkill + sigterm tests: 44 -> 33 s).
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ.get(
    "R1JAX_TEST_COMPILE_CACHE", f"/tmp/r1jax-test-xla-cache-{os.getuid()}"
)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from r1jax.rewards import code  # noqa: E402

# Root on a machine where neither bwrap nor unshare can make namespaces (a container without
# CAP_SYS_ADMIN): code rewards refuse to pick "rlimits" by themselves there (a program could read
# the tests' answers from world-readable datasets). The suite's programs are its own, so it runs
# them under "rlimits" as asked for by name; tests of the refusal clear the variable.
if code._is_root() and not any(code._mode_works(m) for m in ("bwrap", "unshare")):
    os.environ.setdefault("R1JAX_SANDBOX", "rlimits")

import pathlib  # noqa: E402

import pytest  # noqa: E402

# ../shared/data next to the checkout, or R1JAX_DATA (as configs/base.py reads it).
SHARED_DATA = pathlib.Path(
    os.environ.get("R1JAX_DATA")
    or pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The public datasets' folder (SHARED_DATA); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
