"""The train state and the jitted step: `make_train(config, mesh) -> TrainSetup`.

Everything here is built without allocating an array: the model, the optimizer and
schedule, the abstract train state (ShapeDtypeStructs carrying their NamedShardings),
the batch sharding and the jitted `train_step`, `eval_step` and `init_state`. The
trainer, the bench and `llm-jax plan` all run this same step; call it under
`setup.context()` (the mesh and the logical-axis rules). The step is the same for every
task: what it minimises and what evaluation computes come from the task's `Objective`
(llm_jax/tasks/; next-token loss by default). State, batch and loss contracts are in
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from llm_jax import config as config_lib
from llm_jax import finetune, optim
from llm_jax import sharding as sharding_lib
from llm_jax import tasks as tasks_lib
from llm_jax.model import ModelConfig, Transformer

# --- the step -----------------------------------------------------------------------------


@dataclasses.dataclass
class TrainSetup:
    """Everything needed to run (or compile) the train step; see the module docstring."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    model: Transformer
    optimizer: optax.GradientTransformation
    schedule: optim.Schedule
    schedule_args: dict[str, np.ndarray]  # the step's third argument
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


def _split_microbatches(batch: dict, m: int) -> dict:
    # Row r goes to micro-batch r % m: each device's rows hold every micro-batch evenly,
    # so splitting a batch-sharded array needs no communication.
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1), batch)


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
    (grads, ce_sum), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32)), (micro, jnp.arange(m))
    )
    return ce_sum, grads


def _train_step_fn(model: Transformer, task: tasks_lib.Objective, config, deterministic):
    train_cfg = config.train
    m = int(train_cfg.microbatches)
    kind = optim.program_kind(train_cfg)

    def train_step(state: dict, batch: dict, schedule_values: dict) -> tuple[dict, dict]:
        schedule = optim.schedule_from_values(kind, schedule_values)
        optimizer = make_optimizer(config, schedule)
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        total_weight = jnp.maximum(task.weights(batch).sum(), 1.0)

        def objective(params, mb, key):
            objective_sum, loss_sum = task.sums(model, params, mb, key, deterministic)
            return objective_sum / total_weight, loss_sum

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


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optim.Schedule
) -> optax.GradientTransformation:
    """`config`'s optimizer at `schedule`'s rate, frozen parameters held (finetune.freeze)."""
    optimizer = optim.make_optimizer(config.train, schedule, config.model)
    return finetune.freeze(optimizer, config.finetune.freeze)


def train_step_fn(config: ml_collections.ConfigDict, model: Transformer) -> Callable:
    """The unjitted step (state, batch, schedule values) -> (state, metrics) of `config`.

    The schedule's numbers (`schedule_args`) are inputs, not constants of the program: runs
    that differ only in them (a WSD parent and its cooldowns, learning rates, warmups)
    compile to one program, which the persistent compilation cache then serves to all.
    """
    task = tasks_lib.objective(config)
    return _train_step_fn(model, task, config, deterministic=config.model.dropout == 0.0)


def schedule_args(config: ml_collections.ConfigDict, total_steps: int) -> dict[str, np.ndarray]:
    """The step's schedule values of `config`, as float32 scalars."""
    values = optim.schedule_values(config.train, total_steps)
    return {name: np.float32(value) for name, value in values.items()}


