"""Training: the train state, the jitted step, evaluation and the loop.

Two layers, so that tools can reuse the exact step the loop runs:

`make_train(config, mesh) -> TrainSetup` builds everything that can be built
without allocating a single array: the model, the optimizer and schedule, the
abstract train state (`jax.ShapeDtypeStruct`s carrying their NamedShardings, from
`jax.eval_shape`), the state and batch shardings, and the jitted functions

    setup.train_step(state, batch) -> (state, metrics)   # donates `state`
    setup.eval_step(params, batch) -> (loss_sum, weight_sum)
    setup.init_state(seed) -> state                      # created sharded, never whole

`llm-jax plan` lowers `setup.train_step` on `setup.abstract_state` and
`setup.abstract_batch` for a TPU topology; `train_and_evaluate` calls the same
functions with real arrays. Call them under `setup.context()` (the mesh and the
logical-axis rules), or the model's activation constraints are skipped.

The train state is a dict: `step` (int32), `params`, `opt_state` (optax), `rng`
(raw uint32 key data; dropout keys are folded from it with the step). A batch is a
dict of int32 [global_batch, seq_len] arrays: `inputs`, `targets` and, with
`data.segment_ids`, `segment_ids` (0 = padding: no loss there). The loss is the
token-mean cross-entropy (plus `z_loss * log(Z)^2` when set); gradient
accumulation sums micro-batch gradients of the *summed* loss and divides once by
the batch's token count, so m micro-batches give the gradient of the full batch.

`train_and_evaluate(config, workdir)` is the loop: restore the latest checkpoint
(params, optimizer, step, data position, rng) or initialise; train, fetching the
on-device metrics only every `log_every` steps; evaluate every `eval_every` steps
and at the end; checkpoint every `checkpoint.every` steps, at the end and on
SIGTERM/SIGINT. `restore_params(workdir)` gives a trained model's config and
params (for sampling).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from llm_jax import atomic, optim
from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax import metrics as metrics_lib
from llm_jax import sharding as sharding_lib
from llm_jax.config import ConfigError
from llm_jax.model import Transformer

TOKENIZER_FILE = "tokenizer.model"  # the run's SentencePiece model, copied into its workdir
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint saved, rerun the same command to resume


class TrainError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the message names the fix."""


# --- the step -----------------------------------------------------------------------------

@dataclasses.dataclass
class TrainSetup:
    """Everything needed to run (or compile) the train step; see the module docstring."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    model: Transformer
    optimizer: optax.GradientTransformation
    schedule: optim.Schedule
    total_steps: int
    abstract_state: Any
    state_shardings: Any
    batch_sharding: NamedSharding
    abstract_batch: dict[str, jax.ShapeDtypeStruct]
    train_step: Callable
    eval_step: Callable
    init_state: Callable

    def context(self) -> contextlib.AbstractContextManager:
        """The mesh and logical-axis rules the step is traced and run under."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(sharding_lib.LOGICAL_RULES))
        return stack


def _token_losses(model: Transformer, params, batch: dict, rng, deterministic: bool):
    """Per-token (cross-entropy, log Z) [B, L] and weights (0 on padding)."""
    logits_BxLxV = model.apply(
        {"params": params}, batch["inputs"], segment_ids_BxL=batch.get("segment_ids"),
        deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
    log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
    target_logit_BxL = jnp.take_along_axis(logits_BxLxV, batch["targets"][..., None], -1)[..., 0]
    weights_BxL = (batch["segment_ids"] > 0 if "segment_ids" in batch
                   else jnp.ones_like(batch["targets"], bool)).astype(jnp.float32)
    return log_z_BxL - target_logit_BxL, log_z_BxL, weights_BxL


def _split_microbatches(batch: dict, m: int) -> dict:
    # Row r goes to micro-batch r % m: each device's rows hold every micro-batch evenly,
    # so splitting a batch-sharded array needs no communication.
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1),
                        batch)


