"""µP learning-rate transfer: learning rate x width, standard parametrization vs µP.

Under standard parametrization (SP) the best Adam learning rate falls as the model widens;
under µP (Yang et al. 2022, "Tensor Programs V"; llm_jax/mup.py) it stays put, so a sweep
can tune it once at the base width and reuse it (`sweep.SizeRules(mup_base_width=...)`).
Each trial is a 2-layer, 4-head Llama-style model on Shakespeare; the width grows with the
head size, n_heads fixed (mup_lr_transfer_heads.py adds heads instead).
DIR/plots/lr_sensitivity.png draws the final loss against the learning rate, one line
per (width, parametrization):

    llm-jax sweep experiments/sweeps/mup_lr_transfer.py --workdir runs/mup_lr_transfer

42 short runs; the runs that differ only in lr train as one program (`--pack`). Width 128
(14 runs, 2 programs) took 6.5 CPU-minutes, 16 min at load 8-11 on 2 cores; width 64's
7 SP runs 1.7 CPU-minutes; minutes on one GPU.
"""

from llm_jax.config import default_config
from llm_jax.scaling import sweep

BASE_WIDTH = 64
WIDTHS = [64, 128, 256]
LRS = [2.0**-k for k in range(12, 5, -1)]  # 2.4e-4 to 1.6e-2, factors of 2
PARALLEL = 2  # two single-threaded trials at once on 2 cores


def get_config():
    """The base: 2 layers, 4 heads, 16 x 64-token batches, 300 steps: 30 of warmup, then
    cosine to a tenth of the peak (the default min_lr_ratio)."""
    config = default_config()
    config.model.update(n_layers=2, n_heads=4, vocab_size=512, max_seq_len=64)
    config.model.update(scan_layers=False, mup_base_width=BASE_WIDTH)
    config.data.seq_len = 64
    config.data.num_val_batches = 4
    config.train.update(steps=300, batch_size=16, warmup_steps=30, schedule="cosine")
    config.train.update(log_every=25, eval_every=150)
    config.checkpoint.every = 300
    return config


def get_sweep():
    """width x parametrization x learning rate."""
    return sweep.ablation(
        {"model.d_model": WIDTHS, "model.parametrization": ["sp", "mup"]}, lrs=LRS
    )
