"""Orbax checkpoints: resharding onto another mesh, shape checks, params-only restore, signals."""

import json
import os
import signal

import jax
import numpy as np
import pytest
from tiny_run import tiny_train_config

from llm_jax import checkpoint as ckpt_lib
from llm_jax import sharding as sharding_lib
from llm_jax import train as train_lib
from llm_jax import workdir as workdir_lib

_config = tiny_train_config


def _setup(config, **mesh):
    mesh_cfg = config.mesh
    mesh_cfg.update(dict(data=1, fsdp=1, tensor=1), **mesh)
    n = mesh_cfg.data * mesh_cfg.fsdp * mesh_cfg.tensor
    return train_lib.make_train(config, sharding_lib.make_mesh(mesh_cfg, jax.devices()[:n]))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A train state saved from an 8-way data-parallel mesh."""
    workdir = tmp_path_factory.mktemp("ckpt")
    config = _config()
    setup = _setup(config, data=8)
    with setup.context():
        state = setup.init_state(0)
    checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), every=1, keep=2)
    meta = {"step": 7, "model": config.model.to_dict(), "data": [{"position": 3}]}
    assert checkpointer.save(7, state, meta)
    assert not checkpointer.save(7, state, meta)  # already there
    checkpointer.close()
    with open(workdir / "config.json", "w") as f:
        json.dump(config.to_dict(), f)
    return workdir, jax.device_get(state)


def test_restore_onto_another_mesh(saved):
    workdir, expected = saved
    setup = _setup(_config(), data=2, fsdp=2, tensor=2)
    checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), read_only=True)
    assert checkpointer.latest_step() == 7
    state, meta = checkpointer.restore(7, setup.abstract_state)
    checkpointer.close()
    assert meta["data"] == [{"position": 3}]
    kernel = state["params"]["layers"]["mlp"]["up"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert kernel.sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
    mu = state["opt_state"][1][0].mu["layers"]["mlp"]["up"]
    assert mu.sharding == kernel.sharding  # optimizer moments follow their params
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), expected)


def test_other_model_shape_is_refused_clearly(saved):
    workdir, _ = saved
    config = _config(d_model=64)
    setup = _setup(config)
    checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), read_only=True)
    with pytest.raises(
        ckpt_lib.CheckpointError, match=r"another model shape \(d_model: checkpoint 32, config 64\)"
    ):
        checkpointer.restore(7, setup.abstract_state, config.model.to_dict())
    with pytest.raises(ckpt_lib.CheckpointError, match="does not match this run's state"):
        checkpointer.restore(7, setup.abstract_state)  # without the config: names the arrays
    checkpointer.close()


def test_restore_params_only(saved):
    workdir, expected = saved
    config, params = workdir_lib.restore_params(str(workdir))
    assert config.model.d_model == 32
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), expected["params"])
    with pytest.raises(ckpt_lib.CheckpointError, match="not found"):
        workdir_lib.restore_params(str(workdir / "nowhere"))


def test_preemption_guard_turns_signals_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with ckpt_lib.PreemptionGuard() as guard:
        assert guard.requested is None
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process without the guard
        assert guard.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    assert ckpt_lib.gather_host_states({"a": 1}) == [{"a": 1}]
    assert ckpt_lib.any_host(True) and not ckpt_lib.any_host(False)


def _save_steps(directory, steps, **options):
    """Tiny states saved at `steps` (one device), each with values of its own: the initial
    state plus the step (one compiled init, not one per seed); returns (setup, {step: state})."""
    config = _config()
    setup = _setup(config)
    checkpointer = ckpt_lib.Checkpointer(str(directory), every=1, async_save=False, **options)
    states = {}
    with setup.context():
        initial = setup.init_state(0)
        for step in steps:
            states[step] = jax.tree.map(lambda x, step=step: x + step, initial)
            checkpointer.save(step, states[step], {"step": step, "data": [{}]})
    checkpointer.close()
    return setup, jax.device_get(states)


def _largest_file(folder):
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    return max(files, key=os.path.getsize)


def _flip_bytes(path):
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0x55
    open(path, "wb").write(bytes(data))


CORRUPTIONS = {
    "truncated": lambda folder: open(_largest_file(folder), "r+b").truncate(100),
    "zero-filled": lambda folder: open(_largest_file(folder), "r+b").write(
        b"\0" * os.path.getsize(_largest_file(folder))
    ),
    "partly deleted": lambda folder: os.remove(_largest_file(folder)),
    "meta deleted": lambda folder: os.remove(os.path.join(folder, "meta", "metadata")),
    "flipped bytes": lambda folder: _flip_bytes(_largest_file(folder)),
}


@pytest.mark.parametrize("fault", sorted(CORRUPTIONS))
# The reads Orbax abandons print no tracebacks (they reach pytest as unraisable exceptions).
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_good_one(tmp_path, fault, caplog):
    directory = tmp_path / "checkpoints"
    setup, states = _save_steps(directory, [2, 4])
    CORRUPTIONS[fault](str(directory / "4"))
    checkpointer = ckpt_lib.Checkpointer(str(directory))
    with caplog.at_level("WARNING", logger="llm_jax.checkpoint"):
        step, state, meta = checkpointer.restore_latest(setup.abstract_state)
    assert step == 2 and meta["step"] == 2
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), states[2])
    assert "does not restore" in caplog.text and "resuming from step 2" in caplog.text
    assert checkpointer.steps() == [2]  # the bad one moved aside, kept for inspection
    assert os.listdir(tmp_path / ckpt_lib.CORRUPT_DIR)[0].startswith("4-")
    checkpointer.close()


def test_no_restorable_checkpoint_lists_what_was_found(tmp_path):
    directory = tmp_path / "checkpoints"
    setup, _ = _save_steps(directory, [2, 4])
    for step in (2, 4):
        _flip_bytes(_largest_file(str(directory / str(step))))
    checkpointer = ckpt_lib.Checkpointer(str(directory))
    with pytest.raises(
        ckpt_lib.CheckpointError, match=r"none of the 2 checkpoints .*step 4: .*step 2: "
    ):
        checkpointer.restore_latest(setup.abstract_state)
    assert checkpointer.steps() == [2, 4]  # nothing moved when nothing restores
    checkpointer.close()
    assert (
        ckpt_lib.Checkpointer(str(tmp_path / "empty")).restore_latest(setup.abstract_state) is None
    )


def test_keep_every_preserves_intermediate_checkpoints(tmp_path):
    directory = tmp_path / "checkpoints"
    _save_steps(directory, [1, 2, 3, 4, 5], keep=1, keep_every=2)
    checkpointer = ckpt_lib.Checkpointer(str(directory), read_only=True)
    assert checkpointer.steps() == [2, 4, 5]
    checkpointer.close()


def test_fingerprints_of_grouped_leaves_are_each_leafs_own(monkeypatch):
    """Small leaves share one program per group (and per set of devices); each still gets
    its own fingerprint, the value checkpoints written before grouping recorded."""
    mesh = sharding_lib.make_mesh(_config().mesh, jax.devices())
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rng = np.random.default_rng(0)
    state = {
        "a": jax.numpy.asarray(rng.standard_normal((7, 5, 3)), jax.numpy.bfloat16),
        "b": jax.device_put(rng.standard_normal((64, 32)).astype(np.float32), replicated),
        "key": jax.random.key(3),
        "n": np.arange(10, dtype=np.int64),
        "step": jax.numpy.int32(4),
    }
    # Recorded with the leaf-by-leaf code (one program per leaf shape).
    recorded = {"a": 3225220485, "b": 2304599517, "key": 3041712681, "n": 1199895623, "step": 4}
    assert ckpt_lib.fingerprints(state) == recorded
    groups = ckpt_lib._small_groups(jax.tree.leaves(state))
    assert len(groups) == 3  # one device, all eight, host arrays
    # "a" (105 elements) and the key fill a group, "step" starts the next; "b" goes in blocks.
    monkeypatch.setattr(ckpt_lib, "_FINGERPRINT_BLOCK", 106)
    assert ckpt_lib._small_groups(jax.tree.leaves(state)) == [[0, 2], [4], [3]]
    assert ckpt_lib.fingerprints(state) == recorded
    state["b"] = state["b"].at[63, 31].add(1.0)
    assert ckpt_lib.fingerprints(state)["b"] != recorded["b"]
