"""Shared by the train/checkpoint/cli tests: a tiny model on a tiny generated corpus.

Not a test module: a corpus writer and config overrides that serve both in-process
runs (`tiny_config`) and `llm-jax train` subprocesses (`tiny_flags`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from llm_jax import config as config_lib
from llm_jax import metrics as metrics_lib
from llm_jax import storage
from llm_jax import train as train_lib

BASE_CONFIG = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", "base.py")
_WORDS = (
    "the king queen sword crown love night day death honour speak my lord good sir "
    "thou art hath doth none"
).split()


def write_corpus(folder) -> str:
    """Eight small text files of pseudo-English; returns their glob."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        with open(os.path.join(folder, f"doc{i}.txt"), "w") as f:
            f.write(" ".join(rng.choice(_WORDS, 2500)) + "\n")
    return os.path.join(str(folder), "*.txt")


def tiny_model(**overrides):
    """`config.model` of a 2-layer, d_model 32, 4-head model, vocab 100 (padded to 128)."""
    m = config_lib.default_config().model
    m.update(dict(vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32))
    m.update(overrides)
    return m


def init_params(model: nn.Module, tokens_BxL, seed: int = 0, **init_kwargs):
    """`model`'s random params (unboxed), its init compiled as the trainer compiles it."""
    options = train_lib.init_compiler_options(jax.devices()[0].platform)
    init = jax.jit(model.init, compiler_options=options)
    return nn.meta.unbox(init(jax.random.key(seed), tokens_BxL, **init_kwargs)["params"])


def tiny_train_config(d_model: int = 32, **train):
    """A whole config for in-memory steps: 2 layers, 2 heads, vocab 64, batch 8 x 16 tokens."""
    config = config_lib.default_config()
    config.model.update(
        d_model=d_model, n_layers=2, n_heads=2, vocab_size=64, vocab_multiple=64, max_seq_len=32
    )
    config.data.seq_len = 16
    config.train.batch_size = 8
    config.train.update(train)
    return config


def tiny_overrides(corpus_glob: str, cache_dir, **extra) -> dict:
    """Dotted config keys -> values for a model that compiles and steps in moments."""
    overrides = {
        "data.source": "files",
        "data.path": corpus_glob,
        "data.cache_dir": str(cache_dir),
        "data.val_fraction": 0.25,
        "data.seq_len": 16,
        "data.num_val_batches": 2,
        "model.vocab_size": 320,
        "model.vocab_multiple": 64,
        "model.d_model": 32,
        "model.n_heads": 2,
        "model.n_layers": 2,
        "model.max_seq_len": 32,
        "train.batch_size": 8,
        "train.steps": 6,
        "train.warmup_steps": 2,
        "train.log_every": 2,
        "train.eval_every": 3,
        "checkpoint.every": 3,
        # The session's compilation cache (tests/conftest.py), not one per data cache.
        "train.compilation_cache_dir": os.environ.get("LLM_JAX_TEST_XLA_CACHE", ""),
    }
    overrides.update({k.replace("__", "."): v for k, v in extra.items()})
    return overrides


def tiny_config(corpus_glob: str, cache_dir, **extra):
    """The tiny config as a ConfigDict (keyword keys use '__' for '.')."""
    config = config_lib.default_config()
    for key, value in tiny_overrides(corpus_glob, cache_dir, **extra).items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def tiny_flags(workdir, corpus_glob: str, cache_dir, **extra) -> list[str]:
    """`llm-jax train`'s arguments for the tiny config (flag overrides), without the program."""
    flags = [
        f"--config.{k}={v}" for k, v in tiny_overrides(corpus_glob, cache_dir, **extra).items()
    ]
    return ["train", f"--config={BASE_CONFIG}", *flags, f"--workdir={workdir}"]


def tiny_command(workdir, corpus_glob: str, cache_dir, **extra) -> list[str]:
    """`llm-jax train` (through this Python) with the tiny config as flag overrides."""
    return [
        sys.executable,
        "-m",
        "llm_jax.cli",
        *tiny_flags(workdir, corpus_glob, cache_dir, **extra),
    ]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a JAX coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(num_devices: int = 1) -> dict:
    """Environment for a CPU-only child process with `num_devices` devices (and the
    session's XLA settings, tests/conftest.py)."""
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices))


def metric_rows(workdir) -> list[dict]:
    """A workdir's metrics.jsonl rows (local or gs://) without the timing columns."""
    rows = metrics_lib.read_metrics(storage.join(str(workdir), "metrics.jsonl"))
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]


def sigterm_after_checkpoint(
    proc: subprocess.Popen, workdirs: list, step: int, timeout_s: float
) -> bytes:
    """Wait until every workdir has checkpoint `step`, SIGTERM `proc`; returns its stderr."""
    deadline = time.time() + timeout_s
    while not all((d / "checkpoints" / str(step)).exists() for d in workdirs):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=timeout_s)[1]
