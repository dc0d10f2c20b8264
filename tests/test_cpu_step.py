"""The CPU forms of the train step's pieces give the plain forms' values and gradients; the
step's temporaries are what xla_cpu estimates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax import model as model_lib
from llm_jax import sharding as sharding_lib
from llm_jax import train as train_lib
from llm_jax import xla_cpu

# The CPU forms exist for XLA:CPU's optimized kernels: compare the programs users run.
pytestmark = pytest.mark.usefixtures("optimized_xla_module")


def _arrays(*shapes):
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    return [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes, strict=True)]


@pytest.mark.parametrize("w_is_OxI", [False, True])
@pytest.mark.parametrize("n_in, n_out", [(24, 40), (40, 24)])  # either operand the wider
def test_dense_cpu_path_equals_the_einsum_bit_for_bit(w_is_OxI, n_in, n_out):
    w_shape = (n_out, n_in) if w_is_OxI else (n_in, n_out)
    x_BxLxI, w, probe_BxLxO = _arrays((4, 8, n_in), w_shape, (4, 8, n_out))
    spec = "BLI,OI->BLO" if w_is_OxI else "BLI,IO->BLO"

    def plain(x, w):
        return (jnp.einsum(spec, x, w) * probe_BxLxO).sum()

    def ours(x, w):
        return (model_lib.dense(x, w, w_is_OxI) * probe_BxLxO).sum()

    assert jax.default_backend() == "cpu"
    np.testing.assert_array_equal(jax.jit(ours)(x_BxLxI, w), jax.jit(plain)(x_BxLxI, w))
    for got, want in zip(
        jax.jit(jax.grad(ours, (0, 1)))(x_BxLxI, w),
        jax.jit(jax.grad(plain, (0, 1)))(x_BxLxI, w),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


def test_bias_gradient_by_matmul_is_the_sum_to_float_rounding():
    y_BxLxNxK, bias_NxK, probe = _arrays((4, 16, 3, 8), (3, 8), (4, 16, 3, 8))

    def loss(matmul_grad):
        return lambda y, b: (model_lib.add_bias(y, b, matmul_grad) * probe).sum()

    (dy0, db0), (dy1, db1) = (
        jax.jit(jax.grad(loss(m), (0, 1)))(y_BxLxNxK, bias_NxK) for m in (0, 1)
    )
    np.testing.assert_array_equal(dy1, dy0)
    np.testing.assert_allclose(db1, probe.sum((0, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db1, db0, rtol=1e-5, atol=1e-5)


def test_step_temporaries_estimate_is_near_xlas():
    # The estimate decides whether a CPU run's threads share one heap (xla_cpu.py), so it
    # must follow XLA's own figure: here 48 MB (3% over the estimate), near the 64 MB line.
    config = config_lib.apply_preset(config_lib.default_config(), "gpt2-small")
    config.model.update(n_layers=2, n_heads=4, d_model=64, d_ff=256, vocab_size=512)
    config.model.scan_layers = False
    config.data.seq_len, config.train.batch_size = 128, 16
    config = config_lib.validate(config)
    setup = train_lib.make_train(config, sharding_lib.make_mesh(config.mesh, jax.devices()[:1]))
    with setup.context():
        args = jax.device_put(setup.schedule_args)
        step = setup.train_step.lower(setup.abstract_state, setup.abstract_batch, args).compile()
    xla_bytes = step.memory_analysis().temp_size_in_bytes
    assert abs(xla_cpu.step_temporaries_bytes(config) / xla_bytes - 1) < 0.15, xla_bytes
