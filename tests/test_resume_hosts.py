"""A run resumes on another number of hosts (real processes on loopback): 2 -> 1 -> 2.

The data position saved in a checkpoint is global, so the resumed run must see exactly
the global batches of an uninterrupted run: its per-step losses (which differ on any
other batch) and its saved data positions must match.
"""

import json
import os
import subprocess

import pytest
from tiny_run import free_port, metric_rows, subprocess_env, tiny_command, write_corpus

TIMEOUT_S = 300
# A constant LR: raising train.steps between phases changes nothing but where they stop.
EXTRA = dict(
    mesh__data=2,
    mesh__fsdp=2,
    train__schedule="constant",
    train__log_every=1,
    train__eval_every=4,
    checkpoint__every=4,
    checkpoint__keep=5,
    checkpoint__async_save=False,
)


def _start(workdir, corpus, processes: int, steps: int) -> list[subprocess.Popen]:
    """`llm-jax train` to `steps` on 4 CPU devices in all, over 1 or 2 processes."""
    glob, cache = corpus
    extra = dict(EXTRA, train__steps=steps)
    if processes > 1:
        extra.update(
            mesh__distributed="on",
            mesh__coordinator_address=f"127.0.0.1:{free_port()}",
            mesh__num_processes=processes,
        )
    return [
        subprocess.Popen(
            tiny_command(
                workdir, glob, cache, **extra, **({"mesh__process_id": i} if processes > 1 else {})
            ),
            env=subprocess_env(4 // processes),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        for i in range(processes)
    ]


def _finish(procs: list[subprocess.Popen]) -> str:
    """Wait for the processes (killed after TIMEOUT_S); returns the primary's stderr."""
    errors = []
    try:
        for proc in procs:
            errors.append(proc.communicate(timeout=TIMEOUT_S)[1])
            assert proc.returncode == 0, errors[-1][-3000:]
        return errors[0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _data_position(workdir, step: int) -> dict:
    with open(os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")) as f:
        return json.load(f)["data"]


@pytest.mark.slow  # five trainer processes, one after another in three phases
def test_resume_on_another_host_count_sees_the_same_batches(tmp_path):
    corpus = write_corpus(tmp_path / "corpus"), tmp_path / "cache"
    whole, split = tmp_path / "whole", tmp_path / "split"
    uninterrupted = _start(whole, corpus, 1, 12)
    _finish(_start(split, corpus, 2, 4))  # 2 hosts to step 4,
    assert "resumed from step 4 " in _finish(_start(split, corpus, 1, 8))  # 1 host to 8,
    assert "resumed from step 8 " in _finish(_start(split, corpus, 2, 12))  # 2 hosts to 12
    _finish(uninterrupted)
    one, resumed = metric_rows(whole), metric_rows(split)
    assert [r["step"] for r in resumed] == [r["step"] for r in one]
    assert [r["step"] for r in one if "train/loss" in r] == list(range(1, 13))
    for a, b in zip(one, resumed, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    for step in (4, 8, 12):
        assert _data_position(split, step) == _data_position(whole, step)
    assert _data_position(whole, 12)["position"] == 12 * 8
