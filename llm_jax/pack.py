"""Many small models in one program: K trials of one shape trained by one jitted step.

Trials whose configs differ only in `PACKABLE` fields (learning rate, min_lr_ratio, seed,
init scale) train together: their states are stacked on a leading model axis and one
jitted step (`vmap` over that axis; `lax.map` on CPU, see `make_packed_step`) steps all
K at once, each on its own batch (every trial reads its data in its own seed's order).
Each trial keeps its own `Trainer` for the bookkeeping (iterator, checkpointer, metrics
writer, window, progress lines), so its workdir is what `llm-jax train` would have
written; trial k's state is sliced out of the stack only to evaluate or checkpoint it.
`PackedTrainer` is a `Trainer` and runs the same loop.

The step takes each model's schedule values (`train.schedule_args`: rates, warmup, decay
start) as per-model arrays, exactly as the unpacked step takes one model's, so a packed
trial runs the arithmetic of the same trial alone.
A trial that diverges is reported and dropped from logging, evaluation and checkpoints;
the others go on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax import sharding as sharding_lib
from llm_jax import train as train_lib
from llm_jax import trainer as trainer_lib
from llm_jax import xla_cpu
from llm_jax.config import ConfigError
from llm_jax.trainer import Trainer, TrainError

# The step's inputs (seed and init scale: the initial state; the rest: schedule values).
PACKABLE = (
    "train.lr",
    "train.min_lr_ratio",
    "train.warmup_steps",
    "train.decay_fraction",
    "train.seed",
    "model.init_std",
)


def pack_key(config: ml_collections.ConfigDict) -> str:
    """The config without its `PACKABLE` fields, as text: equal keys can share a pack."""
    tree = config.to_dict()
    for key in PACKABLE:
        section, name = key.split(".")
        tree[section].pop(name, None)
    return json.dumps(tree, sort_keys=True, default=str)


def stacked_sharding(sharding: NamedSharding) -> NamedSharding:
    """The sharding of K such arrays stacked on a new, unsharded leading axis."""
    return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))


def hyperparameters(
    configs: Sequence[ml_collections.ConfigDict], total_steps: int
) -> dict[str, np.ndarray]:
    """The schedule values of K configs, as float32 arrays of shape [K]."""
    rows = [train_lib.schedule_args(c, total_steps) for c in configs]
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def make_packed_step(setup: train_lib.TrainSetup, vectorized: bool | None = None):
    """jit of the K-model step: (state [K, ...], batch [K, B, ...], hyperparameters [K]) ->
    (state, metrics [K]); the state is donated. Call under `setup.context()`.

    `vectorized` (default: on any backend but CPU): `vmap` over the model axis, else
    `lax.map` (the K unbatched steps one after another in one program). XLA:CPU runs
    batched matmuls with a transposed operand (the tied output projection and most of
    the backward pass) 10-100x slower than the same matmuls one by one, so on CPU a pack
    saves the per-process overheads (import, data, compile) but not the step's time."""
    config = setup.config
    if vectorized is None:
        vectorized = jax.default_backend() != "cpu"

    one_model = train_lib.train_step_fn(config, setup.model)

    def packed(state: dict, batch: dict, values: dict) -> tuple[dict, dict]:
        return jax.lax.map(lambda args: one_model(*args), (state, batch, values))

    state_sh = jax.tree.map(stacked_sharding, setup.state_shardings)
    replicated = NamedSharding(setup.mesh, PartitionSpec())
    return jax.jit(
        jax.vmap(one_model) if vectorized else packed,
        in_shardings=(state_sh, stacked_sharding(setup.batch_sharding), replicated),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )


def stack_states(setup: train_lib.TrainSetup, states: Sequence[Any]) -> Any:
    """K train states as one, stacked on a leading model axis (each leaf's sharding with
    an unsharded axis in front)."""
    shardings = jax.tree.map(stacked_sharding, setup.state_shardings)
    stack = jax.jit(
        lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees), out_shardings=shardings
    )
    return stack(*states)


