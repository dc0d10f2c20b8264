"""The base config, the model presets, derived sizes and validation.

Every run is described by one `ml_collections.ConfigDict` with nine sections:
`model`, `data`, `train`, `checkpoint`, `eval`, `mesh`, and for the second training
stage `task`, `init`, `finetune` (llm_jax/tasks/, llm_jax/finetune.py).
`default_config()` holds every key with a default that suits a newcomer; experiment files under
`experiments/configs/` start from it and override a few values, usually by
naming a model preset (`apply_preset`).

Values that depend on others (head_dim, n_kv_heads, d_ff, the padded vocab)
are stored as 0 meaning "derive it" and resolved by the helpers below, which
the model and the FLOP counter both use, so the two can never disagree.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import ml_collections

from llm_jax.errors import UserError

# The model's categorical switches: ModelConfig (llm_jax/model.py) types its fields with
# these, and validate() accepts exactly their values.
Positions = Literal["sinusoidal", "learned", "rope", "none"]
RopeScaling = Literal["", "llama3"]
NormKind = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
MlpKind = Literal["relu", "gelu", "gelu_exact", "swiglu"]
ComputeDtype = Literal["float32", "bfloat16", "float16"]
ParamDtype = Literal["float32", "bfloat16"]
Remat = Literal["none", "full", "save_dots", "save_qkv", "save_proj"]
AttentionImpl = Literal["auto", "xla", "cudnn"]
Pool = Literal["last", "mean"]
Parametrization = Literal["sp", "mup"]
MODEL_CHOICES = {
    "positions": Positions,
    "rope_scaling": RopeScaling,
    "norm": NormKind,
    "norm_position": NormPosition,
    "mlp": MlpKind,
    "dtype": ComputeDtype,
    "param_dtype": ParamDtype,
    "remat": Remat,
    "attention_impl": AttentionImpl,
    "pool": Pool,
    "parametrization": Parametrization,
}

# Model shapes users know. Each entry overrides `config.model` fields.
_GPT2 = dict(
    positions="learned",
    norm="layernorm",
    norm_bias=True,
    norm_position="pre",
    mlp="gelu",
    attn_bias=True,
    mlp_bias=True,
    tie_embeddings=True,
    vocab_size=50257,
    max_seq_len=1024,
    norm_eps=1e-5,
    scaled_residual_init=True,
)
_LLAMA = dict(
    positions="rope",
    norm="rmsnorm",
    norm_bias=False,
    norm_position="pre",
    mlp="swiglu",
    attn_bias=False,
    mlp_bias=False,
    tie_embeddings=False,
    norm_eps=1e-5,
    scaled_residual_init=True,
)
MODEL_PRESETS: dict[str, dict] = {
    # GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm, GELU, tied embeddings.
    "gpt2-small": dict(_GPT2, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    "gpt2-medium": dict(_GPT2, d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "gpt2-large": dict(_GPT2, d_model=1280, n_layers=36, n_heads=20, d_ff=5120),
    "gpt2-xl": dict(_GPT2, d_model=1600, n_layers=48, n_heads=25, d_ff=6400),
    # Llama family: RoPE, pre-RMSNorm, SwiGLU, GQA, untied.
    "llama-tiny": dict(
        _LLAMA,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=192,
        vocab_size=512,
        max_seq_len=256,
        rope_theta=10000.0,
    ),
    "llama-150m": dict(
        _LLAMA,
        d_model=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=4,
        d_ff=2048,
        vocab_size=32000,
        max_seq_len=2048,
        rope_theta=10000.0,
    ),
    "llama-1b": dict(
        _LLAMA,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_ff=8192,
        vocab_size=128256,
        max_seq_len=8192,
        rope_theta=500000.0,
        tie_embeddings=True,
    ),
    "llama2-7b": dict(
        _LLAMA,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        d_ff=11008,
        vocab_size=32000,
        max_seq_len=4096,
        rope_theta=10000.0,
    ),
    "llama3-8b": dict(
        _LLAMA,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        vocab_size=128256,
        max_seq_len=8192,
        rope_theta=500000.0,
    ),
    # The original block (Vaswani et al. 2017, base size) as a decoder-only model:
    # sinusoidal positions, post-LayerNorm ("Add & Norm"), ReLU, tied, embeddings x sqrt(d).
    "transformer-2017": dict(
        positions="sinusoidal",
        norm="layernorm",
        norm_bias=True,
        norm_position="post",
        mlp="relu",
        attn_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        embed_scale=True,
        d_model=512,
        n_layers=6,
        n_heads=8,
        d_ff=2048,
        vocab_size=37000,
        max_seq_len=512,
        norm_eps=1e-6,
        scaled_residual_init=False,
    ),
    # Tiny shapes for CPU runs and tests.
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=512, max_seq_len=256),
    "gpt2-tiny": dict(
        _GPT2, d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=512, max_seq_len=256
    ),
}


def default_config() -> ml_collections.ConfigDict:
    """Every key of a run, with defaults right for a first run on one CPU."""
    c = ml_collections.ConfigDict()

    c.model = m = ml_collections.ConfigDict()
    m.vocab_size = 512  # real tokens; the tokenizer is trained to this size
    m.vocab_multiple = 128  # embedding rows padded to a multiple of this, for speed
    m.d_model = 64
    m.n_layers = 2
    m.n_heads = 4
    m.n_kv_heads = 0  # 0: same as n_heads (MHA); 1: MQA; else GQA
    m.head_dim = 0  # 0: d_model // n_heads
    m.d_ff = 0  # 0: 4*d_model (relu/gelu) or 8/3*d_model rounded to 64 (swiglu)
    m.max_seq_len = 256  # context length: size of learned positions and of the KV cache
    m.positions = "rope"  # sinusoidal | learned | rope | none
    m.rope_theta = 10000.0
    # RoPE frequency scaling: "" (none) | llama3 (Llama 3.1: long wavelengths divided by
    # the factor, short ones kept, the band between interpolated)
    m.rope_scaling = ""
    m.rope_scaling_factor = 8.0
    m.rope_low_freq_factor = 1.0
    m.rope_high_freq_factor = 4.0
    m.rope_original_max_positions = 8192
    m.norm = "rmsnorm"  # layernorm | rmsnorm
    m.norm_eps = 1e-6
    m.norm_bias = False  # LayerNorm bias (ignored by rmsnorm)
    m.norm_position = "pre"  # pre | post ("Add & Norm")
    m.mlp = "swiglu"  # relu | gelu (tanh form, GPT-2) | gelu_exact (erf, nanoGPT) | swiglu
    m.mlp_bias = False
    m.attn_bias = False
    m.qk_norm = False
    m.causal = True  # False: bidirectional (encoder objectives)
    m.num_classes = 0  # >0: a classification head instead of the LM head (task classify)
    m.pool = "last"  # classification head input: last (last real token) | mean (of real tokens)
    m.mask_token = False  # one embedding row past the vocab for mlm's mask token
    m.tie_embeddings = False
    m.embed_scale = False  # multiply token embeddings by sqrt(d_model) (2017 paper)
    m.init_std = 0.02
    m.scaled_residual_init = True  # output projections init std / sqrt(2 * n_layers)
    # sp (standard) | mup: init, Adam LRs, attention and logit scales follow µP relative to
    # a base model of width mup_base_width (0: d_model itself); rules in llm_jax/mup.py
    m.parametrization = "sp"
    m.mup_base_width = 0
    m.mup_base_head_dim = 0  # the base's head_dim: head_dim when width adds heads; 0: K / m
    m.dropout = 0.0
    m.dtype = "float32"  # compute dtype; bfloat16 on accelerators
    m.param_dtype = "float32"
    m.scan_layers = True  # nn.scan over layers: compile time independent of depth
    # none | full | save_dots | save_qkv (keep q, k, v) | save_proj (keep every projection)
    m.remat = "none"
    m.attention_impl = "auto"  # auto (cudnn on GPU, xla elsewhere) | xla | cudnn
    # On CPU, bias gradients summed over the batch by a matmul: 4-6% faster steps on small
    # GPT-2-style models, float rounding of those sums not bit-identical to the default's.
    m.cpu_matmul_bias_grads = False

    c.data = d = ml_collections.ConfigDict()
    d.source = "shakespeare"  # shakespeare | files | hf
    d.path = ""  # files: a path or glob (comma-separated for several)
    d.format = ""  # files: txt | jsonl | parquet | csv ('' = from the extension)
    d.text_field = "text"  # jsonl/parquet/csv/hf: the column holding the text
    d.txt_document = "file"  # txt: file (one document per file) | line (one per line)
    d.hf_name = ""  # hf: dataset name, e.g. roneneldan/TinyStories
    d.hf_config = ""
    d.hf_train_split = "train"
    d.hf_val_split = "validation"
    d.hf_streaming = False
    d.hf_max_documents = 0  # 0: all
    d.val_fraction = 0.01  # files/hf without a val split: share of documents held out
    d.val_path = ""  # files: a separate validation set (paths/globs as data.path); no holdout
    d.on_decode_error = "error"  # error | replace (undecodable bytes -> U+FFFD, counted)
    # '' trains one on the training split; else a .model file, or 'hf:DIR' for a Hugging
    # Face tokenizer (DIR holds tokenizer.json; needs the hf extra)
    d.tokenizer_path = ""
    d.tokenizer_type = "bpe"  # bpe | unigram
    d.tokenizer_max_chars = 20_000_000  # characters of training text fed to SentencePiece
    d.cache_dir = ""  # '' : $LLM_JAX_CACHE or ~/.cache/llm_jax (shared by a sweep)
    d.workers = 0  # tokenizer processes when a cache is built; 0: one per core, up to 8
    d.seq_len = 128
    d.segment_ids = False  # pass document ids so packed documents don't attend across
    d.num_val_batches = 8
    d.val_batch_size = 0  # 0: train.batch_size
    # None: the one corpus above. A weighted mixture: ((path, weight), ...), or
    # (name, path, weight) / dicts with corpus keys (llm_jax/mixture.py)
    d.sources = None

    c.train = t = ml_collections.ConfigDict()
    t.steps = 200
    t.tokens = 0  # >0: a token budget D; steps = tokens // (batch * seq_len)
    t.batch_size = 16  # global, in sequences
    t.microbatches = 1  # gradient accumulation inside the step
    t.lr = 3e-3
    t.schedule = "cosine"  # cosine | linear | wsd | constant | rsqrt
    t.warmup_steps = 20
    t.min_lr_ratio = 0.1
    t.decay_fraction = 0.2  # wsd: share of steps spent decaying
    t.decay_shape = "linear"  # wsd: linear | 1-sqrt (lr x (1 - sqrt(progress)), Hägele 2024)
    t.b1 = 0.9
    t.b2 = 0.95
    t.eps = 1e-8
    t.weight_decay = 0.1
    t.decay_embeddings = False
    t.grad_clip = 1.0  # global-norm clipping; 0 disables
    t.z_loss = 0.0  # coefficient of log(Z)^2
    t.log_every = 10
    t.eval_every = 100
    t.seed = 0
    t.compilation_cache_dir = ""  # '' : <cache_dir>/jax_compilation_cache

    c.checkpoint = k = ml_collections.ConfigDict()
    k.every = 100
    k.keep = 2  # latest checkpoints kept
    k.keep_every = 0  # >0: also keep every checkpoint at a multiple of this step, forever
    k.async_save = True

    c.eval = e = ml_collections.ConfigDict()
    e.tasks = ()  # task files evaluated at the end of training (llm_jax/evaluate.py)
    e.batch_size = 8  # rows per evaluation batch

    c.tracking = r = ml_collections.ConfigDict()  # llm_jax/tracking.py
    r.wandb_project = ""  # a W&B project: log to Weights & Biases too (the wandb extra)
    r.wandb_entity = ""  # the W&B team or user; '' = your default entity
    r.wandb_group = ""  # runs shown together; the sweep runner sets the sweep's name
    r.wandb_mode = ""  # online | offline | disabled; '' = the WANDB_MODE variable, else online

    _add_stage_two_sections(c)

    c.mesh = h = ml_collections.ConfigDict()
    h.data = -1  # -1: all devices left after the others
    h.fsdp = 1
    h.tensor = 1
    h.distributed = "auto"  # auto (TPU pod / SLURM) | on | off
    h.coordinator_address = ""  # on: 'host:port' of process 0; '' = let JAX detect the cluster
    h.num_processes = 0  # on, with coordinator_address: number of processes
    h.process_id = 0  # on, with coordinator_address: this process's index
    return c


def _add_stage_two_sections(c: ml_collections.ConfigDict) -> None:
    """The task, init and finetune sections (llm_jax/tasks/, llm_jax/finetune.py)."""
    c.task = s = ml_collections.ConfigDict()
    s.name = "lm"  # lm (next token) | classify | mlm (masked LM) | sft (prompt -> completion)
    s.path = ""  # classify/sft: a .jsonl/.csv file (train); '' = the embedded Shakespeare task
    s.val_path = ""  # classify/sft: the val file; '' = every 10th row of task.path
    s.text_field = "text"  # classify: the text column
    s.label_field = "label"  # classify: the label column
    s.labels = ()  # classify: the label set (filled from the train rows when empty)
    s.mask_rate = 0.15  # mlm: share of tokens chosen (80% masked, 10% random, 10% kept)
    s.max_val_examples = 256  # sft: val examples scored (loss and greedy exact match)
    c.init = i = ml_collections.ConfigDict()
    i.workdir = ""  # a training workdir whose params start this run (fresh optimizer, step 0)
    i.step = -1  # its checkpoint to read; -1: the latest
    # True: take that checkpoint's whole train state (params, optimizer, step, data
    # position), continuing the run there under this config (WSD cooldown branches)
    i.state = False
    c.finetune = f = ml_collections.ConfigDict()
    # param-path patterns kept frozen, e.g. ('token_embed', 'layer_0/*'); '/' joins names
    f.freeze = ()


def apply_preset(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Overwrite `config.model` with the named preset's shape; returns the config."""
    if name not in MODEL_PRESETS:
        raise ConfigError(
            f"unknown model preset {name!r}; choose one of: {', '.join(sorted(MODEL_PRESETS))}"
        )
    config.model.update(MODEL_PRESETS[name])
    return config


