"""llm_jax: decoder-only Transformers in JAX/Flax, and scaling studies in one command."""

__version__ = "0.1.0"
