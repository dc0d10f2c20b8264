"""The defaults: a tiny Llama-style model on the embedded Shakespeare corpus.

Every key is documented in llm_jax/config.py. Copy this file to start an
experiment, or override keys on the command line:
    llm-jax train --config experiments/configs/base.py --config.model.d_model=128 --workdir W
"""

from llm_jax.config import default_config


def get_config():
    """The base config (llm_jax.config.default_config())."""
    return default_config()
