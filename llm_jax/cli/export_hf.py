"""`llm-jax export-hf --workdir W --out DIR [--step S]`: a run as a Hugging Face model.

    llm-jax export-hf --workdir runs/gpt2 --out exported/gpt2

DIR gets model.safetensors (sharded above 5 GB, with its index), config.json and the
tokenizer, which `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads as a
GPT2LMHeadModel or LlamaForCausalLM. A model with a switch neither has (post-norm,
sinusoidal positions, qk-norm...) is refused, naming the switch.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_jax.cli import args as args_lib


def _parser(prog: str):
    p = args_lib.parser(prog, __doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a training (or imported) run's directory")
    p.add_argument("--out", required=True, help="the directory to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="dtype of the written tensors (default: the params' own)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    """Entry point of `llm-jax export-hf` (argv[0] is the program name)."""
    args = _parser(argv[0]).parse_args(list(argv[1:]))
    from llm_jax import finetune
    from llm_jax.hf import io  # heavy: jax, orbax

    finetune.refuse_classifier(args.workdir, "export-hf")
    files = io.export_hf(args.workdir, args.out, step=args.step, dtype=args.dtype)
    print(f"wrote {', '.join(files)} to {args.out}")
    return 0
