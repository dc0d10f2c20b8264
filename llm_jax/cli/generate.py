"""`llm-jax generate`: sample text from the latest checkpoint of a training workdir.

    llm-jax generate --workdir runs/tiny --prompt "ROMEO:" --num-samples 3

The workdir's config.json gives the model and data settings and its tokenizer.model the
tokenizer the run trained with: a workdir copied to another machine samples without its
data. Each prompt starts after an end-of-sequence token, the separator the model saw before
every training document, so the model continues it as the start of a document; with no
prompt the model writes from scratch.

On a terminal each sample is printed as it is produced (one sample at a time, in chunks of a few
tokens); otherwise all samples run as one batch and are printed at the end. Both give the same
text for the same seed: a sample's randomness depends only on (seed, prompt, sample).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

from llm_jax import sample, storage
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError
from llm_jax.model import ModelConfig
from llm_jax.sample import SamplingConfig

STREAM_CHUNK = 8  # decode steps between prints when streaming


def _parser(prog: str) -> argparse.ArgumentParser:
    p = args_lib.parser(prog, __doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a training run's directory")
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="text to continue (repeat for several prompts)",
    )
    p.add_argument(
        "--prompt-file",
        action="append",
        default=[],
        help="a file whose whole content is one prompt (repeatable)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="tokens to generate per sample (default: 200, or what fits in the "
        "model's context after the longest prompt)",
    )
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy decoding")
    p.add_argument("--top-k", type=int, default=50, help="0 turns top-k off")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus mass; 1 turns it off")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut prompts that do not fit from the left instead of failing",
    )
    p.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print tokens as they come (default: when stdout is a terminal)",
    )
    return p


def _stream_text(tokenizer, chunks: Iterator[list[int]]) -> Iterator[str]:
    """New text after each chunk of tokens; a trailing incomplete UTF-8 character waits."""
    printed = ""
    for tokens in chunks:
        text = tokenizer.decode(tokens).rstrip("\ufffd")
        if text.startswith(printed) and len(text) > len(printed):
            yield text[len(printed) :]
            printed = text
    final = tokenizer.decode(tokens)
    if final.startswith(printed) and len(final) > len(printed):
        yield final[len(printed) :]


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Entry point of `llm-jax generate` (argv[0] is the program name); prints to `out`."""
    parser = _parser(argv[0])
    args = parser.parse_args(list(argv[1:]))
    out = out or sys.stdout
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    try:
        sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    except ValueError as e:
        raise UsageError(str(e)) from e
    texts = list(args.prompt)
    for path in args.prompt_file:
        try:
            texts.append(storage.read_text(path))  # local or gs://
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(
                f"--prompt-file {path}: cannot read it as UTF-8 text ({type(e).__name__}: {e})"
            ) from e
    args_lib.require_workdir(args.workdir)
    texts = texts or [""]
    from llm_jax import finetune
    from llm_jax import workdir as workdir_lib  # heavy import, only when a model is restored

    finetune.refuse_classifier(args.workdir, "generate")
    config, params, tokenizer = workdir_lib.restore_run(args.workdir, args.step)
    prompts = [[tokenizer.eos_id, *tokenizer.encode(text)] for text in texts]
    max_new_tokens = args.max_new_tokens or max(
        1, min(200, config.model.max_seq_len - max(map(len, prompts)))
    )
    if out.isatty() if args.stream is None else args.stream:
        _print_streamed(
            out, texts, prompts, config, params, tokenizer, sampling, args, max_new_tokens
        )
        return 0
    samples = sample.generate(
        params,
        ModelConfig.from_config(config.model),
        prompts,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        eos_id=tokenizer.eos_id,
        seed=args.seed,
        num_samples=args.num_samples,
        truncate=args.truncate,
    )
    for p, text in enumerate(texts):
        for s, tokens in enumerate(samples[p]):
            out.write(_header(p, s) + text + tokenizer.decode(tokens) + "\n")
    return 0


def _header(p: int, s: int) -> str:
    return f"--- prompt {p + 1}, sample {s + 1} ---\n"


def _print_streamed(
    out: TextIO, texts, prompts, config, params, tokenizer, sampling, args, max_new_tokens: int
) -> None:
    """One sample at a time, printed every STREAM_CHUNK tokens."""
    sampler = sample.sampler_for(ModelConfig.from_config(config.model), sampling, tokenizer.eos_id)
    for p, (text, prompt) in enumerate(zip(texts, prompts, strict=True)):
        for s in range(args.num_samples):
            out.write(_header(p, s) + text)
            chunks = sampler.stream(
                params,
                [prompt],
                sample.row_keys(args.seed, [p], [s]),
                max_new_tokens,
                STREAM_CHUNK,
                args.truncate,
            )
            for piece in _stream_text(tokenizer, (rows[0] for rows in chunks)):
                out.write(piece)
                out.flush()
            out.write("\n")
