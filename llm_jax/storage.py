"""The one path layer: every file llm_jax reads or writes, on local disk or in a gs:// bucket.

`path(s)` gives a `pathlib.Path` for a local path and an `etils.epath.Path` (pathlib's API
over gcsfs) for gs://. epath rather than raw fsspec because Orbax speaks it already (its
CheckpointManager lists and deletes step folders through epath), so checkpoints and the
project's own files share one client and one configuration.

Writes are whole and atomic: locally a temporary file renamed over the target
(`llm_jax.atomic`); on gs:// a single upload, which GCS makes visible all at once. An object
cannot be appended to, so `append_text` rewrites the object (for a trial's train.log at the
end of an attempt; metrics.jsonl buffers its rows instead, llm_jax/metrics.py). Readers and
writers that need a real local file get one from `local_copy` / `local_folder`. `GCSStore`
gives the lease its primitives on a bucket: create-if-absent (`ifGenerationMatch=0`) and
generation-checked replace.

Configuration is automatic. With `STORAGE_EMULATOR_HOST` set (a local GCS-compatible server,
as in the tests) every client uses it with anonymous credentials, tensorstore (Orbax's array
I/O) included through `TENSORSTORE_GCS_HTTP_URL`. Otherwise the application-default
credentials are used (`gcloud auth application-default login`, or a GCP VM's service
account). The first use of a bucket checks that the endpoint answers within
`CONNECT_TIMEOUT_S`, so a wrong host fails in seconds with one line naming the path instead
of retrying for minutes. Bad remote input raises `StorageError` naming the path.
"""

from __future__ import annotations

import contextlib
import functools
import glob as glob_lib
import json
import os
import pathlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from etils import epath

from llm_jax import atomic
from llm_jax.errors import UserError

GCS_PREFIX = "gs://"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
_INSTALL_HINT = "install the gcs extra: pip install -e '.[gcs]'"


class StorageError(UserError):
    """A path cannot be read or written: missing bucket or object, no credentials, no server."""


def is_gcs(p: str | os.PathLike) -> bool:
    """Whether `p` names an object in a bucket (gs://bucket/key)."""
    return os.fspath(p).startswith(GCS_PREFIX)


def split(p: str | os.PathLike) -> tuple[str, str]:
    """(bucket, key) of a gs:// path."""
    bucket, _, key = os.fspath(p)[len(GCS_PREFIX) :].partition("/")
    return bucket, key


def path(p: str | os.PathLike) -> pathlib.Path | epath.Path:
    """`p` as a path object: a `pathlib.Path` locally (`~` expanded), an `epath.Path` (the
    same API over gcsfs) for gs://, configuring GCS on first use."""
    s = os.fspath(p)
    if is_gcs(s):
        _check_bucket_reachable(split(s)[0], s)
        return epath.Path(s)
    return pathlib.Path(os.path.expanduser(s))


def join(p: str | os.PathLike, *parts: str) -> str:
    """`os.path.join` that keeps gs:// paths intact (the one way to build child paths)."""
    return os.fspath(path(p).joinpath(*parts)) if is_gcs(p) else os.path.join(p, *parts)


def _endpoint() -> str:
    """The GCS HTTP endpoint: the emulator's URL, or Google's."""
    host = os.environ.get(EMULATOR_ENV, "")
    if not host:
        return "https://storage.googleapis.com"
    return host if "://" in host else f"http://{host}"


