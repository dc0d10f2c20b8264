"""XLA:CPU process settings: kernel flags, CPU lists, pinning and the runner's CPU slots."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from llm_jax import xla_cpu
from llm_jax.scaling import runner

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only"
)


def test_parse_and_format_cpu_lists():
    assert xla_cpu.parse_cpus("0") == {0}
    assert xla_cpu.parse_cpus("0-3,6") == {0, 1, 2, 3, 6}
    assert xla_cpu.parse_cpus(" 2 , 1 ") == {1, 2}
    assert xla_cpu.format_cpus({3, 1}) == "1,3"
    for bad in ("", "a", "1-b"):
        with pytest.raises(ValueError):
            xla_cpu.parse_cpus(bad)


def test_default_kernel_flag_is_added_once_and_never_over_the_users(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    xla_cpu.set_default_flags()
    xla_cpu.set_default_flags()
    flags = os.environ["XLA_FLAGS"]
    assert flags.startswith("--xla_dump_to=/tmp/x ")
    assert flags.count("--xla_cpu_experimental_ynn_fusion_type") == 1
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    xla_cpu.set_default_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"


@pytest.mark.parametrize("version", ["0.9.2", "0.13.0", None])
def test_no_kernel_flag_on_a_jaxlib_whose_xla_may_not_know_it(monkeypatch, version):
    """XLA aborts on an unknown flag: outside the checked versions, XLA_FLAGS is untouched."""

    def fake_version(name):
        if version is None:
            raise xla_cpu.importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(xla_cpu.importlib.metadata, "version", fake_version)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    xla_cpu.set_default_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def test_slots_split_this_process_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert xla_cpu.cpu_slots(2) == [[0, 1], [2, 3]]
    assert xla_cpu.cpu_slots(5) == [[0], [1], [2], [3], [4]]
    assert xla_cpu.cpu_slots(6) == []  # more trials than CPUs: nobody is pinned


def test_runner_gives_each_parallel_trial_a_cpu_share_no_running_trial_holds(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv(xla_cpu.CPUS_ENV, raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    first = runner._thread_env(2, [])
    assert first[xla_cpu.CPUS_ENV] == "0,1"
    second = runner._thread_env(2, [SimpleNamespace(cpus="0,1")])
    assert second[xla_cpu.CPUS_ENV] == "2,3"
    after_first_ended = runner._thread_env(2, [SimpleNamespace(cpus="2,3")])
    assert after_first_ended[xla_cpu.CPUS_ENV] == "0,1"
    assert xla_cpu.CPUS_ENV not in runner._thread_env(1, [])  # one at a time: every CPU
    # The user's own pinning: `llm-jax sweep` runs on those CPUs, and its trials share them.
    monkeypatch.setenv(xla_cpu.CPUS_ENV, "2-3")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3})
    assert runner._thread_env(2, [])[xla_cpu.CPUS_ENV] == "2"
    assert runner._thread_env(2, [SimpleNamespace(cpus="2")])[xla_cpu.CPUS_ENV] == "3"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert runner._thread_env(2, [])[xla_cpu.CPUS_ENV] == "2-3"  # fewer CPUs than trials


def test_a_pinned_llm_jax_process_may_run_on_its_cpus_only():
    allowed = sorted(os.sched_getaffinity(0))
    code = (
        "import os, sys\n"
        "from llm_jax import cli\n"
        "cli._apply_cpu_env()\n"
        "print(sorted(os.sched_getaffinity(0)))\n"
    )
    env = dict(os.environ, **{xla_cpu.CPUS_ENV: str(allowed[-1])})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"[{allowed[-1]}]"


def _llm_jax_help_with(name: str, value: str) -> subprocess.CompletedProcess:
    """`llm-jax inspect --help` in a new process with the environment variable `name` set."""
    return subprocess.run(
        [sys.executable, "-m", "llm_jax.cli", "inspect", "--help"],
        env=dict(os.environ, **{name: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_cpu_list_is_one_line_and_exit_2():
    out = _llm_jax_help_with(xla_cpu.CPUS_ENV, "9999")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: LLM_JAX_CPUS='9999' is not a usable CPU list")
    assert "Traceback" not in out.stderr


def test_a_bad_reuse_memory_value_is_one_line_and_exit_2():
    out = _llm_jax_help_with(xla_cpu.REUSE_MEMORY_ENV, "yes")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: LLM_JAX_REUSE_MEMORY='yes': use 0 to give freed memory back to the system, "
        "1 to reuse it, auto or unset to reuse it and serve a step whose temporaries pass "
        "64 MB from one heap, one-arena to serve every step from one heap"
    )


def test_reuse_freed_memory_stops_refaulting_a_freed_block():
    # XLA:CPU allocates each step's temporaries anew (malloc, no huge pages), on the
    # calling thread or its own: a block freed and allocated again must come back without
    # page faults; glibc returns blocks over 32 MB to the kernel at free, so each reuse
    # faulted every 4 KB page in again. In a thread's arena a block that needs a second
    # 64 MB heap must keep it: glibc unmaps a heap that a free leaves empty. A thread's
    # block over 64 MB is mapped afresh unless every thread shares the main heap: always
    # with one-arena, and by default (auto) once a step's temporaries are known to need it.
    code = """
