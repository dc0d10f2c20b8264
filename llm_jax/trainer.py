"""The training loop and its owner: `train_and_evaluate(config, workdir)`.

A `Trainer` holds one run's collaborators (the `TrainSetup`, the data iterator, the
checkpointer, the metrics writer and the progress bar) and the train state; its
methods are the loop's steps: `step`, `log`, `evaluate`, `save`, driven by `run`.

`train_and_evaluate` takes the workdir's lease (`llm_jax.lease`) before anything is
written there, so a second trainer on the same workdir fails instead of interleaving.
The per-step metrics not yet logged travel in each checkpoint's metadata, so a resumed
run logs exactly the rows an uninterrupted run would, whatever `log_every` is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from llm_jax import checkpoint as ckpt_lib
from llm_jax import chips, finetune, storage, xla_cpu
from llm_jax import config as config_lib
from llm_jax import lease as lease_lib
from llm_jax import metrics as metrics_lib
from llm_jax import sharding as sharding_lib
from llm_jax import tasks as tasks_lib
from llm_jax import train as train_lib
from llm_jax import workdir as workdir_lib
from llm_jax.config import ConfigError
from llm_jax.errors import UserError


class TrainError(UserError, RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the message names the fix."""


def enable_compilation_cache(config: ml_collections.ConfigDict) -> str:
    """Turn on JAX's persistent compilation cache; returns its directory."""
    from llm_jax.data import cache_root

    path = config.train.compilation_cache_dir or str(
        cache_root(config.data) / "jax_compilation_cache"
    )
    jax.config.update("jax_compilation_cache_dir", path)
    # Every program, however quick to compile: a small model's train step compiles in under
    # a second on an idle machine, and every trial of a sweep would otherwise compile it,
    # its eval step and its checkpoint fingerprints again.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


log = logging.getLogger(__name__)

PHASES_FILE = "phases.json"  # per attempt: wall and CPU seconds per phase (tools/profile_sweep.py)


