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
# Two workers on two cores, plus the trainers they start: numpy's BLAS threads (one per
# core each, spinning while they wait for work) only take the cores from them.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import contextlib
import gc

import jax
import pytest
from jax._src import compiler as jax_compiler

# Off with them, XLA:CPU's fusion emitters: its older emitters compile a tiny train step ~4x
# faster (0.5 s, not 2.1 s). The processes the tests start get the flag in XLA_FLAGS (read
# when their backend starts); this one gets it per compile, since optimized_xla turns
# XLA's defaults back on and off within it.
_CHEAP_CPU_CODEGEN = "--xla_cpu_use_fusion_emitters=false"


def _xla_flags(optimized: bool) -> str:
    """The session's XLA_FLAGS, with the cheap-codegen flag where optimizations are off."""
    flags = os.environ.get("XLA_FLAGS", "").replace(_CHEAP_CPU_CODEGEN, "").strip()
    return flags if optimized else f"{flags} {_CHEAP_CPU_CODEGEN}".strip()


os.environ["XLA_FLAGS"] = _xla_flags(not jax.config.read("jax_disable_most_optimizations"))
_get_compile_options = jax_compiler.get_compile_options


def _compile_options(*args, env_options_overrides=None, **kwargs):
    """JAX's compile options, with XLA:CPU's fusion emitters only where optimizations are on."""
    emitters = not jax.config.read("jax_disable_most_optimizations")
    overrides = {"xla_cpu_use_fusion_emitters": emitters, **(env_options_overrides or {})}
    return _get_compile_options(*args, env_options_overrides=overrides, **kwargs)


jax_compiler.get_compile_options = _compile_options

# Tracing and lowering hundreds of programs makes many short-lived objects: Python's
# collector, run every 700 allocations over everything imported, took ~10% of a compile.
# Imported objects are left out of its passes (freeze), and they come less often.
gc.freeze()
gc.set_threshold(50_000, 20, 20)

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
        mp.setenv("XLA_FLAGS", _xla_flags(on))
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
