"""µP learning-rate transfer when the width grows by adding heads of a fixed size.

experiments/sweeps/mup_lr_transfer.py with n_heads = d_model / 16 (4, 8, 16 heads of 16)
instead of 4 heads that widen; µP's base keeps head_dim 16 (`model.mup_base_head_dim`),
so its attention scale stays 1/sqrt(16) at every width, as in `sweep.SizeRules`' ladder.
At width 64 both files train the same models.

    llm-jax sweep experiments/sweeps/mup_lr_transfer_heads.py --workdir runs/mup_lr_transfer_heads

Widths 64 and 128 (`--only 'd_model=64-*,d_model=128-*'`, 28 runs) took 8.2 CPU-minutes
packed, 27 min at load 9-11 on 2 cores; width 256 is not measured yet.
"""

from pathlib import Path

from llm_jax.config import load_python_file
from llm_jax.scaling import sweep

study = load_python_file(Path(__file__).with_name("mup_lr_transfer.py"), ("get_sweep",), "sweep")

HEAD_DIM = 16
PARALLEL = 1
get_config = study.get_config


def get_sweep():
    """width (by heads) x parametrization x learning rate."""
    return [
        trial
        for width in study.WIDTHS
        for trial in sweep.ablation(
            {"model.d_model": [width], "model.parametrization": ["sp", "mup"]},
            lrs=study.LRS,
            overrides={"model.n_heads": width // HEAD_DIM, "model.mup_base_head_dim": HEAD_DIM},
        )
    ]
