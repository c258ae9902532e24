"""Test set-up: 8 host CPU devices before JAX starts, and strict rank promotion."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Runs that rebuild the same programs (resume tests, repeated stages) compile them once.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("R1JAX_TEST_COMPILE_CACHE", f"/tmp/r1jax-test-xla-cache-{os.getuid()}"),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

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