class ConfigError(UserError, ValueError):
    """A config value a user set is wrong; the message names the fix."""


# --- config files and overrides ------------------------------------------------------------


def load_python_file(path: str | Path, functions: tuple[str, ...], what: str) -> types.ModuleType:
    """Import a config or sweep file that must define `functions`; ConfigError otherwise.

    A gs:// file is imported from a local copy (llm_jax/storage.py)."""
    if str(path).startswith("gs://"):
        from llm_jax import storage  # gcsfs: only remote files pay for it

        if not storage.exists(path):
            raise ConfigError(f"{what} {path} not found (give the path of a .py file)")
        with storage.local_copy(path) as local:
            return load_python_file(local, functions, what)
    path = Path(path)
    if path.is_dir() or not path.exists():
        raise ConfigError(f"{what} {path} not found (give the path of a .py file)")
    spec = importlib.util.spec_from_file_location(f"_llm_jax_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{what} {path} line {e.lineno}: syntax error: {e.msg}") from e
    except Exception as e:
        raise ConfigError(f"{what} {path} failed to load: {type(e).__name__}: {e}") from e
    for fn in functions:
        if not callable(getattr(module, fn, None)):
            raise ConfigError(f"{what} {path} has no {fn}() function")
    return module


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """The ConfigDict that a config file's `get_config()` returns."""
    config = load_python_file(path, ("get_config",), "config file").get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config() of {path} returned {type(config).__name__}, "
            "not an ml_collections.ConfigDict"
        )
    return config