def _grads_and_sums(loss_and_grad, params, batch: dict, rng, m: int):
    """Gradient of the summed objective and summed CE, accumulated over m micro-batches."""
    if m == 1:
        return loss_and_grad(params, batch, rng)
    micro = _split_microbatches(batch, m)

    def body(carry, xs):
        grads_acc, ce_acc = carry
        mb, i = xs
        ce_sum, grads = loss_and_grad(params, mb, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads_acc, grads), ce_acc + ce_sum), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, ce_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)),
                                      (micro, jnp.arange(m)))
    return ce_sum, grads


def _train_step_fn(model: Transformer, optimizer, schedule, train_cfg, deterministic: bool):
    z_loss = float(train_cfg.z_loss)
    m = int(train_cfg.microbatches)

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        weights = (batch["segment_ids"] > 0 if "segment_ids" in batch
                   else jnp.ones_like(batch["targets"], bool))
        total_weight = jnp.maximum(weights.sum().astype(jnp.float32), 1.0)

        def objective(params, mb, key):
            ce_BxL, log_z_BxL, w_BxL = _token_losses(model, params, mb, key, deterministic)
            ce_sum = (ce_BxL * w_BxL).sum()
            loss = ce_sum + z_loss * (jnp.square(log_z_BxL) * w_BxL).sum()
            return loss / total_weight, ce_sum

        def loss_and_grad(params, mb, key):
            (_, ce_sum), grads = jax.value_and_grad(objective, has_aux=True)(params, mb, key)
            return ce_sum, grads

        ce_sum, grads = _grads_and_sums(loss_and_grad, state["params"], batch, rng, m)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "train/loss": ce_sum / total_weight,
            "lr": schedule(state["step"]),
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
        }
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def _eval_step_fn(model: Transformer):
    def eval_step(params, batch: dict) -> tuple[jax.Array, jax.Array]:
        ce_BxL, _, w_BxL = _token_losses(model, params, batch, None, deterministic=True)
        return (ce_BxL * w_BxL).sum(), w_BxL.sum()

    return eval_step


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _opt_state_shardings(abstract_opt_state, abstract_params, param_shardings, mesh):
    """Optimizer-state leaves that mirror a parameter (Adam's mu, nu) take its sharding.

    A leaf mirrors a parameter when its key path ends with the parameter's path and
    the shapes agree; everything else (step counts) is replicated.
    """
    table = {}
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                      jax.tree.leaves(param_shardings), strict=True):
        table[_path_key(path)] = (leaf.shape, sharding)
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        key = _path_key(path)
        for start in range(len(key)):
            shape, sharding = table.get(key[start:], (None, None))
            if shape == leaf.shape:
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def make_train(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> TrainSetup:
    """The jitted step and the abstract, sharded train state, without allocating arrays."""
    model = Transformer(config=config.model)
    total_steps = config_lib.train_steps(config)
    optimizer, schedule = optim.make_optimizer(config.train, total_steps)
    abstract_params, param_shardings = sharding_lib.abstract_params(config.model, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    init_tokens = jnp.zeros((1, 8), jnp.int32)

    def init_fn(seed):
        key = jax.random.key(seed)
        params = nn.meta.unbox(model.init(key, init_tokens)["params"])
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": optimizer.init(params),
                "rng": jax.random.key_data(jax.random.fold_in(key, 1))}

    shapes = jax.eval_shape(init_fn, 0)
    state_shardings = {
        "step": replicated, "params": param_shardings, "rng": replicated,
        "opt_state": _opt_state_shardings(shapes["opt_state"], abstract_params,
                                          param_shardings, mesh),
    }
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_shardings)
    batch_sh = sharding_lib.batch_sharding(mesh)
    names = ["inputs", "targets"] + (["segment_ids"] if config.data.segment_ids else [])
    abstract_batch = {
        n: jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len), jnp.int32,
                                sharding=batch_sh) for n in names}
    deterministic = config.model.dropout == 0.0
    train_step = jax.jit(
        _train_step_fn(model, optimizer, schedule, config.train, deterministic),
        in_shardings=(state_shardings, batch_sh), out_shardings=(state_shardings, replicated),
        donate_argnums=(0,))
    eval_step = jax.jit(_eval_step_fn(model), in_shardings=(param_shardings, batch_sh),
                        out_shardings=replicated)
    init_state = jax.jit(init_fn, static_argnums=0, out_shardings=state_shardings)
    return TrainSetup(
        config=config, mesh=mesh, model=model, optimizer=optimizer, schedule=schedule,
        total_steps=total_steps, abstract_state=abstract_state, state_shardings=state_shardings,
        batch_sharding=batch_sh, abstract_batch=abstract_batch, train_step=train_step,
        eval_step=eval_step, init_state=init_state)