def _process_age() -> float | None:
    """Wall seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:  # field 22: start time, clock ticks after boot
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:  # (not /proc/stat's btime: whole seconds)
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its finished children (the data
    pipeline's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class PhaseClock:
    """Wall and CPU seconds of a run, summed per phase: `lap(phase)` charges the time
    since the previous lap to `phase`, so the phases add up to the run's whole time.

    CPU counts every thread, so on a busy machine it is the steadier figure. `startup` is
    what preceded the clock: since the process started (or was forked from the sweep
    runner: interpreter, imports, config), since `start_run`, or since the last lap of an
    earlier clock in this process. The laps of all clocks in a process share one timeline,
    so the trials of a pack (one clock each, laps interleaved) never count the same second
    twice.
    """

    _last: tuple[float, float] | None = None  # the process's latest lap (wall, CPU)

    def __init__(self):
        self.totals: dict[str, list[float]] = {}
        if PhaseClock._last is None:  # the process's first clock
            PhaseClock._last = (time.perf_counter(), _cpu_seconds())
            self.totals["startup"] = [_process_age() or 0.0, PhaseClock._last[1]]
        else:
            self.lap("startup")

    @classmethod
    def start_run(cls) -> None:
        """A new run starts in this process now (a sweep worker's next trial): its clock's
        `startup` counts from here, not from the previous run's last lap."""
        cls._last = (time.perf_counter(), _cpu_seconds())

    def lap(self, phase: str) -> None:
        """Charge the wall and CPU time since the process's previous lap to `phase`."""
        now, last = (time.perf_counter(), _cpu_seconds()), PhaseClock._last
        total = self.totals.setdefault(phase, [0.0, 0.0])
        total[0] += now[0] - last[0]
        total[1] += now[1] - last[1]
        PhaseClock._last = now

    def summary(self) -> str:
        """One line for train.log: `phases (wall/CPU s): startup 4.1/3.9, data ...`."""
        parts = [f"{k} {w:.1f}/{c:.1f}" for k, (w, c) in self.totals.items()]
        return "phases (wall/CPU s): " + ", ".join(parts)

    def save(self, workdir: str) -> None:
        """Append this attempt's totals to workdir/phases.json."""
        path = storage.join(workdir, PHASES_FILE)
        try:
            attempts = json.loads(storage.read_text(path)) if storage.exists(path) else []
            if not isinstance(attempts, list):
                raise ValueError("not a list")
        except ValueError as e:  # not ours to overwrite: moved aside, a new list started
            storage.move(path, path + ".unreadable")
            log.warning("%s was unreadable (%s): kept as %s.unreadable", path, e, PHASES_FILE)
            attempts = []
        attempts.append({k: {"wall": w, "cpu": c} for k, (w, c) in self.totals.items()})
        storage.write_json(path, attempts)


def _make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    try:
        mesh = sharding_lib.make_mesh(config.mesh)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from e
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    sizes = {"train.batch_size": config.train.batch_size}
    sizes["data.val_batch_size"] = config.data.val_batch_size
    for key, size in sizes.items():
        if size % data_parallel:
            raise ConfigError(
                f"config.{key}={size} is not divisible by the data-parallel size "
                f"{data_parallel} (mesh data x fsdp); use a multiple of {data_parallel}"
            )
    return mesh


@dataclasses.dataclass
class _Window:
    """Host-side copies of the per-step metrics since the last logged row."""

    rows: list[dict[str, float]] = dataclasses.field(default_factory=list)
    pending: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)
    start_step: int = 0
    start_time: float = 0.0

    def fetch(self, first_step: int) -> None:
        """Copy pending device metrics to the host; raise TrainError on NaN/Inf."""
        fetched = jax.device_get(self.pending)
        self.pending = []
        for i, row in enumerate(fetched):
            bad = [
                k
                for k in ("train/loss", "grad_norm", "param_norm")
                if not math.isfinite(float(row[k]))
            ]
            if bad:
                step = first_step - len(fetched) + i + 1
                raise TrainError(
                    f"{bad[0]} became {float(row[bad[0]])} at step {step}: training diverged "
                    f"(lr there {float(row['lr']):.3g}). Lower config.train.lr, lengthen "
                    "warmup_steps or set grad_clip. Checkpoints written so far predate the "
                    "divergence and are intact"
                )
            self.rows.append({k: float(v) for k, v in row.items()})

    def restart_clock(self, step: int) -> None:
        """Measure throughput from here (after compilation, evaluation, checkpointing)."""
        self.start_step, self.start_time = step, time.perf_counter()