def with_defaults(stored: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A config read back from a run (config.json), keys added since filled with defaults.

    Keys the current code no longer has (e.g. from an older version) are dropped.
    """
    config = default_config()
    for section, values in stored.items():
        if section in config and isinstance(values, Mapping):
            for key, value in values.items():
                if key in config[section]:
                    config[section][key] = _coerce(f"{section}.{key}", config[section][key], value)
    return config


def _coerce(key: str, current: Any, value: Any) -> Any:
    """`value` (maybe command-line text) as the type of the key's current value."""
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if isinstance(current, bool) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if current is None:
                return value
            raise ConfigError(
                f"config.{key}: cannot read {value!r} as a {type(current).__name__}"
            ) from None
    if (
        current is None
        or isinstance(value, type(current))
        and not (isinstance(value, bool) and not isinstance(current, bool))
    ):
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, tuple | list) and isinstance(value, tuple | list):
        return type(current)(value)
    if isinstance(current, str):
        return str(value)
    raise ConfigError(f"config.{key} takes a {type(current).__name__}, got {value!r}")


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted-key overrides (`{'train.lr': 1e-3}`) applied.

    Values may be Python values or command-line text (parsed as a Python literal, else
    kept as a string for string keys). Unknown sections or keys raise ConfigError.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = config
        for i, part in enumerate(path):
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
            if not isinstance(node, ml_collections.ConfigDict):
                sections = ", ".join(config.keys())
                raise ConfigError(
                    f"config.{'.'.join(path[: i + 1])} is not a config section "
                    f"(sections: {sections})"
                )
        if not path or leaf not in node:
            raise ConfigError(
                f"config.{key} is not a config key (every key and its default "
                "is listed in llm_jax/config.py)"
            )
        node[leaf] = _coerce(key, node[leaf], value)
    return config


