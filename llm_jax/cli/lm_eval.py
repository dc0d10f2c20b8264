"""`llm-jax lm-eval --model llm_jax --model_args workdir=W --tasks ...`: lm-evaluation-harness.

    llm-jax lm-eval --model llm_jax --model_args workdir=runs/gpt2 --tasks hellaswag

lm_eval's own command line, every flag unchanged, with the `llm_jax` model type
(llm_jax/lm_eval_adapter.py) registered first. Plain `lm_eval --model llm_jax` cannot
see it: lm_eval (0.4.x) looks `--model` up in its model registry, which holds only its
built-in table (lm_eval/models/__init__.py) and classes registered by modules already
imported; it reads no package entry points and takes no `module:Class` path.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llm_jax.errors import UsageError


def main(argv: Sequence[str]) -> int:
    """Entry point of `llm-jax lm-eval` (argv[0] is the program name)."""
    try:
        from llm_jax import lm_eval_adapter
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("lm_eval"):
            raise
        raise UsageError(
            "llm-jax lm-eval needs lm-evaluation-harness: pip install -e '.[eval]'"
        ) from None
    args = list(argv[1:])
    if {"-h", "--help"} & set(args):
        print(f"usage: {argv[0]} [lm_eval's flags]\n\n{__doc__.strip()}\n\nlm_eval's help:\n")
        sys.stdout.flush()
    lm_eval_adapter.run_cli(args)
    return 0
