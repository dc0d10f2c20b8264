"""Test setup: CPU only, 8 fake devices for sharding checks, set before any JAX op."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)
