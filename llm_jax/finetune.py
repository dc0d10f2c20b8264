"""Starting a run from a trained one (`config.init`) and freezing params (`config.finetune`).

`config.init.workdir` names a training workdir (one `llm-jax train` wrote, or one
`llm-jax import-hf` wrote: an Orbax checkpoint at step 0); its latest checkpoint (or
`config.init.step`) gives this run's starting params. Params only: the optimizer state,
the step count and the schedule start fresh. `resolve_init` takes the source's model
config for every `config.model` key left at its default (so a fine-tuning config need
not restate the shape) and its tokenizer unless `data.tokenizer_path` names one;
`init_params` is the one door trained weights come in by: params present in both models
are copied (a shape that differs is a one-line error), params only this model has (a
classification head) keep their fresh init, params only the source has (its LM head
under a classifier) are left out; the log line names both.

With `config.init.state`, `branch_point` reads that checkpoint's whole train state
instead (params, optimizer state, step, data position): the run continues the source
exactly, under its own config (a WSD cooldown branch, llm_jax/scaling/sweep.py); the
trainer restores it as it resumes its own checkpoints.

`config.finetune.freeze` lists param-path patterns ('/' joins module names: e.g.
'token_embed', 'layer_0/*', 'layers/attn/*'); `freeze` applies the optimizer to the other
params only (`optax.masked`: frozen params hold no Adam moments, and their updates are
exactly zero, weight decay included; their gradients do not count in clipping). With
`model.scan_layers` each layer param is one stacked array ('layers/...'): freezing lower
layers only needs `scan_layers=False`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from llm_jax import config as config_lib
from llm_jax import storage, trees
from llm_jax.config import ConfigError
from llm_jax.errors import UsageError

log = logging.getLogger(__name__)

# config.model keys a task sets for itself: never taken from the source run.
_TASK_MODEL_KEYS = ("num_classes",)


def resolve_init(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the init source's model keys (where left at default) and tokenizer."""
    from llm_jax import workdir as workdir_lib

    source_dir = config.init.workdir
    if not source_dir:
        return config
    inherit_model(config, workdir_lib.load_config(source_dir).model)
    if not config.data.tokenizer_path:
        config.data.tokenizer_path = _run_tokenizer_path(source_dir)
    return config


