"""WSD branches against one cosine run per token count, on the embedded Shakespeare corpus.

The same two model sizes and three token counts, twice: `sweep.wsd_branches` (one
constant-LR run per size, a 20% linear cooldown branched at each token count) and one
cosine run per (size, tokens) ending at the branches' token counts. `llm-jax sweep
--collect` writes both into one results.csv (the `wsd_role` column tells them apart);
compare each branch's loss with the cosine run of the same size and D, and the summed C
of each design (a branch's C includes its parent's prefix, so the WSD design's cost is
its parents' C plus the branches' C beyond their branch points):

    llm-jax sweep experiments/sweeps/wsd_vs_cosine.py --workdir runs/wsd_vs_cosine
"""

from llm_jax.config import default_config
from llm_jax.scaling import sweep

SIZES = [3e4, 1.2e5]
TOKENS = [1e5, 2e5, 4e5]
COOLDOWN = 0.2
SHAPE = dict(aspect=32, head_dim=16, tolerance=0.1)
PARALLEL = 2


def get_config():
    """The demo's base: a Llama-style block on Shakespeare, 16 x 64-token batches."""
    config = default_config()
    config.model.update(vocab_size=512, max_seq_len=64, tie_embeddings=True, scan_layers=False)
    config.data.seq_len = 64
    config.data.num_val_batches = 4
    # Both designs decay to zero (WSD cooldowns always do), so only the schedule's shape
    # differs.
    config.train.update(batch_size=16, log_every=10, warmup_steps=10, min_lr_ratio=0.0)
    config.checkpoint.every = 250
    return config


def get_sweep():
    """The WSD design, then cosine runs at the branches' final token counts."""
    base = get_config()
    wsd = sweep.wsd_branches(base, SIZES, TOKENS, cooldown_fraction=COOLDOWN, **SHAPE)
    ends = sorted({t.overrides["train.tokens"] for t in wsd if t.parent})
    cosine = sweep.nd_grid(base, SIZES, ends, name_prefix="cosine-", **SHAPE)
    return wsd + cosine