class _Prefixed(io.TextIOBase):
    """A text stream that writes each line to `stream` behind `prefix` (never a tty, so a
    progress bar prints plain lines)."""

    def __init__(self, prefix: str, stream: io.TextIOBase):
        self.prefix, self.stream, self.partial = prefix, stream, ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.stream.write(f"{self.prefix}{line}\n")
        self.stream.flush()
        return len(text)

    def isatty(self) -> bool:
        return False


class _Members:
    """What the loop asks of 'the' checkpointer, lease and window, for all K trials."""

    def __init__(self, packed: PackedTrainer):
        self.packed = packed
        self.pending: list[dict[str, jax.Array]] = []  # stacked metrics, on the device

    @property
    def lost(self) -> bool:
        """Whether another process took over any trial's workdir lease."""
        return any(m.lease is not None and m.lease.lost for m in self.packed.members)

    def wait(self) -> None:
        """Wait for every trial's checkpoint writes."""
        for m in self.packed.members:
            m.checkpointer.wait()

    def restart_clock(self, step: int) -> None:
        """Every trial measures throughput from here."""
        for m in self.packed.members:
            m.window.restart_clock(step)

    def fetch(self, first_step: int) -> None:
        """Hand each live trial its rows of the pending metrics; a trial whose loss is
        NaN/Inf is dropped (TrainError once none is left)."""
        fetched = jax.device_get(self.pending)
        self.pending = []
        for k, member in self.packed.live():
            member.window.pending = [{n: v[k] for n, v in row.items()} for row in fetched]
            try:
                member.window.fetch(first_step)
            except TrainError as e:
                self.packed.drop(k, str(e))
        if not list(self.packed.live()):
            raise TrainError(
                "every trial of the pack diverged (see each trial's lines above); "
                "lower config.train.lr, lengthen warmup_steps or set grad_clip"
            )


class PackedTrainer(Trainer):
    """K trials (`Trainer`s built on their own workdirs, at one step) trained as one
    stacked state by the vmapped step; `run` returns {'preempted', 'members': [results],
    'failed': {workdir: message}}. `close` closes the members."""

    def __init__(self, members: Sequence[Trainer], guard: ckpt_lib.PreemptionGuard):
        steps = {m.workdir: m.step_count for m in members}
        if len(set(steps.values())) > 1:
            raise TrainError(
                f"trials packed together must be at the same step, these are at {steps}; "
                "train them separately (llm-jax sweep --pack 1, or llm-jax train)"
            )
        first = members[0]
        self.members = list(members)
        self.config, self.setup, self.guard = first.config, first.setup, guard
        self.workdir = ", ".join(m.workdir for m in members)
        self.primary, self.started = first.primary, time.time()
        self.clock = first.clock  # the pack's loop is timed in its first trial's phases
        self.step_count = self.start_step = first.step_count
        self.result: dict[str, Any] = {"preempted": False}
        self.failed: dict[int, str] = {}
        # The loop's window, checkpointer and lease are all K trials'.
        self.window = self.checkpointer = self.lease = _Members(self)
        self.batch_sharding = stacked_sharding(first.setup.batch_sharding)
        self.hparams = jax.device_put(
            hyperparameters([m.config for m in members], self.setup.total_steps),
            NamedSharding(self.setup.mesh, PartitionSpec()),
        )
        with self.setup.context():
            self.train_step = make_packed_step(self.setup)
            self.state = stack_states(self.setup, [m.state for m in members])
        for m in members:
            m.state = None  # trial k's state is sliced out of the stack when needed
        self._take = jax.jit(
            lambda stacked, k: jax.tree.map(lambda x: x[k], stacked),
            out_shardings=self.setup.state_shardings,
        )

    def close(self) -> None:
        for m in self.members:
            m.close()

    def live(self) -> Iterator[tuple[int, Trainer]]:
        """(k, trial) of the trials not dropped."""
        return ((k, m) for k, m in enumerate(self.members) if k not in self.failed)

    def drop(self, k: int, message: str) -> None:
        """Stop logging, evaluating and saving trial k (it diverged)."""
        self.failed[k] = message
        self.members[k].say(f"error: {message}")

    @contextlib.contextmanager
    def _sliced(self, k: int):
        member = self.members[k]
        member.state = self._take(self.state, k)
        try:
            yield member
        finally:
            member.state = None

    def say(self, text: str) -> None:
        for _, m in self.live():
            m.say(text)

    def step(self) -> None:
        """One step of all K; each trial's batch comes from its own iterator."""
        from llm_jax import data as data_lib

        batches = [next(m.iterator) for m in self.members]
        batch = {name: np.stack([b[name] for b in batches]) for name in batches[0]}
        batch = data_lib.to_global(batch, self.batch_sharding)
        self.state, metrics = self.train_step(self.state, batch, self.hparams)
        self.step_count += 1
        for m in self.members:
            m.step_count += 1
        self.window.pending.append(metrics)

    def log(self) -> None:
        for _, m in self.live():
            m.log()

    def evaluate(self) -> None:
        for k, _ in self.live():
            with self._sliced(k) as member:
                member.evaluate()

    def save(self, force: bool) -> None:
        for k, _ in self.live():
            with self._sliced(k) as member:
                member.save(force)

    def finish(self) -> dict[str, Any]:
        """Each live trial's end of run (task evaluation, closing line)."""
        results = []
        for k, member in enumerate(self.members):
            if k in self.failed:
                results.append({"preempted": False, "error": self.failed[k]})
                continue
            member.result["preempted"] = self.result["preempted"]
            with self._sliced(k):
                results.append(member.finish())
        failed = {self.members[k].workdir: message for k, message in self.failed.items()}
        return dict(self.result, members=results, failed=failed)


