"""Mesh construction, logical rules, and sharded == single-device forward on 8 CPU devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from tiny_run import tiny_model as tiny

from llm_jax import config as config_lib
from llm_jax import model as model_lib
from llm_jax import sharding, train


def mesh_cfg(data=-1, fsdp=1, tensor=1):
    c = config_lib.default_config().mesh
    c.data, c.fsdp, c.tensor = data, fsdp, tensor
    return c


def test_make_mesh_sizes_and_errors():
    mesh = sharding.make_mesh(mesh_cfg(-1, 2, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(sharding.make_mesh(mesh_cfg(1, -1, 2)).shape)["fsdp"] == 4
    assert dict(sharding.make_mesh(mesh_cfg(2, 1, 1), jax.devices()[:2]).shape)["data"] == 2
    with pytest.raises(ValueError, match="needs 12 devices but 8"):
        sharding.make_mesh(mesh_cfg(3, 2, 2))
    with pytest.raises(ValueError, match="not a multiple of 3"):
        sharding.make_mesh(mesh_cfg(-1, 3, 1))
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        sharding.make_mesh(mesh_cfg(-1, -1, 2))


def test_param_and_batch_shardings_follow_the_rules():
    mesh = sharding.make_mesh(mesh_cfg(2, 2, 2))
    shapes = train.abstract_params(tiny(), mesh)
    shardings = jax.tree.map(lambda s: s.sharding, shapes)
    assert shapes["token_embed"].shape == (128, 32)
    assert shardings["token_embed"].spec == P("tensor", "fsdp")
    assert shardings["lm_head"].spec == P("fsdp", "tensor")
    assert shardings["layers"]["attn"]["query"].spec == P(None, "fsdp", "tensor", None)
    assert shardings["layers"]["mlp"]["down"].spec == P(None, "tensor", "fsdp")
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"), None)
    # A dimension the mesh does not divide (one MQA kv head over tensor=2) is replicated.
    mqa = train.abstract_params(tiny(n_kv_heads=1), mesh)
    assert mqa["layers"]["attn"]["key"].sharding.spec == P(None, "fsdp", None, None)
    # Logical specs (not boxed params) work too.
    spec = sharding.logical_to_sharding(
        mesh, {"x": P("activation_batch", "activation_length", "activation_mlp")}
    )
    assert spec["x"].spec == P(("data", "fsdp"), None, "tensor")


def test_sharded_forward_equals_single_device(capfd):
    m = tiny(positions="learned")
    mesh = sharding.make_mesh(mesh_cfg(2, 2, 2))
    model = model_lib.Transformer(model_lib.ModelConfig.from_config(m))
    shardings = jax.tree.map(lambda s: s.sharding, train.abstract_params(m, mesh))
    init = jax.jit(
        lambda k: nn.meta.unbox(model.init(k, jnp.zeros((1, 8), jnp.int32)))["params"],
        out_shardings=shardings,
    )
    params = init(jax.random.key(0))
    assert params["layers"]["mlp"]["up"].sharding.spec == P(None, "fsdp", "tensor")
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 100)
    segments = jnp.array([[1] * 8 + [2] * 8] * 4)

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        batch = jax.device_put((tokens, segments), sharding.batch_sharding(mesh))
        sharded = jax.jit(model.apply)({"params": params}, batch[0], segment_ids_BxL=batch[1])
    # The activation constraints took effect: logits split by batch and vocab.
    assert sharded.sharding.spec == P(("data", "fsdp"), None, "tensor")
    # ... and the partitioner found no layout it could reach only by replicating a tensor
    # (it did for embedding lookups from d_model-split tables).
    assert "Involuntary full rematerialization" not in capfd.readouterr().err

    single = jax.device_put(jax.device_get(params), jax.devices()[0])
    expected = jax.jit(model.apply)({"params": single}, tokens, segment_ids_BxL=segments)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(expected), atol=1e-5)
