"""The fastest a GPT-2-style train step could run on this machine's matmul kernels.

    taskset -c 0 python tools/matmul_bound.py --n-layers 4 --n-heads 4 --d-model 256 \
        --seq-len 256 --batch 16 --vocab-size 2048

Compiles and times every matrix product of one train step (forward and backward; the
layout tools/bench.py runs: q, k, v, out, a 4 x d_model MLP, a tied head) each on its
own, with the kernel flags `import llm_jax` sets, and prints a table and the sum: if the
step did nothing but these products at these rates, it would reach the printed tokens/s.
Pin it (taskset) to time one thread. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import llm_jax  # noqa: F401  (XLA:CPU kernel flags and memory settings, before JAX starts)
from llm_jax import cli
from llm_jax.cli import args as args_lib


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line switches: the model and batch shape."""
    p = args_lib.parser("tools/matmul_bound.py", __doc__.splitlines()[0])
    for name, default in [
        ("n-layers", 4),
        ("n-heads", 4),
        ("d-model", 128),
        ("seq-len", 64),
        ("batch", 16),
        ("vocab-size", 512),
        ("repeats", 10),
    ]:
        p.add_argument(f"--{name}", type=args_lib.positive_int, default=default)
    args = p.parse_args(argv)
    if args.d_model % args.n_heads:
        p.error(f"--d-model {args.d_model} is not a multiple of --n-heads {args.n_heads}")
    return args


def step_products(args) -> list[tuple[str, tuple[int, ...], tuple[int, ...], int]]:
    """(name, a shape, b shape, times per step) of each product a @ b of one train step."""
    n, d, dh = args.batch * args.seq_len, args.d_model, args.d_model // args.n_heads
    products = []
    for name, k, m in [("q/k/v/out", d, d), ("mlp in", d, 4 * d), ("mlp out", 4 * d, d)]:
        count = args.n_layers * (4 if name == "q/k/v/out" else 1)
        products += [
            (f"{name}: x @ w", (n, k), (k, m), count),
            (f"{name}: dy @ w.T", (n, m), (m, k), count),
            (f"{name}: x.T @ dy", (k, n), (n, m), count),
        ]
    v = args.vocab_size
    products += [
        ("head: x @ embed.T", (n, d), (d, v), 1),
        ("head: dy @ embed", (n, v), (v, d), 1),
        ("head: dy.T @ x", (v, n), (n, d), 1),
    ]
    heads, t = args.batch * args.n_heads, args.seq_len
    # Each attention product's backward is two products of its forward's size.
    products += [
        ("attention: q @ k.T", (heads, t, dh), (heads, dh, t), 3 * args.n_layers),
        ("attention: p @ v", (heads, t, t), (heads, t, dh), 3 * args.n_layers),
    ]
    return products


def time_product(a_shape, b_shape, repeats: int) -> float:
    """Median seconds of one compiled a @ b (batched over a leading axis for 3-D shapes)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal(a_shape, dtype=np.float32))
    b = jnp.asarray(rng.standard_normal(b_shape, dtype=np.float32))
    product = jax.jit(jnp.matmul).lower(a, b).compile()
    for _ in range(2):
        product(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"{'product':24s} {'a':>16s} {'b':>16s} {'x/step':>6s} {'ms each':>8s} {'GFLOP/s':>8s}")
    total_s = total_flops = 0.0
    for name, a_shape, b_shape, count in step_products(args):
        seconds = time_product(a_shape, b_shape, args.repeats)
        flops = 2 * np.prod(a_shape) * b_shape[-1]
        total_s += count * seconds
        total_flops += count * flops
        shapes = f"{'x'.join(map(str, a_shape)):>16s} {'x'.join(map(str, b_shape)):>16s}"
        print(f"{name:24s} {shapes} {count:6d} {seconds * 1e3:8.2f} {flops / seconds / 1e9:8.1f}")
    tokens = args.batch * args.seq_len
    print(f"matmul GFLOP per step    {total_flops / 1e9:.2f}")
    print(f"matmul time per step     {total_s * 1e3:.1f} ms")
    print(f"tokens/s bound           {tokens / total_s:,.0f}")


if __name__ == "__main__":
    cli.run_tool(main)
