"""XLA:CPU process settings: which matmul kernels it uses and how many threads it runs.

Both must be in place before JAX starts its CPU backend, so `llm_jax/__init__.py` sets
the kernels and `llm-jax` (the CLI dispatcher) and tools/bench.py pin the threads first.

- Kernels: XLA:CPU hands dots and some reductions to YNNPACK by default; on the train
  steps of small GPT models here its fusions ran 1.3-1.5x slower than XLA's own
  Eigen dots (tools/bench.py, one thread; the same float32 operations, rounding
  may differ in the last bit). A flag in the user's XLA_FLAGS wins over this default.
- Threads: XLA sizes its thread pool from the CPUs the process may run on, whatever
  `--xla_cpu_multi_thread_eigen` says, so two trials each "given one thread" still ran
  two threads each and waited on each other on a busy machine. The only reliable limit
  is the CPU affinity: `LLM_JAX_CPUS` (e.g. "0" or "2-3,6") pins the process to those
  CPUs; the sweep runner gives each parallel trial its own share.
- Memory: XLA:CPU allocates each execution's temporaries anew, and glibc serves blocks
  over 32 MB with fresh pages from the kernel and hands them back when freed, so every
  step faulted its temporaries in again, page by page. `reuse_freed_memory` (called on
  import where JAX will run on the CPU) keeps freed memory in the process instead, unless
  LLM_JAX_REUSE_MEMORY=0. A thread's heap holds 64 MB at most, so a step whose
  temporaries pass that is served from the main heap (`one_arena_for_step`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.metadata
import logging
import os
import re
import sys

from llm_jax import tpu_env

CPUS_ENV = "LLM_JAX_CPUS"
REUSE_MEMORY_ENV = "LLM_JAX_REUSE_MEMORY"  # see reuse_freed_memory
_KERNEL_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


# XLA aborts the process on a flag it does not know, so the default is only set for the
# jaxlib versions whose XLA was checked to have it (0.10.0, 0.10.2 and 0.12.0.1 were).
_KERNEL_FLAG_JAXLIB = ((0, 10), (0, 13))


def _jaxlib_version() -> tuple[int, ...]:
    try:
        text = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def set_default_flags() -> None:
    """Add our XLA:CPU kernel default to XLA_FLAGS unless the user chose one."""
    flags = os.environ.get("XLA_FLAGS", "")
    low, high = _KERNEL_FLAG_JAXLIB
    if _KERNEL_FLAG not in flags and low <= _jaxlib_version() < high:
        os.environ["XLA_FLAGS"] = f"{flags} {_KERNEL_FLAG}=".strip()


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8  # mallopt's


def jax_runs_on_cpu() -> bool:
    """Whether JAX will run on its CPU backend here: JAX_PLATFORMS puts cpu first, or,
    unset, the machine shows no GPU or TPU (no JAX import: call before JAX starts)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    accelerators = glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/kfd")
    return not (accelerators or tpu_env.has_tpu_chips())


# LLM_JAX_REUSE_MEMORY's values; unset is "auto" (see reuse_freed_memory).
REUSE_MEMORY_MODES = ("0", "1", "auto", "one-arena")


def reuse_memory_mode() -> str:
    """LLM_JAX_REUSE_MEMORY, "auto" when unset; ValueError for a value not in
    REUSE_MEMORY_MODES."""
    value = os.environ.get(REUSE_MEMORY_ENV, "auto").strip()
    if value not in REUSE_MEMORY_MODES:
        raise ValueError(
            f"{REUSE_MEMORY_ENV}={value!r}: use 0 to give freed memory back to the system, "
            "1 to reuse it, auto or unset to reuse it and serve a step whose temporaries "
            "pass 64 MB from one heap, one-arena to serve every step from one heap"
        )
    return value