# --- process setup ------------------------------------------------------------------------

def _cluster_detected() -> bool:
    """True in a multi-host TPU slice or a multi-task SLURM job."""
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in tpu_hosts or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed(mesh_cfg: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize()` when configured (`on`) or detected (`auto`).

    Must run before anything touches a JAX device. Explicit `mesh.coordinator_address`,
    `num_processes`, `process_id` serve clusters JAX does not detect by itself.
    """
    mode = mesh_cfg.distributed
    if jax.distributed.is_initialized() or mode == "off":
        return
    if mode == "auto" and not _cluster_detected():
        return
    kwargs = {}
    if mesh_cfg.coordinator_address:
        if not 0 <= mesh_cfg.process_id < mesh_cfg.num_processes:
            raise ConfigError(
                "config.mesh.coordinator_address needs mesh.num_processes > 0 and "
                f"0 <= mesh.process_id < num_processes (got {mesh_cfg.num_processes}, "
                f"{mesh_cfg.process_id})")
        kwargs = dict(coordinator_address=mesh_cfg.coordinator_address,
                      num_processes=mesh_cfg.num_processes, process_id=mesh_cfg.process_id)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only clusters
    jax.distributed.initialize(**kwargs)


def enable_compilation_cache(config: ml_collections.ConfigDict) -> str:
    """Turn on JAX's persistent compilation cache; returns its directory."""
    from llm_jax.data import cache_root

    path = config.train.compilation_cache_dir or str(
        cache_root(config.data) / "jax_compilation_cache")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def _make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    try:
        return sharding_lib.make_mesh(config.mesh)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from e


# --- evaluation ---------------------------------------------------------------------------

def evaluate(setup: TrainSetup, params, val_batches: Sequence[dict],
             val_bytes_per_token: float) -> dict[str, float]:
    """Mean token loss over the fixed val batches, and bits per byte."""
    sums = [setup.eval_step(params, b) for b in val_batches]
    loss_sum, weight = (float(sum(float(s[i]) for s in sums)) for i in (0, 1))
    loss = loss_sum / max(weight, 1.0)
    return {"val/loss": loss, "val/bpb": loss / math.log(2) / val_bytes_per_token}


# --- the loop -----------------------------------------------------------------------------

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
            bad = [k for k in ("train/loss", "grad_norm", "param_norm")
                   if not math.isfinite(float(row[k]))]
            if bad:
                step = first_step - len(fetched) + i + 1
                raise TrainError(
                    f"{bad[0]} became {float(row[bad[0]])} at step {step}: training diverged "
                    f"(lr there {float(row['lr']):.3g}). Lower config.train.lr, lengthen "
                    "warmup_steps or set grad_clip. Checkpoints written so far predate the "
                    "divergence and are intact")
            self.rows.append({k: float(v) for k, v in row.items()})

    def restart_clock(self, step: int) -> None:
        """Measure throughput from here (after compilation, evaluation, checkpointing)."""
        self.start_step, self.start_time = step, time.perf_counter()


def _global_batches(iterator, sharding, to_global) -> Iterator[dict]:
    for batch in iterator:
        yield to_global(batch, sharding)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its latest checkpoint); returns final metrics.

    The returned dict holds the last logged train metrics, the last evaluation and
    `preempted` (True when stopped by a signal after saving a checkpoint).
    """
    config = config_lib.validate(ml_collections.ConfigDict(config.to_dict()))
    initialize_distributed(config.mesh)
    enable_compilation_cache(config)
    from llm_jax import data as data_lib  # heavy (tokenizer training); after distributed init
    from llm_jax import flops as flops_lib

    primary = jax.process_index() == 0
    setup = make_train(config, _make_mesh(config))
    os.makedirs(workdir, exist_ok=True)
    prepared = data_lib.prepare(config)
    if prepared.tokenizer.vocab_size > config.model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {prepared.tokenizer.vocab_size} tokens but "
            f"config.model.vocab_size={config.model.vocab_size}; raise model.vocab_size")
    t, seq_len = config.train, config.data.seq_len
    tokens_per_step = t.batch_size * seq_len
    flops_per_token = flops_lib.flops_per_token(config.model, seq_len)["detailed"]
    peak = metrics_lib.peak_flops(jax.devices()[0].device_kind)
    peak_total = peak * jax.device_count() if peak else None

    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         config.checkpoint.every, config.checkpoint.keep,
                                         config.checkpoint.async_save)
    iterator = data_lib.BatchIterator(
        prepared, batch_size=t.batch_size, seq_len=seq_len, seed=t.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        segment_ids=config.data.segment_ids)
    model_dict = config.model.to_dict()
    with setup.context():
        latest = checkpointer.latest_step()
        if latest is not None:
            state, meta = checkpointer.restore(latest, setup.abstract_state, model_dict)
            hosts = meta["data"]
            if len(hosts) != jax.process_count():
                raise ckpt_lib.CheckpointError(
                    f"the checkpoint at step {latest} was written by {len(hosts)} hosts, this "
                    f"run has {jax.process_count()}; resume with the same number of hosts")
            iterator.set_state(hosts[jax.process_index()])
        else:
            state = setup.init_state(t.seed)
        if primary:
            atomic.write_json(os.path.join(workdir, "config.json"), config.to_dict())
            prepared.tokenizer.save(os.path.join(workdir, TOKENIZER_FILE))
        val = [data_lib.to_global(b, setup.batch_sharding) for b in data_lib.val_batches(
            prepared, batch_size=config.data.val_batch_size or t.batch_size, seq_len=seq_len,
            num_batches=config.data.num_val_batches, process_index=jax.process_index(),
            process_count=jax.process_count(), segment_ids=config.data.segment_ids)]
        writer = metrics_lib.MetricsWriter(workdir, enabled=primary)
        step = int(jax.device_get(state["step"]))
        writer.truncate_after(step)
        bar = metrics_lib.ProgressBar(setup.total_steps, enabled=primary)
        try:
            result = _loop(setup, state, step, iterator, val, prepared, checkpointer, writer,
                           bar, tokens_per_step, flops_per_token, peak_total, model_dict,
                           data_lib.to_global)
        finally:
            bar.close()
            writer.close()
            checkpointer.close()
    return result


def _loop(setup, state, step, iterator, val, prepared, checkpointer, writer, bar,
          tokens_per_step, flops_per_token, peak_total, model_dict, to_global) -> dict:
    config = setup.config
    t, total = config.train, setup.total_steps
    say = bar.message if jax.process_index() == 0 else (lambda _: None)

    def position(s: int) -> dict[str, Any]:
        return {"step": s, "tokens": s * tokens_per_step,
                "flops": s * tokens_per_step * flops_per_token, "epochs": iterator.epoch}

    def save(s: int, force: bool) -> None:
        meta = {"step": s, "model": model_dict,
                "data": ckpt_lib.gather_host_states(iterator.get_state())}
        if checkpointer.save(s, state, meta, force=force):
            say(f"checkpoint saved at step {s}")

    result: dict[str, Any] = {"preempted": False}
    if step >= total:
        say(f"already trained for {step} steps (train steps = {total}); nothing to do")
    window = _Window()
    window.restart_clock(step)
    batches = _global_batches(iterator, setup.batch_sharding, to_global)
    first = True
    with ckpt_lib.PreemptionGuard() as guard:
        while step < total:
            state, step_metrics = setup.train_step(state, next(batches))
            step += 1
            window.pending.append(step_metrics)
            if first:  # don't count compilation in tokens/s
                jax.block_until_ready(step_metrics)
                window.restart_clock(step)
                first = False
            is_log = step % t.log_every == 0 or step == total
            is_ckpt = step % config.checkpoint.every == 0 or step == total
            sync = is_log or is_ckpt or jax.process_count() == 1
            stop = sync and ckpt_lib.any_host(guard.requested is not None)
            if is_log or is_ckpt or stop:
                window.fetch(step)  # NaN check before anything is saved
            if is_log and window.rows:
                elapsed = time.perf_counter() - window.start_time
                tokens_per_s = ((step - window.start_step) * tokens_per_step / elapsed
                                if step > window.start_step else None)
                row = {k: float(np.mean([r[k] for r in window.rows])) for k in window.rows[0]}
                row.update(lr=window.rows[-1]["lr"], param_norm=window.rows[-1]["param_norm"],
                           tokens_per_s=tokens_per_s,
                           mfu=(tokens_per_s * flops_per_token / peak_total
                                if peak_total and tokens_per_s else None))
                writer.write({**position(step), **row})
                bar.update(step, row["train/loss"], tokens_per_s)
                result.update(row)
                window.rows = []
                window.restart_clock(step)
            if step % t.eval_every == 0 or step == total:
                scores = evaluate(setup, state["params"], val, prepared.val_bytes_per_token)
                writer.write({**position(step), **scores})
                say(f"step {step}: val/loss {scores['val/loss']:.4f}  "
                    f"val/bpb {scores['val/bpb']:.4f}")
                result.update(scores)
                window.restart_clock(step)
            if is_ckpt or stop:
                save(step, force=stop or step == total)
                window.restart_clock(step)
            if stop:
                checkpointer.wait()
                say(f"stopped by {guard.requested or 'a signal on another host'} at step "
                    f"{step}; checkpoint saved. Rerun the same command to resume")
                result["preempted"] = True
                break
    result["step"] = step
    return result


# --- restoring for other tools ------------------------------------------------------------

def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `workdir/config.json`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ckpt_lib.CheckpointError(f"{path} not found: is {workdir!r} a training workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run_tokenizer(workdir: str, config: ml_collections.ConfigDict | None = None):
    """The tokenizer a run trained with: `workdir/tokenizer.model`, written at its start.

    Workdirs from before that file existed fall back to the data cache (rebuilt from the
    corpus if it is gone), as the trainer found it.
    """
    from llm_jax import tokenizer as tokenizer_lib

    path = os.path.join(workdir, TOKENIZER_FILE)
    if os.path.exists(path):
        return tokenizer_lib.load_tokenizer(path)
    from llm_jax import data as data_lib  # heavy (datasets): only without a tokenizer file

    return data_lib.prepare(config or load_config(workdir)).tokenizer


def restore_params(workdir: str, mesh: jax.sharding.Mesh | None = None,
                   step: int | None = None) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, params) of the latest (or given) checkpoint in `workdir`.

    Only the params are read (no optimizer state). They are placed on `mesh`, by
    default replicated over all devices (a data-only mesh).
    """
    config = load_config(workdir)
    if mesh is None:
        mesh_cfg = ml_collections.ConfigDict(dict(config.mesh.to_dict(), data=-1))
        mesh_cfg.fsdp = mesh_cfg.tensor = 1
        mesh = sharding_lib.make_mesh(mesh_cfg)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    step = checkpointer.latest_step() if step is None else step
    if step is None:
        raise ckpt_lib.CheckpointError(f"no checkpoint in {workdir}/checkpoints yet")
    abstract, shardings = sharding_lib.abstract_params(config.model, mesh)
    target = {"params": jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)}
    params = checkpointer.restore_subtree(step, target, config.model.to_dict())["params"]
    checkpointer.close()
    return config, params


# --- command line -------------------------------------------------------------------------

def train_main(argv: Sequence[str]) -> int:
    """`llm-jax train --config FILE [--config.a.b=v ...] --workdir DIR`."""
    from absl import flags
    from ml_collections import config_flags

    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "experiment config file (a get_config() Python file)",
        flag_values=flag_values, lock_config=True, sys_argv=list(argv))
    flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, config.json",
                        flag_values=flag_values)
    flag_values(list(argv))
    if flag_values.config is None or not flag_values.workdir:
        raise flags.Error("--config and --workdir are required (llm-jax train --help)")
    result = train_and_evaluate(flag_values.config, flag_values.workdir)
    return PREEMPTED_EXIT_CODE if result["preempted"] else 0
