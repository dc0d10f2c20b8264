"""Workdirs from Hugging Face model directories and nanoGPT checkpoints, and back.

  - `import_hf(src, workdir)`: an HF directory (config.json, *.safetensors, sharded or
    not, or pytorch_model.bin; tokenizer.json) -> a workdir (config.json, the tokenizer,
    an Orbax checkpoint of the params at step 0) that `generate`, `eval` and
    fine-tuning read like any run's.
  - `import_nanogpt(ckpt, workdir)`: the same from nanoGPT's `ckpt.pt` (GPT-2 layout in
    nn.Linear [out, in] form, exact GELU, biases optional).
  - `export_hf(workdir, out)`: a workdir -> an HF directory that
    `transformers.AutoModelForCausalLM.from_pretrained(out)` loads.

Tensors go one at a time from the memory-mapped files into the converted params, so
the host holds the checkpoint once (plus one tensor), in its own dtype.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llm_jax import atomic, storage
from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax import workdir as workdir_lib
from llm_jax.hf import convert
from llm_jax.hf import safetensors as st
from llm_jax.hf import tokenizer as hf_tokenizer

log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
TORCH_FILE = "pytorch_model.bin"
# Buffers some checkpoints carry that are not parameters (GPT-2's causal mask, old RoPE).
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def _torch_state_dict(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise ckpt_lib.CheckpointError(
            f"reading {path} needs torch: pip install torch (or convert it to safetensors)"
        ) from None
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def _torch_to_numpy(tensor) -> np.ndarray:
    """A CPU torch tensor as numpy, bfloat16 included (as ml_dtypes.bfloat16)."""
    import ml_dtypes
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


class _Source:
    """Tensors by HF name from safetensors or a torch state dict; records what was read."""

    def __init__(self, names: list[str], read: Callable[[str], np.ndarray]):
        self._names, self._read, self.used = set(names), read, set()

    def __call__(self, name: str) -> np.ndarray:
        # GPT-2 checkpoints come with or without the "transformer." prefix.
        for candidate in (name, name.removeprefix("transformer.")):
            if candidate in self._names:
                self.used.add(candidate)
                return self._read(candidate)
        raise ckpt_lib.CheckpointError(f"the checkpoint has no tensor {name}")

    def check_all_used(self) -> None:
        """Refuse tensors that have no place in the model (a layout llm_jax lacks)."""
        left = sorted(n for n in self._names - self.used if not n.endswith(_BUFFER_SUFFIXES))
        if left:
            raise convert.ConvertError(
                f"the checkpoint has {len(left)} tensor(s) llm_jax's model has no place for "
                f"(e.g. {left[0]}): a bias or layer layout it cannot express"
            )


def _open_source(src: Path) -> tuple[_Source, Callable[[], None], str]:
    """(tensor source, close, dtype name of the first tensor) of an HF directory."""
    if any(src.glob("*.safetensors")):
        reader = st.TensorReader.from_dir(src)
        names = reader.names()
        return _Source(names, reader.read), reader.close, str(reader.dtype(names[0]))
    if (src / TORCH_FILE).is_file():
        state = _torch_state_dict(src / TORCH_FILE)
        first = _torch_to_numpy(next(iter(state.values())))
        return (
            _Source(list(state), lambda n: _torch_to_numpy(state[n])),
            state.clear,
            str(first.dtype),
        )
    raise ckpt_lib.CheckpointError(
        f"{src} holds neither *.safetensors nor {TORCH_FILE}; is it a Hugging Face model directory?"
    )


def run_config(model_overrides: dict, param_dtype: str, scan_layers: bool):
    """A full run config around imported model values (data settings at their defaults)."""
    config = config_lib.default_config()
    config.model.update(model_overrides)
    config.model.param_dtype = param_dtype
    config.model.scan_layers = scan_layers
    config.data.seq_len = min(config.data.seq_len, config.model.max_seq_len)
    return config


def _param_dtype(requested: str, checkpoint_dtype: str) -> str:
    if requested != "auto":
        return requested
    return "bfloat16" if checkpoint_dtype == "bfloat16" else "float32"


def _to_device(tree: dict) -> None:
    """Replace each numpy leaf by a jax array in place: its host copy goes as it is moved.

    Each transfer is waited for: an unfinished one keeps its numpy source alive, and
    letting them all run at once held the whole model twice.
    """
    for key, value in tree.items():
        if isinstance(value, dict):
            _to_device(value)
        else:
            tree[key] = jnp.asarray(value).block_until_ready()


def write_workdir(
    workdir: str, config: ml_collections.ConfigDict, params: dict, tokenizer, source: str
) -> None:
    """config.json, the tokenizer and the params as an Orbax checkpoint at step 0.

    `params` (nested dicts of numpy arrays) are moved to the device in place.
    """
    workdir_lib.check_workdir(workdir)
    ckpt_dir = storage.join(workdir, workdir_lib.CHECKPOINTS_DIR)  # local or gs://
    if storage.is_dir(ckpt_dir) and any(storage.path(ckpt_dir).iterdir()):
        raise ckpt_lib.CheckpointError(
            f"{workdir} already holds checkpoints; import into a new --workdir"
        )
    storage.makedirs(workdir)
    if tokenizer is not None:
        workdir_lib.save_run_tokenizer(workdir, tokenizer)
        config.data.tokenizer_path = tokenizer.path
    config_lib.validate(config)
    storage.write_json(storage.join(workdir, workdir_lib.CONFIG_FILE), config.to_dict())
    _to_device(params)
    # Orbax buffers what it writes: left at its default it held ~0.75x the model at once.
    largest = max(x.nbytes for x in jax.tree_util.tree_leaves(params))
    save_gb = math.ceil(largest / 1e9) + 1
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir, async_save=False, save_concurrent_gb=save_gb)
    try:
        meta = {"step": 0, "model": config.model.to_dict(), "data": [], "imported_from": source}
        checkpointer.save(0, {"params": params}, meta, force=True)
        checkpointer.wait()
    finally:
        checkpointer.close()


def _load_tokenizer(folder: Path | None, vocab_size: int):
    if folder is None or not (folder / hf_tokenizer.TOKENIZER_JSON).is_file():
        log.warning(
            "no tokenizer.json in %s: the workdir has no tokenizer (generate and eval need "
            "one; pass --tokenizer DIR)",
            folder,
        )
        return None
    return hf_tokenizer.load_hf_tokenizer(folder, vocab_size)


def import_hf(
    src: str,
    workdir: str,
    param_dtype: str = "auto",
    scan_layers: bool = True,
    tokenizer_dir: str | None = None,
) -> ml_collections.ConfigDict:
    """Write a workdir from the HF model directory `src`; returns its config."""
    src_path = Path(src)
    config_file = src_path / CONFIG_JSON
    if not config_file.is_file():
        raise ckpt_lib.CheckpointError(f"{config_file} not found: is {src} an HF model directory?")
    overrides = convert.model_overrides(json.loads(config_file.read_text()))
    source, close, dtype = _open_source(src_path)
    try:
        config = run_config(overrides, _param_dtype(param_dtype, dtype), scan_layers)
        params = convert.import_params(config.model, source)
        source.check_all_used()
    finally:
        close()
    tokenizer = _load_tokenizer(Path(tokenizer_dir or src), config.model.vocab_size)
    write_workdir(workdir, config, params, tokenizer, source=str(src_path.resolve()))
    return config


# --- nanoGPT ---------------------------------------------------------------------------------

# nanoGPT's nn.Linear weights ([out, in]); HF GPT-2 stores them as Conv1D ([in, out]).
_NANOGPT_LINEARS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)


def nanogpt_hf_config(model_args: dict) -> dict:
    """The HF GPT-2 config.json equivalent of nanoGPT's `model_args`."""
    bias = bool(model_args.get("bias", True))
    return dict(
        model_type="gpt2",
        vocab_size=model_args["vocab_size"],
        n_embd=model_args["n_embd"],
        n_layer=model_args["n_layer"],
        n_head=model_args["n_head"],
        n_positions=model_args["block_size"],
        activation_function="gelu",  # nn.GELU(): the exact erf form
        tie_word_embeddings=True,
        bias=bias,
    )


