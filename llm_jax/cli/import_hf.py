"""`llm-jax import-hf SRC --workdir W`: a Hugging Face GPT-2 / Llama checkpoint as a workdir.

    llm-jax import-hf ./gpt2 --workdir runs/gpt2
    llm-jax import-hf --from-nanogpt out/ckpt.pt --tokenizer ./gpt2 --workdir runs/nano

SRC is an HF model directory, local or gs:// (config.json, *.safetensors, sharded or not,
or pytorch_model.bin; tokenizer.json). The workdir gets config.json, the tokenizer and an
Orbax checkpoint of the params at step 0, which `generate`, `eval` and fine-tuning read
like any run's. Tensors are converted one at a time: the host holds the model once.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Sequence

from llm_jax import storage
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError


def _parser(prog: str):
    p = args_lib.parser(prog, __doc__.split("\n\n")[0])
    p.add_argument("src", nargs="?", help="a Hugging Face model directory")
    p.add_argument("--workdir", required=True, help="the workdir to write (new or empty)")
    p.add_argument("--from-nanogpt", metavar="CKPT", help="read nanoGPT's ckpt.pt instead")
    p.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="a directory with tokenizer.json (default: SRC's; nanoGPT checkpoints have none)",
    )
    p.add_argument(
        "--param-dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="dtype of the stored params (auto: bfloat16 for bf16 checkpoints, else float32)",
    )
    p.add_argument(
        "--scan-layers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store layers stacked for nn.scan (the default config's layout)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    """Entry point of `llm-jax import-hf` (argv[0] is the program name)."""
    args = _parser(argv[0]).parse_args(list(argv[1:]))
    if bool(args.src) == bool(args.from_nanogpt):
        raise UsageError("give either SRC (an HF model directory) or --from-nanogpt CKPT")
    from llm_jax.hf import io  # heavy: jax, orbax

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:

        def local(path: str | None) -> str | None:
            """gs:// inputs are read from a downloaded copy (safetensors are memory-mapped)."""
            return path and stack.enter_context(storage.local_copy(path))

        options = dict(
            param_dtype=args.param_dtype,
            scan_layers=args.scan_layers,
            tokenizer_dir=local(args.tokenizer),
        )
        if args.from_nanogpt:
            config = io.import_nanogpt(local(args.from_nanogpt), args.workdir, **options)
        else:
            config = io.import_hf(local(args.src), args.workdir, **options)
    m = config.model
    print(
        f"imported {m.n_layers} layers, d_model {m.d_model}, vocab {m.vocab_size} "
        f"({m.param_dtype}) into {args.workdir} in {time.perf_counter() - start:.1f} s"
    )
    return 0