def inherit_model(
    config: ml_collections.ConfigDict, source_model: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """`config` (changed in place) with `source_model`'s value for every model key it leaves
    at the default, except the keys a task sets for itself (num_classes)."""
    defaults = config_lib.default_config().model
    for key, value in source_model.items():
        if key not in _TASK_MODEL_KEYS and config.model[key] == defaults[key]:
            config.model[key] = value
    return config


def _run_tokenizer_path(workdir: str) -> str:
    """The tokenizer a workdir carries, as data.tokenizer_path spells it ('' if none)."""
    from llm_jax import workdir as workdir_lib
    from llm_jax.hf import tokenizer as hf_tokenizer

    if storage.exists(storage.join(workdir, hf_tokenizer.TOKENIZER_JSON)):
        return f"hf:{workdir}"
    path = storage.join(workdir, workdir_lib.TOKENIZER_FILE)
    return path if storage.exists(path) else ""


def refuse_classifier(workdir: str, command: str) -> None:
    """Raise UsageError when `workdir` holds a classifier (task.name='classify'): `command`
    reads a language-model head, which a classifier replaced with its label head."""
    from llm_jax import workdir as workdir_lib

    if not storage.exists(storage.join(workdir, workdir_lib.CONFIG_FILE)):
        return  # not a run (yet): the command's own checks say what is missing
    if workdir_lib.load_config(workdir).task.name == "classify":
        raise UsageError(
            f"llm-jax {command}: {workdir} holds a classifier (task.name='classify'), which "
            f"has no language-model head; label texts with `llm-jax predict --workdir "
            f"{workdir} --input FILE`"
        )


def path_name(path) -> str:
    """'layers/attn/query' for a params tree path (box attributes left out)."""
    return trees.path_str(path)


def init_params(params: Any, source: Any, source_name: str) -> Any:
    """`params` with every leaf that `source` also has replaced by the source's (cast to
    the leaf's dtype and placed with its sharding). Raises CheckpointError on a shape
    mismatch."""
    from llm_jax.checkpoint import CheckpointError

    source_leaves = {path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(source)}
    copied: list[str] = []

    def take(path, leaf):
        name = path_name(path)
        if name not in source_leaves:
            return leaf
        value = source_leaves[name]
        if value.shape != leaf.shape:
            raise CheckpointError(
                f"init.workdir {source_name}: param {name} has shape {tuple(value.shape)} "
                f"there but {tuple(leaf.shape)} in this model; drop the config.model "
                "overrides that change it (keys left at their default come from the source)"
            )
        copied.append(name)
        return jax.device_put(value.astype(leaf.dtype), leaf.sharding)

    merged = jax.tree_util.tree_map_with_path(take, params)
    fresh = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    new = sorted(set(fresh) - set(copied))
    unused = sorted(set(source_leaves) - set(copied))
    log.info(
        "initialised %d params from %s; fresh: %s; not used: %s",
        len(copied),
        source_name,
        ", ".join(new) or "none",
        ", ".join(unused) or "none",
    )
    return merged


def initial_state(config: ml_collections.ConfigDict, setup) -> dict:
    """A fresh train state (step 0, fresh optimizer); its params come from
    `config.init.workdir` when set. Call under `setup.context()`."""
    from llm_jax import workdir as workdir_lib

    state = setup.init_state(config.train.seed)
    source_dir = config.init.workdir
    if not source_dir:
        return state
    step = None if config.init.step < 0 else config.init.step
    with nn.logical_axis_rules(()):  # no rules: unboxing abstract params adds no constraint
        _, source = workdir_lib.restore_params(source_dir, setup.mesh, step)
    where = f"{source_dir} (step {step if step is not None else 'latest'})"
    return dict(state, params=init_params(state["params"], source, where))


def branch_point(config: ml_collections.ConfigDict, abstract_state: Any) -> tuple[int, Any, dict]:
    """(step, state, meta) of `config.init.workdir`'s checkpoint at `config.init.step`
    (-1: its latest), onto this run's shardings; what `Trainer` restores a branch from."""
    from llm_jax import checkpoint as ckpt_lib
    from llm_jax import workdir as workdir_lib

    source_dir = config.init.workdir
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(source_dir, workdir_lib.CHECKPOINTS_DIR), read_only=True
    )
    try:
        step = config.init.step if config.init.step >= 0 else checkpointer.latest_step()
        if step not in checkpointer.steps():
            raise ckpt_lib.CheckpointError(
                f"init.workdir {source_dir} has no checkpoint at step {step} (it has "
                f"{checkpointer.steps() or 'none'}); keep it with checkpoint.keep_every"
            )
        state, meta = checkpointer.restore(step, abstract_state, config.model.to_dict())
    finally:
        checkpointer.close()
    return step, state, meta


def _frozen(name: str, patterns) -> bool:
    return any(
        fnmatch.fnmatchcase(name, p) or name.startswith(p.rstrip("/") + "/") for p in patterns
    )


def freeze(optimizer: optax.GradientTransformation, patterns) -> optax.GradientTransformation:
    """`optimizer` applied to the params not matching `patterns` only (unchanged if none).

    `optax.masked` keeps no optimizer state for frozen params (no Adam moments: an
    `optax.MaskedNode` in their place) and passes their updates through; their gradients
    are zeroed first, so those updates are exactly zero and clipping ignores them.
    """
    patterns = tuple(patterns)
    if not patterns:
        return optimizer

    def check(params):  # at init, so a bad pattern fails before the first step
        names = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        for pattern in patterns:
            if not any(_frozen(n, (pattern,)) for n in names):
                raise ConfigError(
                    f"config.finetune.freeze pattern {pattern!r} matches no param; params "
                    f"are named like {', '.join(names[:4])}, ..."
                )
        return optax.EmptyState()

    def zero_frozen(updates, state, params=None):
        del params
        zeroed = jax.tree_util.tree_map_with_path(
            lambda path, u: jnp.zeros_like(u) if _frozen(path_name(path), patterns) else u,
            updates,
        )
        return zeroed, state

    def trainable(params):
        # One bool per param, a boxed param (nn.Partitioned, at init) counting as one leaf:
        # a frozen one becomes a MaskedNode whole, box and all, so the optimizer state
        # holds no box without an array and its shardings still come from the boxes.
        return jax.tree_util.tree_map_with_path(
            lambda path, _: not _frozen(path_name(path), patterns),
            params,
            is_leaf=lambda x: isinstance(x, nn.Partitioned),
        )

    masked = optax.masked(optimizer, trainable)
    return optax.chain(optax.GradientTransformation(check, zero_frozen), masked)