def import_nanogpt(
    ckpt: str,
    workdir: str,
    param_dtype: str = "auto",
    scan_layers: bool = True,
    tokenizer_dir: str | None = None,
) -> ml_collections.ConfigDict:
    """Write a workdir from nanoGPT's `ckpt.pt` (its `model` and `model_args` entries)."""
    checkpoint = _torch_state_dict(Path(ckpt))
    if "model" not in checkpoint or "model_args" not in checkpoint:
        raise ckpt_lib.CheckpointError(f"{ckpt} has no 'model'/'model_args': not a nanoGPT ckpt.pt")
    hf = nanogpt_hf_config(checkpoint["model_args"])
    overrides = convert.model_overrides(hf)
    overrides.update(norm_bias=hf["bias"], attn_bias=hf["bias"], mlp_bias=hf["bias"])
    # torch.compile'd models save their weights under "_orig_mod.".
    state = {k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()}

    def read(name: str) -> np.ndarray:
        array = _torch_to_numpy(state[name])
        return array.T if name.endswith(_NANOGPT_LINEARS) else array

    source = _Source([n for n in state if n != "lm_head.weight"], read)  # tied to wte
    dtype = str(_torch_to_numpy(next(iter(state.values()))).dtype)
    config = run_config(overrides, _param_dtype(param_dtype, dtype), scan_layers)
    params = convert.import_params(config.model, source)
    source.check_all_used()
    tokenizer = _load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else None, hf["vocab_size"])
    write_workdir(workdir, config, params, tokenizer, source=str(Path(ckpt).resolve()))
    return config


