"""A real-scale IsoFLOP study (Chinchilla approach 2) on your corpus: budgets 1e18-1e21 FLOPs.

For a TPU pod or a GPU cluster. Set CORPUS below (or pass it as an override), check the
plan, then write launch scripts or run locally:

    llm-jax sweep experiments/sweeps/chinchilla_isoflop.py --workdir runs/chinchilla --dry-run
    llm-jax sweep experiments/sweeps/chinchilla_isoflop.py --workdir gs://B/chinchilla \\
        --launcher tpu            # or --launcher slurm --parallel 8
    llm-jax sweep --collect runs/chinchilla

Design (after Hoffmann et al. 2022, section 3.2): 7 budgets, 3x apart; per budget 7 sizes
log-spaced over 1/4x-4x around the 20-tokens-per-parameter optimum, so each profile has its
minimum inside the grid. Each model trains on D = C / (FLOPs per token) tokens with a cosine
schedule decaying to 10% over exactly D. Shapes: d_model = 128 x n_layers, 128-wide heads.
Learning rate, warmup and batch follow `sweep.SizeRules` (lr ∝ N^-1/3, batch ∝ N^0.25 from
0.5M tokens at 85M parameters). About 1.5e22 FLOPs in all (~10 days of a v5p-128).
"""

import math

from llm_jax.config import default_config
from llm_jax.scaling import sweep

CORPUS = "data/corpus/*.jsonl"  # your training text: files with a "text" field
BUDGETS = [1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21]
SPREAD = [1 / 4, 1 / 2.5, 1 / 1.6, 1, 1.6, 2.5, 4]  # x the expected optimum N
RULES = sweep.SizeRules(batch_tokens_ref=2**19)


def expected_optimum(budget: float) -> float:
    """N at 20 tokens per parameter (C = 6 N D = 120 N^2): the centre of each profile."""
    return math.sqrt(budget / 120)


def get_config():
    """A Llama-style block, 32k vocabulary, 2048-token context, bfloat16 compute."""
    config = default_config()
    config.model.update(vocab_size=32000, max_seq_len=2048, dtype="bfloat16", tie_embeddings=False)
    config.data.update(
        source="files",
        path=CORPUS,
        format="jsonl",
        seq_len=2048,
        num_val_batches=50,
        tokenizer_max_chars=200_000_000,
    )
    config.train.update(schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1, log_every=50)
    config.checkpoint.update(every=1000, keep=2)
    config.mesh.update(data=-1, fsdp=1)
    return config


def get_sweep():
    """7 budgets x 7 sizes."""
    sizes = {c: [expected_optimum(c) * f for f in SPREAD] for c in BUDGETS}
    return sweep.isoflop(
        get_config(), BUDGETS, sizes, rules=RULES, aspect=128, head_dim=128, evals=10
    )
