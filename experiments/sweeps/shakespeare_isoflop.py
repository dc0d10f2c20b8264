"""A small IsoFLOP study (Chinchilla approach 2) on the embedded Shakespeare corpus.

Three compute budgets x five model sizes, each model trained on the tokens its budget
buys (D = C / FLOPs per token, the cosine schedule matched to D); about eight minutes on
2 CPU cores:

    llm-jax sweep experiments/sweeps/shakespeare_isoflop.py --workdir runs/shakespeare_isoflop

Sizes come from `sweep.shape_for_params` with a narrow family (d_model = 32 x n_layers,
16-wide heads): d_model 16 to 96, 1 or 2 layers; the learning rate follows
`sweep.SizeRules` (about N^-1/3).
"""

from llm_jax.config import default_config
from llm_jax.scaling import sweep

BUDGETS = [2.5e11, 6e11, 1.5e12]  # training FLOPs, as the trainer counts them
# Target total parameters N. The optimum grows with the budget, so the largest budget
# trades the smallest size for a larger one; each profile then has its minimum inside.
LADDER = [1.2e4, 3.3e4, 5.2e4, 8e4, 1.4e5, 2.5e5]
SIZES = {2.5e11: LADDER[:5], 6e11: LADDER[:5], 1.5e12: LADDER[1:]}
PARALLEL = 2  # two single-threaded trials at once on 2 cores


def get_config():
    """The base: a Llama-style block on Shakespeare, 16 x 64-token batches."""
    config = default_config()
    config.model.update(vocab_size=512, max_seq_len=64, tie_embeddings=True)
    config.model.scan_layers = False  # 1-2 layers: unrolled trials finish ~15% sooner on a CPU
    config.data.seq_len = 64
    config.data.num_val_batches = 4
    config.train.update(batch_size=16, log_every=10, warmup_steps=10)
    config.checkpoint.every = 250
    return config


def get_sweep():
    """Every budget x every size."""
    return sweep.isoflop(get_config(), BUDGETS, SIZES, aspect=32, head_dim=16, tolerance=0.1)