def check_packable(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raise ConfigError unless the configs differ only in `PACKABLE` fields."""
    keys = [pack_key(c) for c in configs]
    for i, key in enumerate(keys[1:], 1):
        if key != keys[0]:
            a, b = json.loads(keys[0]), json.loads(key)
            diff = sorted(
                f"{section}.{name}"
                for section in a.keys() | b.keys()
                for name in a.get(section, {}).keys() | b.get(section, {}).keys()
                if a.get(section, {}).get(name) != b.get(section, {}).get(name)
            )
            raise ConfigError(
                f"trial {i + 1} differs from trial 1 in {', '.join(diff)}; only "
                f"{', '.join(PACKABLE)} may differ within a pack: train it separately"
            )


def train_packed(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    guard: ckpt_lib.PreemptionGuard | None = None,
) -> dict[str, Any]:
    """Train K packable configs, trial k in workdirs[k], as one program (resuming each
    from its checkpoints). Each trial's console lines are prefixed with its workdir's name.
    Returns `PackedTrainer.run`'s result."""
    configs = [config_lib.validate(ml_collections.ConfigDict(c.to_dict())) for c in configs]
    if len(configs) != len(workdirs) or len(set(workdirs)) != len(workdirs):
        raise ConfigError("a pack needs one distinct workdir per config")
    check_packable(configs)
    xla_cpu.one_arena_for_step(configs[0])  # before JAX's backend starts (CPU: models in turn)
    with contextlib.ExitStack() as stack:
        if guard is None:
            guard = stack.enter_context(ckpt_lib.PreemptionGuard())
        sharding_lib.initialize_distributed(configs[0].mesh)
        leases = [stack.enter_context(trainer_lib._workdir_lease(w)) for w in workdirs]
        trainer_lib.enable_compilation_cache(configs[0])
        members: list[Trainer] = []
        stack.callback(lambda: [m.close() for m in members])
        for config, workdir, lease in zip(configs, workdirs, leases, strict=True):
            name = os.path.basename(os.path.normpath(workdir))
            with contextlib.redirect_stderr(_Prefixed(f"[{name}] ", sys.stderr)):
                members.append(Trainer(config, workdir, guard, lease))
        return PackedTrainer(members, guard).run()
