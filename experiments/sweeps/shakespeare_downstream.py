"""Downstream scaling: a small IsoFLOP ladder with genre classification after each trial.

Three compute budgets x five model sizes on the embedded Shakespeare corpus (the README's
first IsoFLOP demo, cosine schedules matched to D = C / FLOPs per token; kept here as it
was measured, so this file does not move with experiments/sweeps/shakespeare_isoflop.py),
each trial followed by a short fine-tune on the embedded genre task (experiments/configs/
genre_classify.py: comedy / history / tragedy on held-out plays) from its final params,
in DIR/<trial>/finetune/genre:

    llm-jax sweep experiments/sweeps/shakespeare_downstream.py \
        --workdir runs/shakespeare_downstream

results.csv gets the columns ft/genre/val/accuracy, ft/genre/val/majority_accuracy, ...
and DIR/plots/downstream.png draws accuracy vs pre-training compute and vs pre-training
loss, one line per model size. Rerunning resumes: a finished pre-training trial is not
rerun for its fine-tune.
"""

from pathlib import Path

from llm_jax.config import default_config
from llm_jax.scaling import sweep

BUDGETS = [2.5e11, 6e11, 1.5e12]  # training FLOPs, as the trainer counts them
# Target total parameters N; the largest budget trades the smallest size for a larger one.
LADDER = [1.2e4, 3.3e4, 5.2e4, 8e4, 1.4e5, 2.5e5]
SIZES = {2.5e11: LADDER[:5], 6e11: LADDER[:5], 1.5e12: LADDER[1:]}
GENRE = str(Path(__file__).resolve().parent.parent / "configs" / "genre_classify.py")
FINETUNE_STEPS = 150  # short: 15 fine-tunes fit beside the ladder in the time budget
PARALLEL = 2  # two single-threaded trials at once on 2 cores


def get_config():
    """The pre-training base: a Llama-style block on Shakespeare, 16 x 64-token batches."""
    config = default_config()
    config.model.update(vocab_size=512, max_seq_len=64, tie_embeddings=True)
    config.model.scan_layers = False  # 1-2 layers: unrolled trials finish sooner on a CPU
    config.data.seq_len = 64
    config.data.num_val_batches = 4
    config.train.update(batch_size=16, log_every=10, warmup_steps=10)
    config.checkpoint.every = 250
    return config


def get_sweep():
    """Every budget x every size, then a genre fine-tune of each (64-token passages: the
    pre-trained models' context)."""
    ladder = sweep.isoflop(get_config(), BUDGETS, SIZES, aspect=32, head_dim=16, tolerance=0.1)
    return sweep.finetune_each(
        ladder,
        GENRE,
        name="genre",
        overrides={
            "data.seq_len": 64,
            "data.num_val_batches": 4,
            "train.steps": FINETUNE_STEPS,
            "train.lr": 3e-3,
            "train.log_every": 50,
            "train.eval_every": FINETUNE_STEPS,
            "checkpoint.every": FINETUNE_STEPS,
        },
    )
