"""The path layer (llm_jax.storage) on local disk and against a real local GCS server."""

import os
import subprocess
import sys

import numpy as np
import pytest

from llm_jax import lease as lease_lib
from llm_jax import storage


def test_local_write_read_append_glob(tmp_path):
    storage.write_json(tmp_path / "a" / "config.json", {"x": 1})
    assert storage.read_text(tmp_path / "a" / "config.json") == '{\n  "x": 1\n}\n'
    storage.append_text(str(tmp_path / "m.jsonl"), "1\n")
    storage.append_text(str(tmp_path / "m.jsonl"), "2\n")
    assert storage.read_text(tmp_path / "m.jsonl") == "1\n2\n"
    assert storage.glob(str(tmp_path / "**" / "*.json")) == [str(tmp_path / "a" / "config.json")]
    assert not [p for p in os.listdir(tmp_path / "a") if "tmp" in p]  # no temp file left


def test_gcs_write_read_exists_glob(gs):
    storage.write_text(f"{gs}/data/a.txt", "first")
    storage.write_text(f"{gs}/data/b.jsonl", '{"text": "x"}\n')
    storage.write_text(f"{gs}/data/deep/c.txt", "third")
    storage.write_text(f"{gs}/data/a.txt", "replaced")  # a whole-object overwrite
    assert storage.read_text(f"{gs}/data/a.txt") == "replaced"
    assert storage.exists(f"{gs}/data/a.txt") and storage.exists(f"{gs}/data")
    assert not storage.exists(f"{gs}/data/missing.txt")
    assert storage.glob(f"{gs}/data/*.txt") == [f"{gs}/data/a.txt"]
    assert storage.glob(f"{gs}/data/**/*.txt") == [f"{gs}/data/a.txt", f"{gs}/data/deep/c.txt"]
    assert storage.join(gs, "x", "y.json") == f"{gs}/x/y.json"
    assert storage.path(gs) / "data" / "a.txt" == storage.path(f"{gs}/data/a.txt")


def test_gcs_move_and_file_version(gs):
    storage.write_text(f"{gs}/ckpt/3/a", "x")
    storage.write_text(f"{gs}/ckpt/3/b/c", "y")
    size, version = storage.file_version(f"{gs}/ckpt/3/a")
    storage.write_text(f"{gs}/ckpt/3/a", "z")
    assert storage.file_version(f"{gs}/ckpt/3/a")[0] == size == 1
    assert storage.file_version(f"{gs}/ckpt/3/a")[1] != version  # rewritten: new generation
    storage.move(f"{gs}/ckpt/3", f"{gs}/aside/3-1")
    assert not storage.exists(f"{gs}/ckpt/3/a")
    assert storage.glob(f"{gs}/aside/**") == [f"{gs}/aside/3-1/a", f"{gs}/aside/3-1/b/c"]


def test_gcs_append_rewrites_the_object(gs):
    for step in range(3):
        storage.append_text(f"{gs}/metrics.jsonl", f'{{"step": {step}}}\n')
    lines = storage.read_text(f"{gs}/metrics.jsonl").splitlines()
    assert lines == ['{"step": 0}', '{"step": 1}', '{"step": 2}']


def test_gcs_missing_object_and_bucket_name_the_path(gs):
    with pytest.raises(storage.StorageError, match=f"cannot read {gs}/nope.json: no such object"):
        storage.read_text(f"{gs}/nope.json")
    with pytest.raises(storage.StorageError, match="bucket gs://no-such-bucket does not exist"):
        storage.read_text("gs://no-such-bucket/run/config.json")
    with pytest.raises(storage.StorageError, match="bucket gs://no-such-bucket does not exist"):
        storage.write_text("gs://no-such-bucket/run/config.json", "{}")
    with pytest.raises(storage.StorageError, match="check gs://no-such-bucket/run: bucket"):
        storage.is_dir("gs://no-such-bucket/run")
    assert storage.is_dir(gs) is False and storage.is_dir(str(gs).rsplit("/", 1)[0])


def test_gcs_store_preconditions(gs):
    """Create-if-absent and generation-checked replace: of two racers exactly one wins."""
    store, path = storage.GCSStore(), f"{gs}/lease.json"
    assert store.read(path) is None
    assert store.create(path, b"one")
    assert not store.create(path, b"two")  # ifGenerationMatch=0 refused: it exists
    data, generation = store.read(path)
    assert data == b"one"
    assert store.replace(path, b"three", generation)
    assert not store.replace(path, b"four", generation)  # stale generation: refused
    data, newer = store.read(path)
    assert data == b"three" and newer != generation
    store.delete(path, generation)  # stale: kept
    assert store.read(path) is not None
    store.delete(path, newer)
    assert store.read(path) is None


def test_lease_on_gcs_directory(gs):
    with lease_lib.Lease(f"{gs}/run", heartbeat_s=60):
        assert lease_lib.read_holder(f"{gs}/run")["pid"] == os.getpid()
        with pytest.raises(lease_lib.LeaseHeld, match=f"{gs}/run is in use by pid {os.getpid()}"):
            lease_lib.Lease(f"{gs}/run").acquire()
    assert lease_lib.read_holder(f"{gs}/run") is None  # released: the object is gone


def test_orbax_checkpoint_through_tensorstore(gs):
    """Orbax's array I/O (tensorstore) reaches the same server with no setup by the caller."""
    import orbax.checkpoint as ocp

    directory = storage.path(f"{gs}/ckpt")
    tree = {"w": np.arange(12.0, dtype=np.float32).reshape(3, 4)}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "7", tree)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(directory / "7", tree)
    np.testing.assert_array_equal(restored["w"], tree["w"])
    assert storage.glob(f"{gs}/ckpt/7/**/_CHECKPOINT_METADATA")  # the objects are in the bucket


def _fresh_process(code: str, env: dict) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter (the layer configures clients once per process)."""
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_unreachable_endpoint_fails_fast_naming_the_path():
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing listens once closed
    env = dict(os.environ, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}")
    code = "from llm_jax import storage; storage.read_text('gs://b/run/config.json')"
    result = _fresh_process(code, env)
    last = result.stderr.strip().splitlines()[-1]
    assert "StorageError: gs://b/run/config.json: cannot reach the storage endpoint" in last
    assert f"127.0.0.1:{port}" in last


def test_no_credentials_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    env |= {"HOME": str(tmp_path), "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none")}
    env.pop("CLOUDSDK_CONFIG", None)
    code = "from llm_jax import storage; storage.read_text('gs://b/run/config.json')"
    result = _fresh_process(code, env)
    last = result.stderr.strip().splitlines()[-1]
    assert "StorageError: gs://b/run/config.json: no Google Cloud credentials" in last