def _mallopt():
    """glibc's mallopt, or None where there is no glibc."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return None


def _reuse_mode() -> str:
    """The mode that applies here: "0" where JAX does not run on the CPU or the value is
    bad (`llm-jax` refuses it in one line: cli.run)."""
    try:
        mode = reuse_memory_mode()
    except ValueError:
        return "0"
    return mode if jax_runs_on_cpu() else "0"


def reuse_freed_memory() -> bool:
    """Unless LLM_JAX_REUSE_MEMORY=0, and where JAX runs on the CPU (`jax_runs_on_cpu`),
    make glibc's malloc serve blocks from its heaps instead of fresh mappings and never
    shrink them, so freed memory is reused without page faults; False otherwise or where
    there is no glibc. The 64 MB top pad keeps a thread's extra heap, which glibc would
    unmap whenever a step's free left it empty (the trim threshold does not cover that).

    Steps whose temporaries pass 32 MB run up to 1.3x faster (README, Speed on CPU); the
    process keeps its peak heap. A block over a thread heap's 64 MB is still mapped
    afresh: "one-arena" serves every thread from the main heap, which keeps those too;
    "auto" (the default) does so only for a step that needs it (`one_arena_for_step`).
    Arenas are taken by JAX's threads when its backend starts: `import llm_jax` calls this.
    """
    mode, mallopt = _reuse_mode(), _mallopt()
    if mode == "0" or mallopt is None:
        return False
    settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20)]
    if mode == "one-arena":
        settings.append((_M_ARENA_MAX, 1))
    return all([bool(mallopt(param, value)) for param, value in settings])


THREAD_HEAP_BYTES = 64 << 20  # the most a glibc thread arena's heap holds (64-bit)


def step_temporaries_bytes(config) -> int:
    """XLA:CPU's temporaries for one train step of `config` (a validated llm_jax config),
    estimated: per token of a micro-batch, 6 d_model + 3 d_ff + 2 n_heads seq_len values
    per layer and 2.5 per vocabulary entry, plus 2.5 bytes per parameter. Fit to XLA's
    `memory_analysis()` of unscanned float32 GPT-2 steps, 26-523 MB, within 5%."""
    m, seq = config.model, config.data.seq_len
    tokens = config.train.batch_size // max(1, config.train.microbatches) * seq
    per_layer = 6 * m.d_model + 3 * m.d_ff + 2 * m.n_heads * seq
    value_bytes = 2 if m.dtype == "bfloat16" else 4
    params = (m.n_layers * (4 * m.d_model + 2 * m.d_ff) + m.vocab_size) * m.d_model
    return int(tokens * (m.n_layers * per_layer + 2.5 * m.vocab_size) * value_bytes + 2.5 * params)


def backend_started() -> bool:
    """Whether JAX has started a backend in this process (no JAX import here). True where
    this JAX does not say: the safe answer for arenas and forks alike."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is None:
        return False
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started()) if started else True


def wants_one_arena(config) -> bool:
    """Whether `one_arena_for_step(config)` would serve every thread from one heap here: in
    the "auto" mode, on a CPU, when the step's temporaries pass a thread heap."""
    return _reuse_mode() == "auto" and step_temporaries_bytes(config) > THREAD_HEAP_BYTES


def one_arena_for_step(config) -> bool:
    """When `wants_one_arena(config)`, serve every thread from the main heap: glibc would
    otherwise map the step's temporaries afresh, and fault them in, at every step. Whether
    it did.

    At 4 layers x d_model 256, seq 256 (523 MB) the step ran 1.17x faster; at 2 x 96,
    seq 256, batch 32 (371 MB) 1.3-1.5x. Below 64 MB it is left off: it made the README
    demo's small steps 15-40% slower. Effective only before JAX's backend starts (its
    threads keep the arenas they took), as in `trainer.train_and_evaluate`; a sweep's
    runner gives a trial a worker that made the same choice (scaling/runner.py)."""
    if not wants_one_arena(config) or backend_started():
        return False
    mallopt = _mallopt()
    if not (mallopt and mallopt(_M_ARENA_MAX, 1)):
        return False
    logging.getLogger(__name__).info(
        "CPU: the step's temporaries (~%d MB) pass a thread's 64 MB heap, so every thread "
        "allocates from one heap (%s=1 turns this off)",
        step_temporaries_bytes(config) >> 20,
        REUSE_MEMORY_ENV,
    )
    return True


def parse_cpus(text: str) -> set[int]:
    """CPU numbers of a list like "0", "0,2" or "0-3,6" (the taskset -c format)."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    if not cpus:
        raise ValueError(f"no CPUs in {text!r}")
    return cpus


def format_cpus(cpus) -> str:
    """The inverse of `parse_cpus`, one number per item ("0,1")."""
    return ",".join(str(c) for c in sorted(cpus))


def pin_from_env() -> None:
    """Pin this process to the CPUs in LLM_JAX_CPUS, if set (before JAX's backend starts)."""
    text = os.environ.get(CPUS_ENV)
    if text and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, parse_cpus(text))


def cpu_slots(parallel: int) -> list[list[int]]:
    """This process's CPUs split into `parallel` equal, disjoint slots (in order); [] when
    there are fewer CPUs than slots or the platform cannot pin."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    cpus = sorted(os.sched_getaffinity(0))
    per_slot = len(cpus) // parallel
    if per_slot == 0:
        return []
    return [cpus[i * per_slot : (i + 1) * per_slot] for i in range(parallel)]
