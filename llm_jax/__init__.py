"""llm_jax: decoder-only Transformers in JAX/Flax, and scaling studies in one command."""

from llm_jax import xla_cpu as _xla_cpu

__version__ = "0.1.0"

_xla_cpu.set_default_flags()  # read when JAX starts its CPU backend, so set on import
_xla_cpu.reuse_freed_memory()  # on a CPU, unless LLM_JAX_REUSE_MEMORY=0
