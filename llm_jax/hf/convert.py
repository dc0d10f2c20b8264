"""GPT-2 and Llama checkpoints between Hugging Face's layout and llm_jax's, both ways.

Two halves, each a pair of inverses:
  - configs: `model_overrides(hf_config)` maps an HF `config.json` onto `config.model`
    keys, refusing in one line what llm_jax cannot express; `hf_config(model_cfg)` is
    the way back, refusing switches that have no HF equivalent.
  - weights: one table per family (`_RULES`) pairs each HF tensor with the llm_jax
    parameter(s) it holds and the reshapes between them. GPT-2 stores Conv1D weights as
    [in, out] and q, k, v fused in `c_attn`; Llama stores nn.Linear as [out, in].
    Embedding rows are padded to `padded_vocab` on import and cut back on export.
    `import_params` reads tensor by tensor (a stacked array per parameter when layers
    are scanned); `export_tensors` lists the HF tensors and makes each on demand.

The converted tree is checked against the model's own parameter shapes, so a renamed
parameter fails here, loudly, rather than in a checkpoint restore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llm_jax import config as config_lib
from llm_jax.errors import UserError


class ConvertError(UserError, ValueError):
    """A checkpoint or model that cannot be converted; the message says which switch."""


# --- configs --------------------------------------------------------------------------------


def _rope(hf: dict) -> dict:
    """theta and the scaling dict, from transformers 5 (`rope_parameters`) or 4 layouts."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return dict(rope_theta=float(theta), rope_scaling="")
    if kind != "llama3":
        raise ConvertError(
            f"rope_scaling type {kind!r} is not supported (only default and llama3); "
            "llm_jax cannot express this model's positions"
        )
    return dict(
        rope_theta=float(theta),
        rope_scaling="llama3",
        rope_scaling_factor=float(params["factor"]),
        rope_low_freq_factor=float(params["low_freq_factor"]),
        rope_high_freq_factor=float(params["high_freq_factor"]),
        rope_original_max_positions=int(params["original_max_position_embeddings"]),
    )


