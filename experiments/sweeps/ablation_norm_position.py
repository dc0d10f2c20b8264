"""Ablation: pre-norm vs post-norm blocks across learning rates (3 seeds each).

Post-norm ("Add & Norm", Vaswani et al. 2017) puts the residual stream through a norm
after every block; pre-norm (GPT-2 onwards) leaves it untouched. Post-norm is known to need
warmup and a lower learning rate (Xiong et al. 2020, "On Layer Normalization in the
Transformer Architecture"): the plot DIR/plots/lr_sensitivity.png shows the final loss vs
learning rate per variant, seeds as error bars. About 2 hours on 2 CPU cores, minutes on
one GPU:

    llm-jax sweep experiments/sweeps/ablation_norm_position.py --workdir runs/norm_position
"""

from llm_jax.config import default_config
from llm_jax.scaling import sweep


def get_config():
    """A 4-layer, d_model 128 Llama-style model on Shakespeare, 1,000 steps."""
    config = default_config()
    config.model.update(d_model=128, n_layers=4, n_heads=4, vocab_size=512, max_seq_len=128)
    config.data.seq_len = 128
    config.train.update(steps=1000, batch_size=32, warmup_steps=50, eval_every=250)
    config.checkpoint.every = 500
    return config


def get_sweep():
    """norm_position x 6 learning rates x 3 seeds."""
    return sweep.ablation(
        {"model.norm_position": ["pre", "post"]},
        lrs=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
        seeds=[0, 1, 2],
    )
