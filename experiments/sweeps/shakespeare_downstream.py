"""Downstream scaling: the README's IsoFLOP study with genre classification after each point.

Every IsoFLOP point of experiments/sweeps/shakespeare_isoflop.py (a WSD cooldown branch:
4 budgets x 5-6 sizes) is followed by a short fine-tune on the embedded genre task
(experiments/configs/genre_classify.py: comedy / history / tragedy on held-out plays)
from its final params, in DIR/<trial>/finetune/genre; the constant-LR parents get none:

    llm-jax sweep experiments/sweeps/shakespeare_downstream.py \
        --workdir runs/shakespeare_downstream

results.csv gets the columns ft/genre/val/accuracy, ft/genre/val/majority_accuracy, ...
and DIR/plots/downstream.png draws accuracy vs pre-training compute and vs pre-training
loss, one line per model size. Rerunning resumes: a finished pre-training trial is not
rerun for its fine-tune.
"""

from pathlib import Path

from llm_jax.config import load_python_file
from llm_jax.scaling import sweep

_HERE = Path(__file__).resolve().parent
_ISOFLOP = load_python_file(_HERE / "shakespeare_isoflop.py", ("get_sweep",), "sweep file")
GENRE = str(_HERE.parent / "configs" / "genre_classify.py")
FINETUNE_STEPS = 150  # short: a fine-tune per point fits beside the study in the time budget
PARALLEL = 2


def get_config():
    """The pre-training base of the IsoFLOP study."""
    return _ISOFLOP.get_config()


def get_sweep():
    """The IsoFLOP study's trials, then a genre fine-tune of each point (64-token passages:
    the pre-trained models' context)."""
    return sweep.finetune_each(
        _ISOFLOP.get_sweep(),
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