# --- derived sizes: the only place they are computed -------------------------------------


def n_kv_heads(m: ml_collections.ConfigDict) -> int:
    """Key/value heads (GQA); equals n_heads when unset."""
    return m.n_kv_heads or m.n_heads


def head_dim(m: ml_collections.ConfigDict) -> int:
    """Width of one attention head."""
    return m.head_dim or m.d_model // m.n_heads


def d_ff(m: ml_collections.ConfigDict) -> int:
    """Hidden width of the MLP (per branch for SwiGLU)."""
    if m.d_ff:
        return m.d_ff
    if m.mlp == "swiglu":  # keep the parameter count of a 4*d MLP, rounded for speed
        return 64 * math.ceil(8 * m.d_model / 3 / 64)
    return 4 * m.d_model


def padded_vocab(m: ml_collections.ConfigDict) -> int:
    """Embedding rows: vocab_size rounded up to vocab_multiple."""
    mult = max(1, m.vocab_multiple)
    return mult * math.ceil((m.vocab_size + m.mask_token) / mult)


# --- validation ---------------------------------------------------------------------------

_CHOICES = {
    **{f"model.{key}": typing.get_args(kind) for key, kind in MODEL_CHOICES.items()},
    "data.source": ("shakespeare", "files", "hf"),
    "data.format": ("", "txt", "jsonl", "parquet", "csv"),
    "data.txt_document": ("file", "line"),
    "data.on_decode_error": ("error", "replace"),
    "data.tokenizer_type": ("bpe", "unigram"),
    "train.schedule": ("cosine", "linear", "wsd", "constant", "rsqrt"),
    "train.decay_shape": ("linear", "1-sqrt"),
    "mesh.distributed": ("auto", "on", "off"),
    "task.name": ("lm", "classify", "mlm", "sft"),
    "tracking.wandb_mode": ("", "online", "offline", "disabled"),
}

