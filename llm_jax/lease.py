"""One owner per directory: a lease file naming the process that writes there.

A trainer takes the lease of its workdir, and the sweep runner the lease of its sweep
directory, before writing anything there. The lease is a small JSON file
(`<dir>/lease.json`: host, pid, start time, heartbeat) whose heartbeat a daemon thread
refreshes every `heartbeat_s`. A second process finds it and fails with one line naming
the holder (`LeaseHeld`). A lease whose holder is dead (its pid is gone, on this host; its
heartbeat is older than `timeout_s`, on another) is taken over with a warning.

The file operations go through a `Store` with three primitives a object store also has:
create-if-absent, read with a generation, and replace-if-generation-matches. `LocalStore`
implements them with atomic links and renames (the file is never absent or partial) and
a lock on the directory around each check-and-replace, on a POSIX filesystem; `storage.GCSStore`
with GCS preconditions (`ifGenerationMatch=0` create, generation-checked write) on a gs://
directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from llm_jax import storage
from llm_jax.errors import UserError

LEASE_FILE = "lease.json"
HEARTBEAT_S = 10.0
TIMEOUT_S = 300.0  # a holder on another host whose heartbeat is older than this is dead
log = logging.getLogger(__name__)


class LeaseHeld(UserError):
    """Another live process owns the directory; the message names it."""


class LocalStore:
    """Lease primitives on a POSIX filesystem. A generation is the file's inode number."""

    def create(self, path: str, data: bytes) -> bool:
        """Write `data` to `path` only if it does not exist; False if it does."""
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # atomic, fails if `path` exists: the content is never partial
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def read(self, path: str) -> tuple[bytes, Any] | None:
        """(data, generation) of `path`, or None when it does not exist."""
        try:
            with open(path, "rb") as f:
                return f.read(), os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            return None

    def replace(self, path: str, data: bytes, generation: Any) -> bool:
        """Replace `path` with `data` if it is still at `generation`; False otherwise.

        The new file is renamed over the old one, so a reader (or a process creating the
        lease) never finds it absent; the check and the rename hold the directory's lock,
        so of two processes replacing one generation only one wins.
        """
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            with _directory_lock(path):
                if _inode(path) != generation:
                    return False
                os.replace(tmp, path)
                return True
        except FileNotFoundError:  # the directory is gone, and the lease with it
            return False
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def delete(self, path: str, generation: Any) -> None:
        """Remove `path` if it is still at `generation`."""
        with _directory_lock(path):
            if _inode(path) == generation:
                os.unlink(path)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _directory_lock(path: str):
    """An exclusive lock on the directory holding `path` (flock: released if the process
    dies), among the processes that change leases there. Where the filesystem has no
    flock there is none: two takeovers of one dead holder may then both go ahead, and the
    loser finds out at its next heartbeat (`lost`). A directory that is gone needs none."""
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def store_for(directory: str) -> LocalStore | storage.GCSStore:
    """The store that fits `directory`: GCS preconditions on gs://, the filesystem otherwise."""
    return storage.GCSStore() if storage.is_gcs(directory) else LocalStore()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def holder_is_dead(holder: dict, timeout_s: float, now: float | None = None) -> str:
    """Why the lease's holder is dead ('' if it may be alive).

    On this host the pid decides (a holder busy in a long C call, e.g. tokenizer
    training, may miss heartbeats but is alive); on another, the heartbeat's age.
    """
    if holder.get("host") == socket.gethostname():
        alive = _pid_alive(int(holder.get("pid", 0)))
        return "" if alive else f"pid {holder.get('pid')} is gone"
    age = (time.time() if now is None else now) - float(holder.get("heartbeat", 0))
    return f"its heartbeat is {age:.0f} s old" if age > timeout_s else ""


def describe(holder: dict) -> str:
    """'pid 123 on host h (since 2026-01-01 12:00:00, heartbeat 3 s ago)'."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("start", 0))))
    age = time.time() - float(holder.get("heartbeat", 0))
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} "
        f"(since {since}, heartbeat {age:.0f} s ago)"
    )


class Lease:
    """The lease of `directory` for `what` ('workdir', 'sweep directory'); a context manager.

    `acquire()` takes it or raises `LeaseHeld`; a heartbeat thread keeps it fresh until
    `release()`. `lost` turns true if another process took it over meanwhile (this one
    was judged dead: e.g. suspended longer than `timeout_s`).
    """

    def __init__(
        self,
        directory: str,
        what: str = "workdir",
        store: LocalStore | storage.GCSStore | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        timeout_s: float = TIMEOUT_S,
    ):
        self.path = storage.join(directory, LEASE_FILE)
        self.directory, self.what = directory, what
        self.store = store or store_for(directory)
        self.heartbeat_s, self.timeout_s = heartbeat_s, timeout_s
        self.lost = False
        self._token = uuid.uuid4().hex
        self._start = time.time()
        self._generation: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "start": self._start,
                "heartbeat": time.time(),
                "token": self._token,
            }
        ).encode()

    def acquire(self) -> Lease:
        """Take the lease (taking over a dead holder's); raise LeaseHeld if it is live."""
        storage.makedirs(self.directory)
        for _ in range(3):  # lost races retry: the winner is then the live holder
            if self.store.create(self.path, self._record()):
                return self._started()
            current = self.store.read(self.path)
            if current is None:
                continue
            data, generation = current
            holder = _parse(data)
            why = holder_is_dead(holder, self.timeout_s) if holder else "the lease file is torn"
            if not why:
                raise LeaseHeld(
                    f"{self.directory} is in use by {describe(holder)}; wait for it to finish, "
                    f"stop it, or use another {self.what}"
                )
            if self.store.replace(self.path, self._record(), generation):
                log.warning(
                    "warning: took over the lease of %s from %s: %s",
                    self.directory,
                    describe(holder) if holder else "an unreadable lease",
                    why,
                )
                return self._started()
        raise LeaseHeld(f"{self.directory}: could not take its lease ({self.path}); retry")

    def _started(self) -> Lease:
        self._generation = self.store.read(self.path)[1]
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = self.store.read(self.path)
            holder = _parse(current[0]) if current else None
            if not holder or holder.get("token") != self._token:
                self.lost = True
                log.error("error: the lease of %s was taken over by another process", self.path)
                return
            if self.store.replace(self.path, self._record(), current[1]):
                self._generation = self.store.read(self.path)[1]

    def release(self) -> None:
        """Stop the heartbeat and remove the lease (if it is still this process's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if not self.lost:
                self.store.delete(self.path, self._generation)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _parse(data: bytes) -> dict | None:
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def read_holder(directory: str) -> dict | None:
    """The live holder of `directory`'s lease, or None (no lease, or a dead holder)."""
    current = store_for(directory).read(storage.join(directory, LEASE_FILE))
    holder = _parse(current[0]) if current else None
    if holder is None or holder_is_dead(holder, TIMEOUT_S):
        return None
    return holder
