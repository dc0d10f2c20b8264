"""Decode speed: the KV-cache sampler against naive re-forwarding of the whole sequence.

    python tools/bench_decode.py [--new-tokens 256] [--batches 1,8] [--d-model 128]

Both decode greedily from a random-weight model (speed does not depend on the weights) and are
timed after a warm-up call (compilation excluded), best of 5 (cache) or 2 (naive) runs.
  cache:   llm_jax.sample (prefill once, then one token per step through the KV cache, all in
           one jitted while_loop).
  naive:   what a first implementation does: at every step run the full forward over the
           sequence so far and take the last position's argmax. The sequence is right-padded to
           a multiple of 32 so that 256 steps need ~9 compiled shapes, not 256 (causal attention
           keeps the padding out of the real positions).
Decode tokens/s counts new tokens of all rows per second of wall time (prefill included).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax import cli, sample
from llm_jax import config as config_lib
from llm_jax.cli import args as args_lib
from llm_jax.model import ModelConfig, Transformer

BUCKET = 32


def naive_generate(forward, params, prompts_BxP: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy decoding by re-running the full forward pass at every step."""
    tokens_BxL = prompts_BxP
    for _ in range(new_tokens):
        length = tokens_BxL.shape[1]
        padded = -(-length // BUCKET) * BUCKET
        next_B = forward(params, np.pad(tokens_BxL, ((0, 0), (0, padded - length))), length - 1)
        tokens_BxL = np.concatenate([tokens_BxL, np.asarray(next_B)[:, None]], axis=1)
    return tokens_BxL[:, prompts_BxP.shape[1] :]


def seconds(fn, repeats: int) -> float:
    """Best wall time of fn() over `repeats` calls, after a warm-up call (which compiles).

    The best, not the mean: on a shared machine the other processes only ever add time.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line switches."""
    p = args_lib.parser("tools/bench_decode.py", __doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=args_lib.positive_int, default=256)
    p.add_argument("--prompt-len", type=args_lib.positive_int, default=16)
    p.add_argument("--batches", type=args_lib.comma_list(args_lib.positive_int), default="1,8")
    p.add_argument("--d-model", type=args_lib.positive_int, default=128)
    p.add_argument("--layers", type=args_lib.positive_int, default=4)
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Print a table of decode tokens/s, cache vs naive, for each batch size."""
    args = parse_args(argv)
    config = config_lib.default_config()
    m = config.model
    m.update(
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=512,
        max_seq_len=args.prompt_len + args.new_tokens,
    )
    config.data.seq_len = m.max_seq_len
    config_lib.validate(config)  # e.g. a --d-model the 4 heads do not divide: one line
    model = Transformer(ModelConfig.from_config(m))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    sampler = sample.Sampler(
        ModelConfig.from_config(m), sample.SamplingConfig(temperature=0.0), eos_id=None
    )

    @jax.jit
    def forward(params, tokens_BxL, last):
        logits_BxLxV = model.apply({"params": params}, tokens_BxL)
        return jnp.argmax(logits_BxLxV[:, last, : m.vocab_size], axis=-1)

    print(
        f"model: d_model {m.d_model}, {m.n_layers} layers, GQA 4/2 heads, vocab {m.vocab_size};"
        f" prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy; "
        f"{jax.devices()[0].device_kind}"
    )
    print(f"{'batch':>5} | {'cache tok/s':>11} | {'naive tok/s':>11} | {'speed-up':>8} | same")
    for batch in args.batches:
        rng = np.random.default_rng(batch)
        prompts_BxP = rng.integers(0, m.vocab_size, (batch, args.prompt_len)).astype(np.int32)
        keys_B = sample.row_keys(0, range(batch), [0] * batch)
        results = {}

        def cached(prompts_BxP=prompts_BxP, keys_B=keys_B, results=results):
            *_, results["cache"] = sampler.stream(
                params, prompts_BxP.tolist(), keys_B, args.new_tokens
            )

        def naive(prompts_BxP=prompts_BxP, results=results):
            results["naive"] = naive_generate(forward, params, prompts_BxP, args.new_tokens)

        new = batch * args.new_tokens
        t_cache, t_naive = seconds(cached, 5), seconds(naive, 2)
        agree = np.mean(np.array(results["cache"]) == results["naive"])
        print(
            f"{batch:>5} | {new / t_cache:>11.0f} | {new / t_naive:>11.0f} | "
            f"{t_naive / t_cache:>7.1f}x | {agree:.0%}"
        )


if __name__ == "__main__":
    cli.run_tool(main)