# --- export ----------------------------------------------------------------------------------


def export_hf(workdir: str, out: str, step: int | None = None, dtype: str | None = None) -> list:
    """Write the workdir's params (latest or `step`) as an HF model directory `out`.

    `dtype` (float32 | bfloat16) defaults to the params' own. Returns the files written.
    """
    config = workdir_lib.load_config(workdir)
    convert.family(config.model)  # refuse before reading anything
    one_device = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
    from llm_jax import sharding as sharding_lib

    mesh = sharding_lib.make_mesh(one_device, devices=jax.devices()[:1])
    config, params = workdir_lib.restore_params(workdir, mesh=mesh, step=step)
    dtype = dtype or config.model.param_dtype
    with storage.local_folder(out) as local:  # gs://: written here, then uploaded
        return _write_hf_folder(Path(local), workdir, config, params, dtype)


def _write_hf_folder(out_path: Path, workdir: str, config, params, dtype: str) -> list:
    tensors, produce = convert.export_tensors(config.model, params, np.dtype(jnp.dtype(dtype)))
    files = st.write_checkpoint(out_path, tensors, produce)
    tokenizer = _workdir_tokenizer(workdir)
    bos_id, eos_id = (tokenizer.bos_id, tokenizer.eos_id) if tokenizer else (-1, None)
    hf = convert.hf_config(config.model, dtype, bos_id if bos_id >= 0 else eos_id, eos_id)
    atomic.write_json(out_path / CONFIG_JSON, hf, indent=1)
    files.append(CONFIG_JSON)
    if tokenizer is not None:
        files += _export_tokenizer(tokenizer, out_path)
    return files


def _export_tokenizer(tokenizer, out_path: Path) -> list[str]:
    """tokenizer.json and tokenizer_config.json (AutoTokenizer's); SentencePiece runs keep
    their tokenizer.model too, converted when they can be."""
    if isinstance(tokenizer, hf_tokenizer.HFTokenizer):
        tokenizer.save(out_path)
        return [hf_tokenizer.TOKENIZER_JSON, hf_tokenizer.TOKENIZER_CONFIG]
    tokenizer.save(out_path / workdir_lib.TOKENIZER_FILE)
    try:
        hf_tokenizer.from_sentencepiece(tokenizer.model_proto).save(out_path)
    except hf_tokenizer.TokenizerFileError as e:
        log.warning("tokenizer.model copied, no tokenizer.json: %s", e)
        return [workdir_lib.TOKENIZER_FILE]
    return [hf_tokenizer.TOKENIZER_JSON, hf_tokenizer.TOKENIZER_CONFIG, workdir_lib.TOKENIZER_FILE]


def _workdir_tokenizer(workdir: str):
    """The run's tokenizer if the workdir holds one (never rebuilt from the corpus)."""
    names = (hf_tokenizer.TOKENIZER_JSON, workdir_lib.TOKENIZER_FILE)
    if not any(storage.exists(storage.join(workdir, n)) for n in names):
        log.warning("%s holds no tokenizer file: none exported", workdir)
        return None
    return workdir_lib.load_run_tokenizer(workdir)
