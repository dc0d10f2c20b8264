"""`python -m llm_jax.cli ...` is `llm-jax ...` (the sweep runner starts trials this way)."""

from llm_jax.cli import main

main()