def _rows_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Batch arrays of any rank (token rows [B, L], labels [B]): rows split as the
    activations' batch axis, the other axes whole (as `sharding.batch_sharding`'s length)."""
    return NamedSharding(mesh, PartitionSpec(sharding_lib.batch_sharding(mesh).spec[0]))


def abstract_params(model_cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Any:
    """The params as ShapeDtypeStructs carrying their NamedShardings (for restoring)."""
    model = Transformer(ModelConfig.from_config(model_cfg))
    boxed = jax.eval_shape(
        lambda key: model.init(key, jnp.zeros((1, 8), jnp.int32))["params"], jax.random.key(0)
    )
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nn.meta.unbox(boxed),
        sharding_lib.logical_to_sharding(mesh, boxed),
    )


def init_compiler_options(platform: str) -> dict | None:
    """XLA's options for a train state's init on `platform`.

    The init runs once: on a CPU, LLVM's level 1 compiles its random draws 2-3x faster than
    the default level 2 and gives the same values bit for bit (tested); the step keeps the
    default. With XLA's optimizations off (JAX_DISABLE_MOST_OPTIMIZATIONS=1) every program
    compiles at level 0, faster still, and so does this one.
    """
    if platform != "cpu" or jax.config.read("jax_disable_most_optimizations"):
        return None
    return {"xla_backend_optimization_level": 1}


# Config fields the programs below do not depend on: the schedule's numbers are the step's
# inputs (`schedule_args`), the seed is init_state's argument, the rest is bookkeeping.
_NOT_IN_PROGRAM = {
    "train": (
        *("lr", "min_lr_ratio", "warmup_steps", "decay_fraction", "schedule", "decay_shape"),
        *("seed", "steps", "tokens", "eval_every", "log_every", "compilation_cache_dir"),
    ),
    "data": ("tokenizer_path",),  # a WSD branch reads its parent's: the same vocabulary
    "checkpoint": None,  # None: the whole section
    "tracking": None,
    "init": None,  # read before this point (tasks.resolve_config), to restore after it
}
_PROGRAMS: dict[tuple, dict] = {}  # program_key -> the jitted functions and abstract state
_MAX_PROGRAMS = 16  # oldest dropped first


def program_key(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple:
    """What `make_train`'s programs depend on: configs with equal keys share them."""
    tree = config.to_dict()
    for section, names in _NOT_IN_PROGRAM.items():
        for name in list(tree.get(section, {})) if names is None else names:
            tree.get(section, {}).pop(name, None)
    tree["train"]["schedule"] = optim.program_kind(config.train)
    optimized = not jax.config.read("jax_disable_most_optimizations")  # init_compiler_options
    return json.dumps(tree, sort_keys=True, default=str), mesh, optimized


def make_train(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> TrainSetup:
    """The jitted step and the abstract, sharded train state, without allocating arrays.

    A config whose `program_key` an earlier call in this process had gets that call's
    jitted functions, which JAX then neither traces nor compiles again (a sweep worker
    running a WSD parent and then its cooldowns).
    """
    total_steps = config_lib.train_steps(config)
    schedule = optim.make_schedule(config.train, total_steps)
    optimizer = make_optimizer(config, schedule)  # the state's; the step builds its own
    key = program_key(config, mesh)
    if key not in _PROGRAMS:
        if len(_PROGRAMS) >= _MAX_PROGRAMS:
            del _PROGRAMS[next(iter(_PROGRAMS))]
        # A private copy: the functions trace it later, whatever the caller does with its own.
        _PROGRAMS[key] = _programs(copy.deepcopy(config), mesh, optimizer)
    return TrainSetup(
        config=config,
        mesh=mesh,
        optimizer=optimizer,
        schedule=schedule,
        schedule_args=schedule_args(config, total_steps),
        total_steps=total_steps,
        **_PROGRAMS[key],
    )


def _programs(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, optimizer) -> dict:
    """The model, abstract state, shardings and jitted functions of `make_train`."""
    model = Transformer(ModelConfig.from_config(config.model))
    step = train_step_fn(config, model)
    task = tasks_lib.objective(config)
    init_tokens = jnp.zeros((1, 8), jnp.int32)  # parameter shapes do not depend on these

    def boxed_init(seed):
        # Params stay boxed (nn.LogicallyPartitioned): optax maps over the boxes' values,
        # so Adam's moments come out boxed with their parameter's logical axes.
        key = jax.random.key(seed)
        params = model.init(key, init_tokens)["params"]
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": optimizer.init(params),
            "rng": jax.random.key_data(jax.random.fold_in(key, 1)),
        }

    # One trace of the init gives every shape and every sharding: boxed leaves map their
    # logical axes through the rules table, all others (step counts, rng) are replicated.
    boxed = jax.eval_shape(boxed_init, 0)
    state_shardings = sharding_lib.logical_to_sharding(mesh, boxed)
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nn.meta.unbox(boxed),
        state_shardings,
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sh = _rows_sharding(mesh)
    abstract_batch = {
        name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
        for name, (shape, dtype) in task.batch_shapes(config).items()
    }
    train_step = jax.jit(
        step,
        in_shardings=(state_shardings, batch_sh, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(
        lambda params, batch: task.eval_sums(model, params, batch),
        in_shardings=(state_shardings["params"], batch_sh),
        out_shardings=replicated,
    )
    init_state = jax.jit(
        lambda seed: nn.meta.unbox(boxed_init(seed)),
        static_argnums=0,
        out_shardings=state_shardings,
        compiler_options=init_compiler_options(mesh.devices.flat[0].platform),
    )
    return dict(
        model=model,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_sharding=batch_sh,
        abstract_batch=abstract_batch,
        train_step=train_step,
        eval_step=eval_step,
        init_state=init_state,
    )
