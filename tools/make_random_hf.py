"""A random-weight Hugging Face Llama directory of a published shape, written tensor by tensor.

    python tools/make_random_hf.py --shape llama-3.2-1b --out /tmp/llama1b
    /usr/bin/time -v llm-jax import-hf /tmp/llama1b --workdir /tmp/w1b   # time, peak RSS

Writes config.json and bf16 safetensors shards with their index, one tensor in memory at
a time and without torch, so import-hf's time and host memory can be measured on models
larger than this machine could build in transformers. The tensor names and shapes are
those export-hf writes for the same config. No tokenizer (import-hf warns and goes on).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from llm_jax import cli
from llm_jax.cli import args as args_lib
from llm_jax.hf import convert, io
from llm_jax.hf import safetensors as st

_LLAMA3 = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    num_key_value_heads=8,
    torch_dtype="bfloat16",
)


def _rope(factor: float) -> dict:
    return dict(
        rope_type="llama3",
        factor=factor,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )


SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        head_dim=64,
        tie_word_embeddings=True,
        rope_scaling=_rope(32.0),
    ),
    "llama-3.2-3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        head_dim=128,
        tie_word_embeddings=True,
        rope_scaling=_rope(32.0),
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        head_dim=128,
        tie_word_embeddings=False,
        rope_scaling=_rope(8.0),
    ),
}


def make(shape: str, out: Path, shard_gb: float, seed: int = 0) -> int:
    """Write the random model; returns its parameter count."""
    hf = dict(_LLAMA3, **SHAPES[shape])
    config = io.run_config(convert.model_overrides(hf), "bfloat16", scan_layers=True)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    tensors, _ = convert.export_tensors(config.model, {}, bf16)  # names and shapes only
    shapes = {name: shape for name, shape, _ in tensors}
    rng = np.random.default_rng(seed)

    def produce(name: str) -> np.ndarray:
        # Uniform in +-0.05 (std 0.029, close to the usual 0.02 init): faster than normal.
        return ((rng.random(shapes[name], np.float32) - 0.5) * 0.1).astype(bf16)

    args_lib.make_dir(out, "--out")
    st.write_checkpoint(out, tensors, produce, max_shard_bytes=int(shard_gb * 1e9))
    (out / io.CONFIG_JSON).write_text(json.dumps(hf, indent=1))
    return sum(int(np.prod(s)) for s in shapes.values())


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line switches."""
    p = args_lib.parser("tools/make_random_hf.py", __doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--out", type=Path, required=True, help="the directory to write")
    p.add_argument(
        "--shard-gb", type=args_lib.positive_float, default=1.0, help="largest safetensors file"
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Write the model and say how big it is."""
    args = parse_args(argv)
    start = time.perf_counter()
    n_params = make(args.shape, args.out, args.shard_gb)
    print(
        f"{args.shape}: {n_params / 1e9:.3f} B params, {2 * n_params / 1e9:.2f} GB bf16, "
        f"written to {args.out} in {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    cli.run_tool(main)