class Trainer:
    """One run in one workdir: restores or initialises its state, then trains it.

    Use as a context manager (it closes the checkpointer, writer and progress bar).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        guard: ckpt_lib.PreemptionGuard | None = None,
        lease: lease_lib.Lease | None = None,
    ):
        self.clock = PhaseClock()
        from llm_jax import data as data_lib  # heavy (tokenizer training)
        from llm_jax import flops as flops_lib
        from llm_jax import mixture as mixture_lib

        config = tasks_lib.resolve_config(config)  # the init source's model, the task's labels
        self.config, self.workdir = config, workdir
        self.guard = guard or ckpt_lib.PreemptionGuard()
        self.lease = lease
        self.started = time.time()
        self.primary = jax.process_index() == 0
        self.setup = train_lib.make_train(config, _make_mesh(config))
        replicated = jax.sharding.NamedSharding(self.setup.mesh, jax.sharding.PartitionSpec())
        self.schedule_args = jax.device_put(self.setup.schedule_args, replicated)
        self.clock.lap("setup")
        workdir_lib.check_workdir(workdir)
        storage.makedirs(workdir)
        mixture = config.data.sources is not None
        self.prepared = (mixture_lib.prepare if mixture else data_lib.prepare)(config)
        # Val sets and their weights in the overall val/loss: one unnamed set, or each source's.
        self.sources = self.prepared.sources if mixture else {"": self.prepared}
        self.weights = self.prepared.weights if mixture else {"": 1.0}
        if self.prepared.tokenizer.vocab_size > config.model.vocab_size:
            raise ConfigError(
                f"the tokenizer has {self.prepared.tokenizer.vocab_size} tokens but "
                f"config.model.vocab_size={config.model.vocab_size}; raise model.vocab_size"
            )
        t, seq_len = config.train, config.data.seq_len
        self.tokens_per_step = t.batch_size * seq_len
        self.flops_per_token = flops_lib.flops_per_token(config.model, seq_len).detailed
        peak = chips.peak_flops(jax.devices()[0].device_kind)
        self.peak_total = peak * jax.device_count() if peak else None
        self.checkpointer = ckpt_lib.Checkpointer(
            os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR),
            config.checkpoint.every,
            config.checkpoint.keep,
            config.checkpoint.async_save,
            keep_every=config.checkpoint.keep_every,
        )
        rows = dict(
            seq_len=seq_len,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            segment_ids=config.data.segment_ids,
        )
        self.iterator = (
            mixture_lib.MixtureIterator(
                self.prepared.sources, self.prepared.weights, t.batch_size, seed=t.seed, **rows
            )
            if mixture
            else data_lib.BatchIterator(self.prepared, t.batch_size, seed=t.seed, **rows)
        )
        self.task = tasks_lib.make_data(config, self.prepared)  # None for lm
        if self.task is not None:
            self.iterator = self.task.iterator
        self.batches = data_lib.DeviceBatches(self.iterator, self.setup.batch_sharding)
        val_size, num_val = config.data.val_batch_size or t.batch_size, config.data.num_val_batches
        local_val_sets = (
            {"": self.task.val_batches}
            if self.task is not None
            else {
                name: data_lib.val_batches(prepared, val_size, num_batches=num_val, **rows)
                for name, prepared in self.sources.items()
            }
        )
        self.clock.lap("data")
        with self.setup.context():
            self.state = self._restore_or_init()
            self.val_sets = {
                name: [data_lib.to_global(b, self.setup.batch_sharding) for b in batches]
                for name, batches in local_val_sets.items()
            }
        if self.primary:
            storage.write_json(storage.join(workdir, workdir_lib.CONFIG_FILE), config.to_dict())
            workdir_lib.save_run_tokenizer(workdir, self.prepared.tokenizer)
        self.clock.lap("init")
        self.step_count = int(jax.device_get(self.state["step"]))
        self.start_step = self.step_count
        self.writer = metrics_lib.MetricsWriter(workdir, self.primary, self.step_count, config)
        self.bar = metrics_lib.ProgressBar(
            self.setup.total_steps, enabled=self.primary, tokens_per_step=self.tokens_per_step
        )
        self.window.rows = self._saved_window
        self.result: dict[str, Any] = {"preempted": False}
        if self.restored_from is not None:
            self.say(
                f"resumed from step {self.step_count} of {self.setup.total_steps} "
                f"(checkpoint {self.restored_from})"
            )

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the checkpoint writes, close the files; record the phases' times."""
        self.checkpointer.close()
        self.clock.lap("checkpoint")
        self.writer.close()
        self.clock.lap("log")
        self.say(self.clock.summary())
        self.bar.close()
        if self.primary:
            self.clock.save(self.workdir)

    def _restore_or_init(self) -> dict:
        self.window, self._saved_window, self.restored_from = _Window(), [], None
        restored = self.checkpointer.restore_latest(
            self.setup.abstract_state, self.config.model.to_dict()
        )
        directory = self.checkpointer.directory
        if restored is None and self.config.init.state:  # a branch's first start
            restored = finetune.branch_point(self.config, self.setup.abstract_state)
            directory = os.path.join(self.config.init.workdir, workdir_lib.CHECKPOINTS_DIR)
        if restored is None:
            return finetune.initial_state(self.config, self.setup)
        latest, state, meta = restored
        self.restored_from = os.path.join(directory, str(latest))
        self._saved_window = meta.get("window", [])
        self._restore_data_position(meta, self.restored_from)
        return state

    def _restore_data_position(self, meta: dict, where: str) -> None:
        """Continue the iterator from a checkpoint's global data position (any host count)."""
        batch_size = meta.get("batch_size", self.config.train.batch_size)
        if batch_size != self.config.train.batch_size:
            raise ckpt_lib.CheckpointError(
                f"the checkpoint {where} was written with train.batch_size={batch_size}, this "
                f"run has {self.config.train.batch_size}; resume with "
                f"--config.train.batch_size={batch_size}, or use a new --workdir"
            )
        saved = meta["data"]
        if isinstance(saved, list):  # older checkpoints: one copy per host, all equal
            if not saved:  # an imported model (llm-jax import-hf): no data read yet
                return
            saved = saved[0]
        try:
            self.iterator.set_state(saved)
        except KeyError as e:
            raise ckpt_lib.CheckpointError(
                f"the data position in {where} lacks {e} (written with another data config: "
                "data.sources or task.name changed?); resume with the saved run's data config"
            ) from e

    def say(self, text: str) -> None:
        """A status line from the primary host (above the progress bar)."""
        if self.primary:
            self.bar.message(text)

    def position(self) -> dict[str, Any]:
        """Where the run stands: step, tokens, FLOPs and epochs seen."""
        s = self.step_count
        return {
            "step": s,
            "tokens": s * self.tokens_per_step,
            "flops": s * self.tokens_per_step * self.flops_per_token,
            "epochs": self.batches.epoch,
        }

    def step(self) -> None:
        """One optimizer step; its metrics stay on the device until `log`."""
        batch = self.batches.next(left=self.setup.total_steps - self.step_count)
        self.state, metrics = self.setup.train_step(self.state, batch, self.schedule_args)
        self.step_count += 1
        self.window.pending.append(metrics)

    def log(self) -> None:
        """Write the mean of the metrics since the last row to metrics.jsonl and the bar."""
        w = self.window
        if not w.rows:
            return
        elapsed = time.perf_counter() - w.start_time
        tokens_per_s = (
            (self.step_count - w.start_step) * self.tokens_per_step / elapsed
            if self.step_count > w.start_step
            else None
        )
        row = {k: float(np.mean([r[k] for r in w.rows])) for k in w.rows[0]}
        row.update(
            lr=w.rows[-1]["lr"],
            param_norm=w.rows[-1]["param_norm"],
            tokens_per_s=tokens_per_s,
            mfu=(
                tokens_per_s * self.flops_per_token / self.peak_total
                if self.peak_total and tokens_per_s
                else None
            ),
        )
        self.writer.write({**self.position(), **row})
        self.bar.update(self.step_count, row["train/loss"], tokens_per_s)
        self.result.update(row)
        w.rows = []
        w.restart_clock(self.step_count)

    def evaluate(self) -> dict[str, float]:
        """Mean token loss over the fixed val batches, and bits per byte; logged.

        A mixture also logs each source's (`val/<name>/loss`, `val/<name>/bpb`); its
        val/loss is their mean weighted as the sources are sampled."""
        if self.task is not None:
            return self._evaluate_task()
        losses = {name: self._val_loss(batches) for name, batches in self.val_sets.items()}
        loss = sum(weight * losses[name] for name, weight in self.weights.items())
        scores = {
            "val/loss": loss,
            "val/bpb": loss / math.log(2) / self.prepared.val_bytes_per_token,
        }
        for name, source_loss in losses.items():
            if name:  # a mixture's source
                bytes_per_token = self.sources[name].val_bytes_per_token
                scores[f"val/{name}/loss"] = source_loss
                scores[f"val/{name}/bpb"] = source_loss / math.log(2) / bytes_per_token
        if not math.isfinite(loss):
            raise TrainError(
                f"val/loss is {loss} at step {self.step_count}: the model or the val data is "
                "broken (a diverged run, or a corrupt val split); lower config.train.lr, or "
                "delete the token cache under config.data.cache_dir to rebuild it"
            )
        self.writer.write({**self.position(), **scores})
        self.say(
            f"step {self.step_count}: val/loss {scores['val/loss']:.4f}  "
            f"val/bpb {scores['val/bpb']:.4f}"
        )
        self.result.update(scores)
        self.window.restart_clock(self.step_count)
        return scores

    def _val_loss(self, batches: list[dict[str, jax.Array]]) -> float:
        """Mean token loss over `batches`."""
        sums = [self.setup.eval_step(self.state["params"], b) for b in batches]
        loss_sum, weight = (float(sum(float(s[i]) for s in sums)) for i in (0, 1))
        return loss_sum / max(weight, 1.0)

    def _evaluate_task(self) -> dict[str, float]:
        """A non-lm task's val metrics (llm_jax/tasks/), logged as val/loss is."""
        params = self.state["params"]
        outputs = [jax.device_get(self.setup.eval_step(params, b)) for b in self.val_sets[""]]
        final = self.step_count >= self.setup.total_steps
        scores = self.task.evaluate(outputs, self.workdir if self.primary else None, final)
        self.writer.write({**self.position(), **scores})
        self.say(f"step {self.step_count}: " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        self.result.update(scores)
        self.window.restart_clock(self.step_count)
        return scores

    def evaluate_tasks(self) -> dict[str, float]:
        """The end-of-training evaluation on config.eval.tasks (eval.json, eval/... columns)."""
        from llm_jax import evaluate as evaluate_lib  # only runs that name tasks use it

        params = self.state["params"]
        return evaluate_lib.run_tasks(
            self.config, self.workdir, params, self.setup.mesh, self.step_count
        )

    def save(self, force: bool) -> None:
        """Checkpoint the state and the global data position (on the interval, or now)."""
        s = self.step_count
        positions = ckpt_lib.gather_host_states(self.batches.get_state())
        if any(p != positions[0] for p in positions):
            raise RuntimeError(f"hosts disagree on the global data position: {positions}")
        meta = {
            "step": s,
            "model": self.config.model.to_dict(),
            "data": positions[0],  # the same on every host: resumable on any host count
            "batch_size": self.config.train.batch_size,
            "window": self.window.rows,  # rows not logged yet: a resumed run logs them
        }
        if self.checkpointer.save(s, self.state, meta, force=force):
            self.say(f"checkpoint saved at step {s}")
        self.writer.flush()  # gs://: the rows up to a checkpoint are uploaded with it
        self.window.restart_clock(s)

    def run(self) -> dict[str, Any]:
        """Train to the last step (or a stop signal); returns the final metrics."""
        with self.setup.context():
            if ckpt_lib.any_host(self.guard.requested is not None):
                self._stopped(saved=False)
            else:
                self._loop()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """After the loop: the end-of-training task evaluation and the closing line."""
        self.result["step"] = self.step_count
        if not self.result["preempted"] and self.step_count >= self.setup.total_steps:
            self.result.update(self.evaluate_tasks())
        if not self.result["preempted"] and self.step_count > self.start_step:
            self.say(self.summary())
        self.clock.lap("finish")
        return self.result

    def _stop_requested(self, step: int, sync: bool) -> bool:
        """True on every host when any host was signalled (or the runtime's preemption
        notice reached this step's sync point); `sync`: a step where hosts compare flags.

        Raises TrainError on every host if the workdir's lease was taken over."""
        if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
            return True
        if not sync:
            return False
        if ckpt_lib.any_host(self.lease is not None and self.lease.lost):
            raise TrainError(
                f"another process took over the lease of {self.workdir} (this one was judged "
                "dead); stop the other process or use another --workdir"
            )
        return ckpt_lib.any_host(self.guard.requested is not None)

    def _stopped(self, saved: bool) -> None:
        self.result["preempted"] = True
        what = (
            f"at step {self.step_count}; checkpoint saved"
            if saved
            else f"before the first step (at step {self.step_count}); nothing to save"
        )
        self.say(
            f"stopped by {self.guard.requested or 'a signal on another host'} {what}. "
            "Rerun the same command to resume"
        )

    def summary(self) -> str:
        """The closing line: final losses, tokens, wall time and where the files are."""
        r, train_bpt = self.result, self.prepared.train_bytes_per_token
        parts = [f"finished step {self.step_count} of {self.setup.total_steps}:"]
        if "train/loss" in r and self.task is None:  # a task's loss is not per text byte
            bpb = r["train/loss"] / math.log(2) / train_bpt
            parts.append(f"train/loss {r['train/loss']:.4f} (bpb {bpb:.4f})")
        if "val/loss" in r:
            parts.append(f"val/loss {r['val/loss']:.4f} (bpb {r['val/bpb']:.4f})")
        tokens = self.position()["tokens"]
        wall = metrics_lib.duration(time.time() - self.started)
        parts.append(f"{tokens:,} tokens, wall time {wall}.")
        parts.append(
            f"Files in {self.workdir}: metrics.jsonl, checkpoints/, tensorboard/, config.json"
        )
        return " ".join(parts)

    def _loop(self) -> None:
        t, total = self.config.train, self.setup.total_steps
        if self.step_count >= total:
            self.say(
                f"already trained for {self.step_count} steps (train steps = {total}); "
                "nothing to do"
            )
        self.window.restart_clock(self.step_count)
        first = True
        while self.step_count < total:
            self.step()
            step = self.step_count
            if first:  # don't count compilation in tokens/s
                jax.block_until_ready(self.window.pending[-1])
                self.window.restart_clock(step)
                self.clock.lap("compile")
                first = False
            is_log = step % t.log_every == 0 or step == total
            is_ckpt = step % self.config.checkpoint.every == 0 or step == total
            stop = self._stop_requested(step, is_log or is_ckpt or jax.process_count() == 1)
            if is_log or is_ckpt or stop:
                self.window.fetch(step)  # NaN check before anything is saved
            self.clock.lap("steps")
            if is_log:
                self.log()
                self.clock.lap("log")
            if step % t.eval_every == 0 or step == total:
                self.evaluate()  # the first evaluation compiles the eval step
                self.clock.lap("eval" if "eval_compile" in self.clock.totals else "eval_compile")
            if is_ckpt or stop:
                self.save(force=stop or step == total)
                self.clock.lap("checkpoint")
            if stop:
                self.checkpointer.wait()
                self._stopped(saved=True)
                self.clock.lap("checkpoint")
                return


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    guard: ckpt_lib.PreemptionGuard | None = None,
) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its latest good checkpoint).

    Returns a dict with the last logged train metrics, the last evaluation, `step` and
    `preempted` (True when stopped by a signal; a checkpoint is saved if a step was
    taken). `guard`: a `PreemptionGuard` installed earlier (the CLI installs one at
    process start); by default one is installed here. Raises `lease.LeaseHeld` when
    another live process trains in `workdir`.
    """
    config = config_lib.validate(ml_collections.ConfigDict(config.to_dict()))
    xla_cpu.one_arena_for_step(config)  # before JAX's backend starts
    with contextlib.ExitStack() as stack:
        if guard is None:
            guard = stack.enter_context(ckpt_lib.PreemptionGuard())
        sharding_lib.initialize_distributed(config.mesh)
        lease = stack.enter_context(_workdir_lease(workdir))
        enable_compilation_cache(config)
        trainer = stack.enter_context(Trainer(config, workdir, guard, lease))
        return trainer.run()


@contextlib.contextmanager
def _workdir_lease(workdir: str):
    """The primary host holds the workdir's lease; every host fails if it is taken."""
    workdir_lib.check_workdir(workdir)
    held, error = None, None
    if jax.process_index() == 0:
        try:
            held = lease_lib.Lease(workdir, "workdir").acquire()
        except lease_lib.LeaseHeld as e:
            error = e
    if ckpt_lib.any_host(error is not None):
        raise error or lease_lib.LeaseHeld(f"{workdir} is in use by another process")
    try:
        yield held
    finally:
        if held is not None:
            held.release()