def _gpt2_overrides(hf: dict) -> dict:
    activation = hf.get("activation_function", "gelu_new")
    mlp = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}.get(activation)
    if mlp is None:
        raise ConvertError(f"GPT-2 activation_function={activation!r} is not supported")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise ConvertError(
            "this GPT-2 scales attention by layer index or not at all; llm_jax scales by "
            "1/sqrt(head_dim) only"
        )
    return dict(
        config_lib.MODEL_PRESETS["gpt2-small"],
        vocab_size=hf["vocab_size"],
        d_model=hf["n_embd"],
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
        max_seq_len=hf["n_positions"],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=mlp,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _llama_overrides(hf: dict) -> dict:
    if hf.get("hidden_act", "silu") != "silu":
        raise ConvertError(f"Llama hidden_act={hf['hidden_act']!r} is not supported (only silu)")
    n_heads = hf["num_attention_heads"]
    return dict(
        config_lib.MODEL_PRESETS["llama-150m"],
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_ff=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        attn_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **_rope(hf),
    )


_FAMILIES = {"gpt2": _gpt2_overrides, "llama": _llama_overrides}


def model_overrides(hf: dict) -> dict:
    """`config.model` values for an HF `config.json` (a dict); ConvertError if unsupported."""
    kind = hf.get("model_type")
    if kind not in _FAMILIES:
        raise ConvertError(
            f"model_type {kind!r} is not supported; import-hf reads {' and '.join(_FAMILIES)}"
        )
    try:
        return _FAMILIES[kind](hf)
    except KeyError as e:
        raise ConvertError(f"config.json of this {kind} model lacks {e.args[0]!r}") from None


def _kind(m: ml_collections.ConfigDict) -> str:
    return "llama" if m.mlp == "swiglu" or m.positions == "rope" else "gpt2"


def family(m: ml_collections.ConfigDict) -> str:
    """'gpt2' or 'llama': the HF architecture `config.model` maps to, or ConvertError."""
    kind = _kind(m)
    wanted = {
        "gpt2": dict(
            positions="learned", norm="layernorm", norm_bias=True, attn_bias=True, mlp_bias=True
        ),
        "llama": dict(positions="rope", norm="rmsnorm", mlp="swiglu"),
    }[kind]
    # µP's logit and attention multipliers have no place in an HF config.json.
    wanted.update(
        norm_position="pre", qk_norm=False, embed_scale=False, causal=True, parametrization="sp"
    )
    for key, value in wanted.items():
        if m[key] != value:
            raise ConvertError(
                f"config.model.{key}={m[key]!r} has no Hugging Face {kind} equivalent "
                f"(it needs {value!r}); this model cannot be exported"
            )
    if kind == "gpt2" and m.mlp not in ("gelu", "gelu_exact"):
        raise ConvertError(f"config.model.mlp={m.mlp!r} has no Hugging Face gpt2 equivalent")
    if kind == "gpt2" and config_lib.n_kv_heads(m) != m.n_heads:
        raise ConvertError("config.model.n_kv_heads: GPT-2 has no grouped-query attention")
    if kind == "gpt2" and config_lib.head_dim(m) * m.n_heads != m.d_model:
        raise ConvertError("config.model.head_dim: GPT-2 needs head_dim * n_heads == d_model")
    return kind


def hf_config(
    m: ml_collections.ConfigDict, dtype: str, bos_id: int | None, eos_id: int | None
) -> dict:
    """The HF `config.json` for `config.model` (GPT2LMHeadModel or LlamaForCausalLM)."""
    kind = family(m)
    common = dict(
        vocab_size=m.vocab_size,
        tie_word_embeddings=m.tie_embeddings,
        dtype=dtype,
        torch_dtype=dtype,  # transformers 4 reads this name
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    if kind == "gpt2":
        return dict(
            common,
            architectures=["GPT2LMHeadModel"],
            model_type="gpt2",
            n_embd=m.d_model,
            n_layer=m.n_layers,
            n_head=m.n_heads,
            n_inner=config_lib.d_ff(m),
            n_positions=m.max_seq_len,
            layer_norm_epsilon=m.norm_eps,
            activation_function="gelu" if m.mlp == "gelu_exact" else "gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    if m.get("rope_scaling"):
        rope = dict(
            rope_type="llama3",
            rope_theta=m.rope_theta,
            factor=m.rope_scaling_factor,
            low_freq_factor=m.rope_low_freq_factor,
            high_freq_factor=m.rope_high_freq_factor,
            original_max_position_embeddings=m.rope_original_max_positions,
        )
    return dict(
        common,
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_size=m.d_model,
        intermediate_size=config_lib.d_ff(m),
        num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads,
        num_key_value_heads=config_lib.n_kv_heads(m),
        head_dim=config_lib.head_dim(m),
        max_position_embeddings=m.max_seq_len,
        rms_norm_eps=m.norm_eps,
        hidden_act="silu",
        attention_bias=m.attn_bias,
        mlp_bias=m.mlp_bias,
        rope_theta=m.rope_theta,
        rope_parameters=rope,
        rope_scaling=None if rope["rope_type"] == "default" else rope,
    )


# --- weights --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes the reshapes need: D d_model, H/G query/kv heads, K head_dim, V vocab."""

    D: int
    H: int
    G: int
    K: int
    V: int
    V_padded: int

    @classmethod
    def of(cls, m: ml_collections.ConfigDict) -> Sizes:
        return cls(
            m.d_model,
            m.n_heads,
            config_lib.n_kv_heads(m),
            config_lib.head_dim(m),
            m.vocab_size,
            config_lib.padded_vocab(m),
        )


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor and the llm_jax parameter(s) it holds.

    `ours` are paths ('attn/query'; inside a layer for per-layer rules); `split` turns the
    HF array into ours (one array each), `merge` is its inverse.
    """

    hf: str
    ours: tuple[str, ...]
    split: Callable[[np.ndarray, Sizes], list[np.ndarray]]
    merge: Callable[[list[np.ndarray], Sizes], np.ndarray]


def _same(hf: str, ours: str) -> Rule:
    return Rule(hf, (ours,), lambda a, s: [a], lambda xs, s: xs[0])


def _linear(hf: str, ours: str) -> Rule:
    """nn.Linear [out, in] <-> llm_jax [in, out]."""
    return Rule(hf, (ours,), lambda a, s: [a.T], lambda xs, s: xs[0].T)


def _heads(hf: str, ours: str, kind: str, transpose: bool) -> Rule:
    """A q/k/v projection (or bias) with heads split out: [D, N*K] <-> [D, N, K]."""

    def n(s: Sizes) -> int:
        return s.H if kind == "q" else s.G

    def split(a, s):
        a = a.T if transpose else a
        return [a.reshape(*a.shape[:-1], n(s), s.K)]

    def merge(xs, s):
        a = xs[0].reshape(*xs[0].shape[:-2], n(s) * s.K)
        return a.T if transpose else a

    return Rule(hf, (ours,), split, merge)


def _out(hf: str, transpose: bool) -> Rule:
    """The attention output projection: HF [H*K, D] (Conv1D) or [D, H*K] <-> [H, K, D]."""

    def split(a, s):
        a = a.T if transpose else a
        return [a.reshape(s.H, s.K, a.shape[-1])]

    def merge(xs, s):
        a = xs[0].reshape(s.H * s.K, xs[0].shape[-1])
        return a.T if transpose else a

    return Rule(hf, ("attn/out",), split, merge)


def _fused_qkv(hf: str, suffix: str) -> Rule:
    """GPT-2's c_attn: q, k, v concatenated on the last axis ([D, 3D] or [3D])."""
    ours = tuple(f"attn/{name}{suffix}" for name in ("query", "key", "value"))

    def split(a, s):
        return [p.reshape(*p.shape[:-1], s.H, s.K) for p in np.split(a, 3, axis=-1)]

    def merge(xs, s):
        return np.concatenate([x.reshape(*x.shape[:-2], s.H * s.K) for x in xs], axis=-1)

    return Rule(hf, ours, split, merge)


def _embedding(hf: str) -> Rule:
    """Token embeddings [V, D] <-> [V_padded, D]: padding rows are zeros (never used)."""

    def split(a, s):
        return [np.pad(a, ((0, s.V_padded - a.shape[0]), (0, 0)))]

    return Rule(hf, ("token_embed",), split, lambda xs, s: xs[0][: s.V])


def _lm_head(hf: str) -> Rule:
    """Output head: HF [V, D] <-> [D, V_padded]."""

    def split(a, s):
        return [np.pad(a.T, ((0, 0), (0, s.V_padded - a.shape[0])))]

    return Rule(hf, ("lm_head",), split, lambda xs, s: xs[0][:, : s.V].T)


def _gpt2_rules(m: ml_collections.ConfigDict) -> tuple[list[Rule], list[Rule]]:
    """GPT-2's tensors; nanoGPT's bias=False models lack every bias."""
    top = [_embedding("transformer.wte.weight"), _same("transformer.wpe.weight", "pos_embed")]
    top.append(_same("transformer.ln_f.weight", "final_norm/scale"))
    if m.norm_bias:
        top.append(_same("transformer.ln_f.bias", "final_norm/bias"))
    if not m.tie_embeddings:
        top.append(_lm_head("lm_head.weight"))
    layer = [
        _same("ln_1.weight", "attn_norm/scale"),
        _fused_qkv("attn.c_attn.weight", ""),
        _out("attn.c_proj.weight", transpose=False),
        _same("ln_2.weight", "mlp_norm/scale"),
        _same("mlp.c_fc.weight", "mlp/up"),
        _same("mlp.c_proj.weight", "mlp/down"),
    ]
    if m.norm_bias:
        layer += [_same("ln_1.bias", "attn_norm/bias"), _same("ln_2.bias", "mlp_norm/bias")]
    if m.attn_bias:
        layer += [
            _fused_qkv("attn.c_attn.bias", "_bias"),
            _same("attn.c_proj.bias", "attn/out_bias"),
        ]
    if m.mlp_bias:
        layer += [_same("mlp.c_fc.bias", "mlp/up_bias"), _same("mlp.c_proj.bias", "mlp/down_bias")]
    return top, layer


def _llama_rules(m: ml_collections.ConfigDict) -> tuple[list[Rule], list[Rule]]:
    top = [_embedding("model.embed_tokens.weight"), _same("model.norm.weight", "final_norm/scale")]
    if not m.tie_embeddings:
        top.append(_lm_head("lm_head.weight"))
    layer = [
        _same("input_layernorm.weight", "attn_norm/scale"),
        _same("post_attention_layernorm.weight", "mlp_norm/scale"),
        _heads("self_attn.q_proj.weight", "attn/query", "q", transpose=True),
        _heads("self_attn.k_proj.weight", "attn/key", "kv", transpose=True),
        _heads("self_attn.v_proj.weight", "attn/value", "kv", transpose=True),
        _out("self_attn.o_proj.weight", transpose=True),
        _linear("mlp.gate_proj.weight", "mlp/gate"),
        _linear("mlp.up_proj.weight", "mlp/up"),
        _linear("mlp.down_proj.weight", "mlp/down"),
    ]
    if m.attn_bias:
        layer += [
            _heads("self_attn.q_proj.bias", "attn/query_bias", "q", transpose=False),
            _heads("self_attn.k_proj.bias", "attn/key_bias", "kv", transpose=False),
            _heads("self_attn.v_proj.bias", "attn/value_bias", "kv", transpose=False),
            _same("self_attn.o_proj.bias", "attn/out_bias"),
        ]
    if m.mlp_bias:
        layer += [_same(f"mlp.{p}_proj.bias", f"mlp/{p}_bias") for p in ("gate", "up", "down")]
    return top, layer


_LAYER_PREFIX = {"gpt2": "transformer.h.{i}.", "llama": "model.layers.{i}."}


def rules(m: ml_collections.ConfigDict) -> list[tuple[Rule, int | None]]:
    """Every (rule, layer index or None) of the model, with full HF tensor names."""
    kind = _kind(m)
    top, layer = (_gpt2_rules if kind == "gpt2" else _llama_rules)(m)
    out = [(r, None) for r in top]
    prefix = _LAYER_PREFIX[kind]
    for i in range(m.n_layers):
        out += [(dataclasses.replace(r, hf=prefix.format(i=i) + r.hf), i) for r in layer]
    return out


def _our_path(path: str, layer: int | None, scanned: bool) -> tuple[str, ...]:
    if layer is None:
        return tuple(path.split("/"))
    return ("layers" if scanned else f"layer_{layer}", *path.split("/"))


def abstract_params(m: ml_collections.ConfigDict) -> dict:
    """The model's parameter tree as ShapeDtypeStructs (no memory)."""
    from llm_jax.model import ModelConfig, Transformer

    model = Transformer(ModelConfig.from_config(m))
    tokens = jnp.zeros((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens)["params"])
    return nn.meta.unbox(boxed)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _flat(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def import_params(m: ml_collections.ConfigDict, read: Callable[[str], np.ndarray]) -> dict:
    """llm_jax params (numpy, `param_dtype`) of `config.model` from HF tensors.

    `read(hf_name)` returns one HF tensor; it is called once per name and its result is
    dropped once converted. Scanned layers fill one preallocated [n_layers, ...] array
    per parameter.
    """
    sizes, scanned = Sizes.of(m), m.scan_layers
    dtype = np.dtype(jnp.dtype(m.param_dtype))
    expected = {p: s.shape for p, s in _flat(abstract_params(m)).items()}
    params: dict = {}
    for rule, layer in rules(m):
        parts = rule.split(read(rule.hf), sizes)
        for path, part in zip(rule.ours, parts, strict=True):
            full = _our_path(path, layer, scanned)
            if scanned and layer is not None:
                if layer == 0:
                    _set(params, full, np.empty((m.n_layers, *part.shape), dtype))
                _get(params, full)[layer] = part
            else:
                _set(params, full, np.asarray(part, dtype))
    got = {p: a.shape for p, a in _flat(params).items()}
    if got != expected:
        wrong = sorted(set(got.items()) ^ set(expected.items()))[:3]
        raise AssertionError(f"converted params differ from the model's: {wrong}")
    return params


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def export_tensors(
    m: ml_collections.ConfigDict, params: dict, dtype: np.dtype
) -> tuple[list[tuple[str, tuple[int, ...], np.dtype]], Callable[[str], np.ndarray]]:
    """(HF name, shape, dtype) of every tensor, and `produce(name)` making one of them."""
    sizes, scanned = Sizes.of(m), m.scan_layers
    by_name = {rule.hf: (rule, layer) for rule, layer in rules(m)}

    def produce(name: str) -> np.ndarray:
        rule, layer = by_name[name]
        parts = []
        for path in rule.ours:
            value = _get(params, _our_path(path, layer, scanned))
            if scanned and layer is not None:
                value = value[layer]
            parts.append(np.asarray(jax.device_get(value)))
        return np.asarray(rule.merge(parts, sizes), dtype)

    abstract = abstract_params(m)

    def shape(rule: Rule, layer: int | None) -> tuple[int, ...]:
        parts = []
        for path in rule.ours:
            s = _get(abstract, _our_path(path, layer, scanned)).shape
            # A zero-stride stand-in: the merge's reshapes and transposes cost no memory.
            parts.append(np.broadcast_to(np.int8(0), s[1:] if scanned and layer is not None else s))
        return rule.merge(parts, sizes).shape

    tensors = [(rule.hf, shape(rule, layer), np.dtype(dtype)) for rule, layer in rules(m)]
    return tensors, produce