_POSITIVE = (
    "model.vocab_size",
    "model.d_model",
    "model.n_layers",
    "model.n_heads",
    "model.max_seq_len",
    "data.seq_len",
    "data.num_val_batches",
    "train.batch_size",
    "train.microbatches",
    "train.log_every",
    "train.eval_every",
    "checkpoint.every",
    "checkpoint.keep",
)


def _get(config: ml_collections.ConfigDict, dotted: str):
    section, key = dotted.split(".")
    return config[section][key]


_RANGES = (
    # (key, low, high, low inclusive, high inclusive); None: unbounded
    ("train.min_lr_ratio", 0.0, 1.0, True, True),
    ("train.b1", 0.0, 1.0, True, False),
    ("train.b2", 0.0, 1.0, True, False),
    ("train.eps", 0.0, None, False, None),
    ("train.weight_decay", 0.0, None, True, None),
    ("train.warmup_steps", 0, None, True, None),
    ("train.decay_fraction", 0.0, 1.0, False, True),
    ("train.grad_clip", 0.0, None, True, None),
    ("train.seed", 0, None, True, None),
    ("train.z_loss", 0.0, None, True, None),
    ("train.tokens", 0, None, True, None),
    ("data.val_fraction", 0.0, 1.0, False, False),
    ("data.val_batch_size", 0, None, True, None),
    ("data.workers", 0, None, True, None),
    ("model.dropout", 0.0, 1.0, True, False),
    ("checkpoint.keep_every", 0, None, True, None),
    ("model.num_classes", 0, None, True, None),
    ("model.mup_base_width", 0, None, True, None),
    ("model.mup_base_head_dim", 0, None, True, None),
    ("task.mask_rate", 0.0, 1.0, False, False),
)


