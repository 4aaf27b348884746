"""The package's compiled kernels, loaded with ``ctypes`` (which releases the GIL while they run).

``setup.py`` compiles them when the package is installed, as optional extensions: an install
without a C compiler still succeeds, :func:`load` then finds nothing and the callers
(candidates/fastscan.py, compact_scan.py) fall back to FAISS.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
from pathlib import Path


def load(directory: Path, stem: str) -> ctypes.CDLL | None:
    """The shared library ``stem`` built beside ``directory``'s modules, or None if not built."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = directory / f"{stem}{suffix}"
        if path.exists():
            return ctypes.CDLL(str(path))
    return None
