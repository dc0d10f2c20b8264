"""Test setup: CPU only, 8 fake devices for sharding checks, set before any JAX op; a
session-wide temporary cache (tokenizers, token caches, compiled programs) so tests never
write into the user's ~/.cache/llm_jax; rank promotion is an error, as in strict code."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Subprocesses (trainers, sweeps) inherit it too, and so do pytest-xdist's workers: one
# cache for the session (builds are locked, so workers wait for each other, not rebuild).
os.environ.setdefault("LLM_JAX_TEST_CACHE", tempfile.mkdtemp(prefix="llm_jax_test_cache_"))
os.environ["LLM_JAX_CACHE"] = os.environ["LLM_JAX_TEST_CACHE"]
# One persistent compilation cache for the whole session (this process, the trainers it
# starts, the workers): each tiny program compiles once, not once per test module.
# tiny_run points trainers at it too.
os.environ.setdefault(
    "LLM_JAX_TEST_XLA_CACHE", os.path.join(os.environ["LLM_JAX_CACHE"], "jax_compilation_cache")
)

# Hundreds of distinct tiny programs, each compiled for a few steps: XLA's expensive passes
# cost more than they save (they halve a tiny train step's compile). Off for the session,
# in the trainers and workers it starts too; tests about the optimized program itself (its
# exact bits, cost analysis, memory plans) turn them back on with `optimized_xla`.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import contextlib

import jax
import pytest

jax.config.update("jax_compilation_cache_dir", os.environ["LLM_JAX_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # as the trainer sets it
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")

# One GCS server for the whole session (tests/gcs_server.py): the storage layer configures
# its clients once per process, so every gs:// test must see the same endpoint.
from gcs_server import gcs_bucket, gs  # noqa: E402, F401


@contextlib.contextmanager
def _xla_optimizations(on: bool):
    """XLA's optimizations on or off here and in the processes started meanwhile. JAX's
    in-memory caches do not key on the setting: they are cleared on the way in and out."""
    previous = jax.config.read("jax_disable_most_optimizations")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0" if on else "1")
        jax.config.update("jax_disable_most_optimizations", not on)
        jax.clear_caches()
        try:
            yield
        finally:
            jax.config.update("jax_disable_most_optimizations", previous)
            jax.clear_caches()


@pytest.fixture
def optimized_xla():
    """The test compiles as users' runs do (XLA's optimizations on)."""
    with _xla_optimizations(True):
        yield


@pytest.fixture(scope="module")
def optimized_xla_module():
    """`optimized_xla` for a whole module, module fixtures included (`pytestmark =
    pytest.mark.usefixtures("optimized_xla_module")`)."""
    with _xla_optimizations(True):
        yield