def _interval(low, high, low_in, high_in) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def _in_range(value, low, high, low_in, high_in) -> bool:
    above = value >= low if low_in else value > low
    below = high is None or (value <= high if high_in else value < high)
    return above and below


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    d = config.data
    if d.path and d.source == "shakespeare":
        d.source = "files"  # a path means local files; the default source is not a choice
    if d.path and d.source == "hf":
        raise ConfigError(
            "config.data.path is set but data.source='hf'; clear data.path or use "
            "data.source='files'"
        )
    for key, low, high, low_in, high_in in _RANGES:
        value = _get(config, key)
        if not _in_range(value, low, high, low_in, high_in):
            raise ConfigError(
                f"config.{key} must be {_interval(low, high, low_in, high_in)} (got {value})"
            )


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check the config; raise ConfigError naming the key and the fix. Returns the config."""
    _check_ranges(config)
    for key, choices in _CHOICES.items():
        value = _get(config, key)
        if value not in choices:
            raise ConfigError(
                f"config.{key}={value!r} is not one of {choices}; set --config.{key}=<one of them>"
            )
    for key in _POSITIVE:
        if _get(config, key) <= 0:
            raise ConfigError(f"config.{key} must be > 0 (got {_get(config, key)})")
    m = config.model
    if not m.head_dim and m.d_model % m.n_heads:
        raise ConfigError(
            f"config.model.d_model={m.d_model} is not divisible by n_heads={m.n_heads}; "
            "change one of them or set config.model.head_dim"
        )
    if m.n_heads % n_kv_heads(m):
        raise ConfigError(
            f"config.model.n_heads={m.n_heads} must be a multiple of n_kv_heads={n_kv_heads(m)}"
        )
    if m.positions == "rope" and head_dim(m) % 2:
        raise ConfigError(f"RoPE needs an even head_dim (got {head_dim(m)})")
    if config.data.seq_len > m.max_seq_len:
        raise ConfigError(
            f"config.data.seq_len={config.data.seq_len} exceeds config.model.max_seq_len="
            f"{m.max_seq_len}; raise max_seq_len or shorten seq_len"
        )
    t = config.train
    if t.steps <= 0 and t.tokens <= 0:
        raise ConfigError("set config.train.steps or config.train.tokens to a positive number")
    if t.batch_size % t.microbatches:
        raise ConfigError(
            f"config.train.batch_size={t.batch_size} is not divisible by "
            f"microbatches={t.microbatches}"
        )
    if t.lr <= 0:
        raise ConfigError(f"config.train.lr must be > 0 (got {t.lr})")
    if config.data.source == "files" and not config.data.path:
        raise ConfigError("config.data.source='files' needs config.data.path (a path or glob)")
    if config.data.val_path and config.data.source != "files":
        raise ConfigError("config.data.val_path needs data.source='files' (set data.path too)")
    if config.data.source == "hf" and not config.data.hf_name:
        raise ConfigError("config.data.source='hf' needs config.data.hf_name (e.g. 'wikitext')")
    _check_task(config)
    _check_sources(config)
    _check_tracking(config)
    return config


def _check_tracking(config: ml_collections.ConfigDict) -> None:
    """A W&B project needs wandb installed (llm_jax/tracking.py)."""
    if config.tracking.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "config.tracking.wandb_project is set but wandb is not installed; "
            "pip install -e '.[wandb]' (or unset the project)"
        )


def _check_sources(config: ml_collections.ConfigDict) -> None:
    """A `data.sources` mixture is well formed (each source validated as a config)."""
    if config.data.sources is not None:
        from llm_jax import mixture  # imports the data path (jax): only mixtures pay for it

        mixture.check_sources(config)


def _check_task(config: ml_collections.ConfigDict) -> None:
    """The task, init and finetune sections agree with the model."""
    name, m = config.task.name, config.model
    if not m.causal and name not in ("mlm", "classify"):
        raise ConfigError(
            f"config.model.causal=False with task.name={name!r} leaks the targets: a "
            "bidirectional model sees the next token it is asked to predict; set "
            "model.causal=True, or use task.name='mlm' or 'classify'"
        )
    if name == "mlm" and m.causal:
        raise ConfigError(
            "task.name='mlm' trains a bidirectional encoder; set config.model.causal=False"
        )
    if m.num_classes and name != "classify":
        raise ConfigError(
            f"config.model.num_classes={m.num_classes} (a classification head) needs "
            "task.name='classify'; set model.num_classes=0 for other tasks"
        )
    if (config.init.step >= 0 or config.init.state) and not config.init.workdir:
        raise ConfigError(
            "config.init.step and init.state need config.init.workdir (the run to start from)"
        )


def train_steps(config: ml_collections.ConfigDict) -> int:
    """Optimizer steps of the run: train.steps, or the token budget train.tokens."""
    t = config.train
    if t.tokens > 0:
        return max(1, t.tokens // (t.batch_size * config.data.seq_len))
    return t.steps