import ctypes, ctypes.util, resource, sys, threading
from llm_jax import config as config_lib
from llm_jax import xla_cpu  # `import llm_jax` calls it here (a CPU) unless the env says 0
assert xla_cpu.reuse_freed_memory() == (sys.argv[1] != "default")
config = config_lib.default_config()  # 2 x 64, seq 128, batch 16: ~32 MB
if sys.argv[2] == "large":
    config.model.update(d_model=96, d_ff=384, n_heads=6)
    config.data.seq_len, config.train.batch_size = 256, 32  # ~340 MB
print(xla_cpu.one_arena_for_step(config))
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def faults_of_a_fresh_block(size=64 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def twice(size):
    faults_of_a_fresh_block(size)
    return faults_of_a_fresh_block(size)
def in_a_second_heap():
    kept = libc.malloc(40 << 20)
    ctypes.memset(kept, 1, 40 << 20)
    counts.append(twice(40 << 20))
    counts.append(twice(80 << 20))
counts = [twice(64 << 20)]
thread = threading.Thread(target=in_a_second_heap)
thread.start()
thread.join()
print(*counts)
"""

    def faults(mode: str, step: str) -> list[int]:
        env = {k: v for k, v in os.environ.items() if k != xla_cpu.REUSE_MEMORY_ENV}
        if mode != "unset":
            env[xla_cpu.REUSE_MEMORY_ENV] = {"default": "0", "reuse": "1"}.get(mode, mode)
        run = subprocess.run(
            [sys.executable, "-c", code, mode, step], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        capped, *counts = run.stdout.split()
        assert capped == str(step == "large" and mode in ("unset", "auto"))
        return [int(n) for n in counts]

    runs = [("default", "large"), ("reuse", "large"), ("unset", "small"), ("auto", "large")]
    faults = {mode: faults(mode, step) for mode, step in runs + [("one-arena", "small")]}
    assert min(faults["default"]) > 10_000  # 40-80 MB in 4 KB pages, every time
    for mode in ("reuse", "unset"):  # a thread's heap each
        assert max(faults[mode][:2]) < 1_000
        assert faults[mode][2] > 10_000  # over a thread's heap size
    for mode in ("auto", "one-arena"):  # one heap
        assert max(faults[mode]) < 1_000


@pytest.mark.parametrize(
    "platforms, expected", [("cpu", True), ("cpu,cuda", True), ("cuda", False), ("tpu", False)]
)
def test_jax_runs_on_cpu_follows_jax_platforms(monkeypatch, platforms, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert xla_cpu.jax_runs_on_cpu() is expected
