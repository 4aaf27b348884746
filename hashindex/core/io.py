"""Writing files: strict JSON and atomic replacement (standard library + numpy only).

:func:`atomic_write` is the one way the layers above serving write a file: to a temporary
sibling, flushed and fsynced, then ``os.replace``-d over the target, so a reader (or a crash)
sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def json_safe(x: Any) -> Any:
    """NaN / inf -> None, tuples -> lists, numpy scalars -> Python, so the result dumps as strict JSON."""
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary file that replaces ``path`` only once it is complete.

    The file is a temporary sibling (same directory, so ``os.replace`` is atomic), flushed and
    fsynced before the rename; on any error it is removed and ``path`` is left untouched.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:
            f = open(tmp, "wb")
        except OSError as e:  # name the caller's path, not the temporary sibling it never asked for
            raise type(e)(e.errno, e.strerror, os.fspath(path)) from e
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """``obj`` as strict JSON (:func:`json_safe`) plus a newline, written atomically."""
    text = json.dumps(json_safe(obj), indent=indent) + "\n"
    return atomic_write_bytes(path, text.encode())
