"""Hugging Face interop: checkpoints (`convert`, `safetensors`, `io`) and tokenizers.

`llm-jax import-hf` / `export-hf` are the commands; `llm_jax.hf.io` their library side.
"""
