"""`llm-jax eval --workdir W --task FILE [--task FILE ...]`: score a run on local tasks.

    llm-jax eval --workdir runs/tiny --task hellaswag_sample.jsonl --task wiki.txt

A .txt file (or .jsonl with a `text` field) gives loss, perplexity and bits per byte;
a .jsonl with `context`, `choices` and `label` gives multiple-choice accuracy (acc, and
acc_norm per character, as lm-evaluation-harness). Results go to W/eval.json and are
printed as a table. Batches are split over all devices (--fsdp/--tensor shard the
params too).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError


def _parser(prog: str):
    p = args_lib.parser(prog, __doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a training (or imported) run's directory")
    p.add_argument(
        "--task", action="append", required=True, help="a task file (repeat for several)"
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per batch")
    p.add_argument(
        "--max-len",
        type=int,
        default=None,
        help="longest scored sequence in tokens (default: the model's max_seq_len, at most "
        "4096); perplexity windows are this long",
    )
    p.add_argument("--fsdp", type=int, default=1, help="mesh fsdp size (params sharded)")
    p.add_argument("--tensor", type=int, default=1, help="mesh tensor size")
    return p


def main(argv: Sequence[str]) -> int:
    """Entry point of `llm-jax eval` (argv[0] is the program name)."""
    args = _parser(argv[0]).parse_args(list(argv[1:]))
    args_lib.require_workdir(args.workdir)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    from llm_jax import eval_results, evaluate, finetune
    from llm_jax import sharding as sharding_lib
    from llm_jax import workdir as workdir_lib

    finetune.refuse_classifier(args.workdir, "eval")
    tasks = [evaluate.load_task(path) for path in args.task]  # fail fast, before the model
    mesh_cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=args.fsdp, tensor=args.tensor))
    try:
        mesh = sharding_lib.make_mesh(mesh_cfg)
    except ValueError as e:
        raise UsageError(f"--fsdp/--tensor: {e}") from e
    config, params = workdir_lib.restore_params(args.workdir, mesh=mesh, step=args.step)
    tokenizer = workdir_lib.load_run_tokenizer(args.workdir, config)
    scorer = evaluate.Scorer(config.model, params, mesh, args.batch_size, args.max_len)
    results = evaluate.evaluate(scorer, tokenizer, tasks)
    eval_results.write_results(args.workdir, args.step, results)
    print(eval_results.format_table(results))
    return 0