@functools.cache
def credentials() -> Any:
    """Anonymous credentials for an emulator, the application defaults otherwise."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    if os.environ.get(EMULATOR_ENV):
        return AnonymousCredentials()
    try:
        creds, _ = google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise StorageError(
            "no Google Cloud credentials for gs:// paths; run `gcloud auth application-default "
            "login`, set GOOGLE_APPLICATION_CREDENTIALS, or set STORAGE_EMULATOR_HOST for a "
            "local server"
        ) from e
    return creds


@functools.cache
def _configure() -> None:
    """Point gcsfs (epath's gs:// backend) and tensorstore at the endpoint, once."""
    try:
        import fsspec
        import gcsfs.core
    except ImportError as e:
        raise StorageError(f"gs:// paths need gcsfs: {_INSTALL_HINT}") from e
    # The plain GCSFileSystem: gcsfs's default subclass probes every bucket's type over
    # gRPC first, which an emulator does not serve (a minute-long stall per bucket).
    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
        fsspec.config.conf[protocol] = {
            "token": credentials(),
            "requests_timeout": REQUEST_TIMEOUT_S,
            "endpoint_url": _endpoint(),
        }
    if os.environ.get(EMULATOR_ENV):
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", _endpoint())


_reached: set[str] = set()  # endpoints that accepted a connection in this process


def _check_bucket_reachable(bucket: str, example: str) -> None:
    """Configure GCS, then fail fast if the endpoint does not accept connections."""
    if not bucket:
        raise StorageError(f"{example}: no bucket name; write gs://BUCKET/path")
    try:
        _configure()
    except StorageError as e:
        raise StorageError(f"{example}: {e}") from e
    if _endpoint() in _reached:
        return
    url = urlsplit(_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        where = f"{EMULATOR_ENV}={os.environ[EMULATOR_ENV]}" if os.environ.get(EMULATOR_ENV) else ""
        raise StorageError(
            f"{example}: cannot reach the storage endpoint {url.hostname}:{port} "
            f"{'(' + where + ') ' if where else ''}within {CONNECT_TIMEOUT_S:.0f} s ({e}); "
            "check the network or the server"
        ) from None
    _reached.add(_endpoint())


def filesystem():
    """The gcsfs filesystem every gs:// path uses (configured)."""
    import fsspec

    _configure()
    return fsspec.filesystem("gs")


def _bucket_exists(bucket: str) -> bool:
    try:
        filesystem().call("GET", "b/{}", bucket, json_out=True)
    except FileNotFoundError:
        return False
    return True


_buckets_seen: set[str] = set()


def _require_bucket(bucket: str, p: str) -> None:
    """Raise StorageError naming `p` unless `bucket` exists (asked once per process)."""
    if bucket in _buckets_seen:
        return
    if not _bucket_exists(bucket):
        raise StorageError(_no_bucket(p, bucket, "check"))
    _buckets_seen.add(bucket)


def _no_bucket(p: str, bucket: str, doing: str) -> str:
    return (
        f"cannot {doing} {p}: bucket gs://{bucket} does not exist; create it "
        f"(gcloud storage buckets create gs://{bucket}) or fix the path"
    )


@contextlib.contextmanager
def errors(p: str | os.PathLike, doing: str = "read") -> Iterator[None]:
    """Turn a gs:// client failure on `p` into a one-line StorageError naming it.

    Local paths pass through unchanged (callers keep their own handling of OSError).
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # client errors share no base: aiohttp, auth, HTTP
        if not is_gcs(p) or isinstance(e, (ValueError, TypeError, KeyError)):
            raise
        if not _is_not_found(e):
            raise StorageError(f"cannot {doing} {p}: {type(e).__name__}: {e}") from e
        bucket = split(p)[0]
        if not _bucket_exists(bucket):
            raise StorageError(_no_bucket(p, bucket, doing)) from e
        raise StorageError(f"cannot {doing} {p}: no such object") from e


def _is_not_found(e: Exception) -> bool:
    """A 404 from gcsfs (FileNotFoundError) or from google-cloud-storage (NotFound)."""
    from google.api_core import exceptions

    return isinstance(e, (FileNotFoundError, exceptions.NotFound))


def exists(p: str | os.PathLike) -> bool:
    """Whether the file, object or directory (prefix) `p` exists (on gs://, in a bucket that
    exists: a missing bucket is a StorageError, not False)."""
    with errors(p, "check"):
        found = path(p).exists()
    if not found and is_gcs(p):
        _require_bucket(split(p)[0], os.fspath(p))
    return found


def is_dir(p: str | os.PathLike) -> bool:
    """Whether `p` is a directory (on gs://, a prefix holding objects; a missing bucket is
    a StorageError)."""
    return exists(p) and path(p).is_dir()


def read_bytes(p: str | os.PathLike) -> bytes:
    """The whole content of `p`."""
    with errors(p):
        return path(p).read_bytes()


def read_text(p: str | os.PathLike) -> str:
    """The whole content of `p`, decoded as UTF-8."""
    return read_bytes(p).decode("utf-8")


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    """Replace `p` with `data` atomically (temp file + rename locally, one upload on gs://)."""
    if not is_gcs(p):
        atomic.write_bytes(os.path.expanduser(os.fspath(p)), data)
        return
    with errors(p, "write"):
        path(p).write_bytes(data)


def write_text(p: str | os.PathLike, text: str) -> None:
    """Replace `p` with UTF-8 `text` atomically."""
    write_bytes(p, text.encode("utf-8"))


def write_json(p: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Replace `p` with `obj` as indented JSON (keys sorted) atomically."""
    write_text(p, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def append_text(p: str | os.PathLike, text: str) -> None:
    """Append `text` to `p` (created if missing).

    Locally an append; on gs:// the object is read and rewritten whole (objects are
    immutable), so a reader still sees the old content or the new, never a partial line.
    """
    if not is_gcs(p):
        local = os.path.expanduser(os.fspath(p))
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        with open(local, "a", encoding="utf-8") as f:
            f.write(text)
        return
    old = read_text(p) if exists(p) else ""
    write_text(p, old + text)


@contextlib.contextmanager
def local_copy(p: str | os.PathLike) -> Iterator[str]:
    """A local file or folder with the content of `p`, for readers that need one (Python's
    import, memory-mapped safetensors): `p` itself when local; for gs:// a download under
    the same name (a folder's objects recursively), removed afterwards."""
    if not is_gcs(p):
        yield os.path.expanduser(os.fspath(p))
        return
    remote = os.fspath(p).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="llm_jax_") as folder:
        local = os.path.join(folder, os.path.basename(remote))
        if is_dir(remote):
            with errors(remote):
                filesystem().get(remote[len(GCS_PREFIX) :] + "/", local + "/", recursive=True)
        else:
            data = read_bytes(remote)
            with open(local, "wb") as f:
                f.write(data)
        yield local


@contextlib.contextmanager
def local_folder(p: str | os.PathLike) -> Iterator[str]:
    """A local folder whose files end up in `p`, for writers of large files that stream to
    disk (safetensors): `p` itself when local (created); for gs:// a temporary folder whose
    files are uploaded to `p` one by one (streamed from disk) when the block succeeds."""
    if not is_gcs(p):
        makedirs(p)
        yield os.path.expanduser(os.fspath(p))
        return
    path(p)  # configure, and check the endpoint before writing anything
    with tempfile.TemporaryDirectory(prefix="llm_jax_") as folder:
        yield folder
        for parent, _, names in os.walk(folder):
            for name in names:
                local = os.path.join(parent, name)
                target = join(p, os.path.relpath(local, folder))
                with errors(target, "write"):
                    filesystem().put_file(local, target[len(GCS_PREFIX) :])


def makedirs(p: str | os.PathLike) -> None:
    """Create directory `p` and its parents (a no-op on gs://: prefixes need no creation)."""
    if not is_gcs(p):
        os.makedirs(os.path.expanduser(os.fspath(p)), exist_ok=True)


def move(source: str, target: str) -> None:
    """Move file or directory `source` to `target` (its parent created if needed).

    On gs:// a copy of every object then a delete: not atomic, for moving things aside.
    """
    if not is_gcs(source):
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        shutil.move(source, target)
        return
    with errors(source, "move"):
        filesystem().mv(source[len(GCS_PREFIX) :], target[len(GCS_PREFIX) :], recursive=True)


def file_version(p: str | os.PathLike) -> tuple[int, int]:
    """(size, version) of file `p`: a change of either means new content. The version is
    the modification time in ns locally, the object's generation on gs://."""
    if not is_gcs(p):
        st = os.stat(os.path.expanduser(os.fspath(p)))
        return st.st_size, st.st_mtime_ns
    with errors(p, "stat"):
        info = filesystem().info(os.fspath(p)[len(GCS_PREFIX) :])
    return int(info["size"]), int(info["generation"])


def glob(pattern: str) -> list[str]:
    """Sorted paths matching `pattern` (`*`, `?`, `[...]`, `**` for any depth).

    gs:// matches come back as gs:// paths; files only, not directories.
    """
    if not is_gcs(pattern):
        matches = glob_lib.glob(os.path.expanduser(pattern), recursive=True)
        return sorted(m for m in matches if os.path.isfile(m))
    path(pattern)  # configure, and check the endpoint
    with errors(pattern, "list"):
        found = filesystem().glob(pattern[len(GCS_PREFIX) :], detail=True)
    return sorted(GCS_PREFIX + k for k, info in found.items() if info.get("type") == "file")


class GCSStore:
    """The lease's store primitives on a bucket, with GCS preconditions.

    A generation is the object's GCS generation: a create is an upload with
    `ifGenerationMatch=0`, a replace an upload with `ifGenerationMatch=<generation>`,
    so of two racing writers exactly one wins, as with `lease.LocalStore`.
    """

    def __init__(self):
        from google.cloud import storage as gcs

        project = "emulator" if os.environ.get(EMULATOR_ENV) else None
        self._client = gcs.Client(credentials=credentials(), project=project)

    def _blob(self, p: str):
        bucket, key = split(p)
        path(p)  # fail fast on an unreachable endpoint
        return self._client.bucket(bucket).blob(key)

    def _upload(self, p: str, data: bytes, generation: Any) -> bool:
        from google.api_core import exceptions

        with errors(p, "write"):
            try:
                self._blob(p).upload_from_string(
                    data, if_generation_match=generation, timeout=REQUEST_TIMEOUT_S
                )
            except exceptions.PreconditionFailed:
                return False
        return True

    def create(self, p: str, data: bytes) -> bool:
        """Write `data` to `p` only if it does not exist; False if it does."""
        return self._upload(p, data, 0)

    def read(self, p: str) -> tuple[bytes, Any] | None:
        """(data, generation) of `p`, or None when it does not exist."""
        from google.api_core import exceptions

        blob = self._blob(p)
        with errors(p):
            try:
                return blob.download_as_bytes(timeout=REQUEST_TIMEOUT_S), blob.generation
            except exceptions.NotFound:
                return None

    def replace(self, p: str, data: bytes, generation: Any) -> bool:
        """Replace `p` with `data` if it is still at `generation`; False otherwise."""
        return self._upload(p, data, generation)

    def delete(self, p: str, generation: Any) -> None:
        """Remove `p` if it is still at `generation`."""
        from google.api_core import exceptions

        current = self.read(p)  # checked here too: not every emulator honors the precondition
        if current is None or current[1] != generation:
            return
        with errors(p, "delete"), contextlib.suppress(exceptions.PreconditionFailed):
            self._blob(p).delete(if_generation_match=generation, timeout=REQUEST_TIMEOUT_S)
