"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every file llm_jax writes whole (configs, tokenizers, results tables, fits, launch
scripts, rewritten metrics) goes through `write_bytes`: the data goes to a temporary
file in the same directory, which is then renamed over the target (atomic on POSIX),
and the temporary file is removed if anything fails on the way.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` atomically, creating its directory if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with UTF-8 `text` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Replace `path` with `obj` as indented JSON (keys sorted) atomically."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")
