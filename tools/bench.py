"""Time the real train step of a model preset on this machine's devices.

    python tools/bench.py --preset llama-150m --batch 32 --seq-len 1024 --dtype bfloat16
    python tools/bench.py --preset gpt2-small --attention cudnn --remat save_dots --no-scan
    python tools/bench.py --preset gpt2-small --n-layers 2 --d-model 96 --pack 16   # K models
    python tools/bench.py --preset gpt2-small --n-layers 2 --n-heads 6 --d-model 96 \
        --vocab-size 512 --batch 16 --seq-len 64 --dtype float32 --no-scan --threads 1

Builds the step with `llm_jax.train.make_train` (the one `llm-jax train` runs), on
random tokens, compiles it (timed), warms up, then times `--steps` steps one by one
and prints a table: tokens/s, step time (median), model TFLOP/s, MFU, compile time
and peak device memory. Run it by hand or on a GPU/TPU; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

from llm_jax import chips, cli, xla_cpu
from llm_jax import config as config_lib
from llm_jax import flops as flops_lib
from llm_jax import pack as pack_lib
from llm_jax import sharding as sharding_lib
from llm_jax import train as train_lib
from llm_jax.cli import args as args_lib


def _mesh(text: str) -> tuple[int, int, int]:
    """An argparse type: 'data,fsdp,tensor' mesh sizes, -1 for the rest."""
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} is not three integers data,fsdp,tensor")
    return sizes


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line switches."""
    p = args_lib.parser("tools/bench.py", __doc__.splitlines()[0])
    p.add_argument("--preset", default="llama-150m", choices=sorted(config_lib.MODEL_PRESETS))
    p.add_argument(
        "--batch", type=args_lib.positive_int, default=8, help="global batch, in sequences"
    )
    p.add_argument("--seq-len", type=args_lib.positive_int, default=512)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
    p.add_argument(
        "--remat", default="none", choices=list(config_lib.typing.get_args(config_lib.Remat))
    )
    # Any shape: these override the preset's (0 keeps the preset's value).
    for name in ("d-model", "n-layers", "n-heads", "d-ff", "vocab-size"):
        p.add_argument(
            f"--{name}",
            type=args_lib.nonnegative_int,
            default=0,
            help="override the preset's value",
        )
    p.add_argument("--no-scan", action="store_true", help="unrolled layers instead of nn.scan")
    p.add_argument(
        "--cpu-matmul-bias-grads",
        action="store_true",
        help="config.model.cpu_matmul_bias_grads (faster on CPU, not bit-identical)",
    )
    p.add_argument("--microbatches", type=args_lib.positive_int, default=1)
    p.add_argument(
        "--mesh", type=_mesh, default="-1,1,1", help="data,fsdp,tensor sizes (-1 = the rest)"
    )
    p.add_argument(
        "--pack",
        type=args_lib.positive_int,
        default=1,
        help="K models in one step (llm_jax/pack.py)",
    )
    p.add_argument(
        "--pack-mode",
        default="auto",
        choices=["auto", "vmap", "map"],
        help="how a pack steps its models (auto: vmap, map on CPU)",
    )
    p.add_argument(
        "--threads",
        type=args_lib.nonnegative_int,
        default=0,
        help="pin to this many CPUs (XLA:CPU runs one thread per CPU it may use; 0: all)",
    )
    p.add_argument("--warmup", type=args_lib.nonnegative_int, default=3)
    p.add_argument("--steps", type=args_lib.positive_int, default=20)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    """The config the benchmark runs."""
    config = config_lib.apply_preset(config_lib.default_config(), args.preset)
    shape = {k: getattr(args, k) for k in ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size")}
    if shape["d_model"] and not shape["d_ff"]:  # keep the preset's d_ff / d_model ratio
        shape["d_ff"] = config.model.d_ff * shape["d_model"] // config.model.d_model
    config.model.update({k: v for k, v in shape.items() if v})
    config.model.update(
        dtype=args.dtype,
        attention_impl=args.attention,
        remat=args.remat,
        scan_layers=not args.no_scan,
        cpu_matmul_bias_grads=args.cpu_matmul_bias_grads,
        max_seq_len=max(config.model.max_seq_len, args.seq_len),
    )
    config.data.seq_len = args.seq_len
    config.train.update(batch_size=args.batch, microbatches=args.microbatches, steps=1000)
    data, fsdp, tensor = args.mesh
    config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
    return config_lib.validate(config)


def _compiled(setup, config, pack: int, vectorized: bool | None = None):
    """(compiled step (state, batch) -> (state, metrics), state, batch, compile seconds):
    the plain step, or with pack > 1 the vmapped step of `pack` models on their own batches."""
    rng = np.random.default_rng(0)
    rows = (config.train.batch_size, config.data.seq_len + 1)
    tokens = rng.integers(0, config.model.vocab_size, (pack, *rows) if pack > 1 else rows)
    batch = {
        "inputs": tokens[..., :-1].astype(np.int32),
        "targets": tokens[..., 1:].astype(np.int32),
    }
    if pack == 1:
        args = jax.device_put(setup.schedule_args)
        start = time.perf_counter()
        step = setup.train_step.lower(setup.abstract_state, setup.abstract_batch, args).compile()
        return (
            lambda s, b: step(s, b, args),
            setup.init_state(0),
            jax.device_put(batch, setup.batch_sharding),
            (time.perf_counter() - start),
        )
    state = pack_lib.stack_states(setup, [setup.init_state(0)] * pack)
    batch = jax.device_put(batch, pack_lib.stacked_sharding(setup.batch_sharding))
    hparams = jax.device_put(pack_lib.hyperparameters([config] * pack, setup.total_steps))
    start = time.perf_counter()
    compiled = pack_lib.make_packed_step(setup, vectorized).lower(state, batch, hparams).compile()
    compile_s = time.perf_counter() - start
    return (lambda s, b: compiled(s, b, hparams)), state, batch, compile_s


def main(argv=None) -> None:
    """Run the benchmark and print its table."""
    args = parse_args(argv)
    if args.threads:  # before JAX starts its backend (llm_jax/xla_cpu.py: why affinity)
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    config = build_config(args)
    one_heap = xla_cpu.one_arena_for_step(config)  # as `llm-jax train` does
    setup = train_lib.make_train(config, sharding_lib.make_mesh(config.mesh))
    with setup.context():
        step, state, batch, compile_s = _compiled(
            setup, config, args.pack, {"vmap": True, "map": False}.get(args.pack_mode)
        )
        for _ in range(args.warmup):
            state, out = step(state, batch)
        jax.block_until_ready(state)  # not `out`: with --warmup 0 there is none
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            state, out = step(state, batch)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens_per_s = args.pack * args.batch * args.seq_len / step_s  # all models together
    per_token = flops_lib.flops_per_token(config.model, args.seq_len).detailed
    tflops = tokens_per_s * per_token / 1e12
    device = jax.devices()[0]
    peak = chips.peak_flops(device.device_kind)
    mfu = tflops * 1e12 / (peak * jax.device_count()) if peak else None
    stats = device.memory_stats() or {}
    peak_mem = stats.get("peak_bytes_in_use")
    rows = [
        ("device", f"{jax.device_count()} x {device.device_kind}"),
        (
            "model",
            f"{args.preset} ({flops_lib.param_counts(config.model).total / 1e6:.1f}M "
            f"params), {args.dtype}, attention={args.attention}, remat={args.remat}, "
            f"scan={not args.no_scan}",
        ),
        ("batch x seq_len", f"{args.batch} x {args.seq_len}"),
        ("CPUs the process may use", f"{len(os.sched_getaffinity(0))} of {os.cpu_count()}"),
        ("models per step (--pack)", f"{args.pack} ({args.pack_mode})"),
        (
            "CPU step temporaries",
            f"~{xla_cpu.step_temporaries_bytes(config) / 2**20:,.0f} MB (estimate); "
            f"{xla_cpu.REUSE_MEMORY_ENV}={xla_cpu.reuse_memory_mode()}"
            + (": one heap for every thread" if one_heap else ""),
        ),
        ("step time (median)", f"{step_s * 1e3:.2f} ms  (min {min(times) * 1e3:.2f})"),
        ("tokens/s", f"{tokens_per_s:,.0f}"),
        ("tokens/s per model", f"{tokens_per_s / args.pack:,.0f}"),
        ("model TFLOP/s", f"{tflops:.2f}"),
        ("MFU", f"{mfu:.1%}" if mfu is not None else "n/a (peak unknown for this device)"),
        ("compile time", f"{compile_s:.1f} s"),
        ("peak memory / device", f"{peak_mem / 2**30:.2f} GiB" if peak_mem else "n/a"),
        ("final loss", f"{float(np.ravel(out['train/loss'])[0]):.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    cli.run_tool(main)
