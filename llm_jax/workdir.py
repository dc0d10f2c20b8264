"""A training workdir as other tools read it: its config, tokenizer and trained params."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax import sharding as sharding_lib
from llm_jax import storage

CONFIG_FILE = "config.json"  # the resolved config, written at the start of every run
TOKENIZER_FILE = "tokenizer.model"  # the run's SentencePiece model, copied into its workdir
CHECKPOINTS_DIR = "checkpoints"


def check_workdir(workdir: str) -> None:
    """Refuse a local workdir path that exists but is not a directory (on gs:// a prefix
    and an object of the same name can coexist)."""
    if not storage.is_gcs(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ckpt_lib.CheckpointError(
            f"workdir {workdir} is a file, not a directory; "
            "pass a directory (it is created if missing)"
        )


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `workdir/config.json`."""
    check_workdir(workdir)
    path = storage.join(workdir, CONFIG_FILE)
    if not storage.exists(path):
        raise ckpt_lib.CheckpointError(f"{path} not found: is {workdir!r} a training workdir?")
    try:
        return config_lib.with_defaults(json.loads(storage.read_text(path)))
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ckpt_lib.CheckpointError(
            f"{path} is not valid JSON ({e}); rerun `llm-jax train` with the run's config to "
            "rewrite it"
        ) from e


def save_run_tokenizer(workdir: str, tokenizer) -> None:
    """Copy the run's tokenizer into `workdir`: tokenizer.model, or an HF tokenizer.json."""
    from llm_jax.hf.tokenizer import HFTokenizer

    if isinstance(tokenizer, HFTokenizer):
        tokenizer.save(workdir)  # tokenizer.json and tokenizer_config.json
    else:
        tokenizer.save(storage.join(workdir, TOKENIZER_FILE))


def load_run_tokenizer(workdir: str, config: ml_collections.ConfigDict | None = None):
    """The tokenizer a run trained with: `workdir/tokenizer.model` (or, for a Hugging Face
    tokenizer, `workdir/tokenizer.json`), written at its start.

    Workdirs from before that file existed fall back to the data cache (rebuilt from the
    corpus if it is gone), as the trainer found it.
    """
    from llm_jax import tokenizer as tokenizer_lib
    from llm_jax.hf import tokenizer as hf_tokenizer

    if storage.exists(storage.join(workdir, hf_tokenizer.TOKENIZER_JSON)):
        return hf_tokenizer.load_hf_tokenizer(workdir)
    path = storage.join(workdir, TOKENIZER_FILE)
    if storage.exists(path):
        return tokenizer_lib.load_tokenizer(path)
    from llm_jax import data as data_lib  # heavy (datasets): only without a tokenizer file

    return data_lib.prepare(config or load_config(workdir)).tokenizer


def restore_params(
    workdir: str, mesh: jax.sharding.Mesh | None = None, step: int | None = None
) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, params) of the latest (or given) checkpoint in `workdir`.

    Only the params are read (no optimizer state). They are placed on `mesh`, by
    default replicated over all devices (a data-only mesh).
    """
    config = load_config(workdir)
    if mesh is None:
        mesh_cfg = ml_collections.ConfigDict(dict(config.mesh.to_dict(), data=-1))
        mesh_cfg.fsdp = mesh_cfg.tensor = 1
        mesh = sharding_lib.make_mesh(mesh_cfg)
    checkpointer = ckpt_lib.Checkpointer(storage.join(workdir, CHECKPOINTS_DIR), read_only=True)
    try:
        from llm_jax.train import abstract_params

        target = {"params": abstract_params(config.model, mesh)}
        _, restored = checkpointer.restore_verified_subtree(target, config.model.to_dict(), step)
        params = restored["params"]
    finally:
        checkpointer.close()
    return config, params


def restore_run(workdir: str, step: int | None = None):
    """(config, params, tokenizer) of the run in `workdir`, params on one device: what a
    command that runs the trained model on a few inputs needs (generate, inspect)."""
    one_device = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
    mesh = sharding_lib.make_mesh(one_device, devices=jax.devices()[:1])
    config, params = restore_params(workdir, mesh=mesh, step=step)
    return config, params, load_run_tokenizer(workdir, config)
