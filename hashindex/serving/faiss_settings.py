"""FAISS's process-wide knobs, changed for the duration of a block and restored after it.

FAISS tunes its flat searches with global variables (``faiss.cvar``). Two matter here:

- ``distance_compute_blas_threshold``: since FAISS 1.14.2 (facebookresearch/faiss#5022) a flat
  search runs on BLAS only when ``n_queries * d >= 128000``, i.e. from 1,000 queries of 128-d; a
  smaller batch takes FAISS's per-pair SIMD loop, ~10x slower over a large gallery (one thread,
  the tuner's two batches of 500 queries against 1M rows: 33 s against ~4 s; benchmarks/README.md,
  "Exact search on BLAS").
  :func:`blas_products` lowers it to 0 for exact searches whose batches are smaller than that.
- ``distance_compute_blas_database_bs``: rows per BLAS block of the database (see
  ``candidates/partitions.py``, ``centroid_blocks``).

Neither changes what is computed beyond float rounding (BLAS sums in another order). The value
is set on entry; the value seen before the *first* of overlapping blocks (other threads' blocks
included) is restored when the *last* one leaves, so concurrent blocks never leave a knob changed.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import faiss

_lock = threading.Lock()
_saved: dict[str, tuple[int, int]] = {}  # knob -> (value before the first open block, open blocks)


@contextlib.contextmanager
def faiss_setting(name: str, value: int) -> Iterator[None]:
    """``faiss.cvar.<name> = value`` while the block runs (see the module docstring)."""
    if not hasattr(faiss.cvar, name):
        raise AttributeError(f"FAISS has no global setting {name!r}")
    with _lock:
        before, depth = _saved.get(name, (getattr(faiss.cvar, name), 0))
        _saved[name] = (before, depth + 1)
        setattr(faiss.cvar, name, int(value))
    try:
        yield
    finally:
        with _lock:
            before, depth = _saved[name]
            if depth == 1:
                del _saved[name]
                setattr(faiss.cvar, name, before)
            else:
                _saved[name] = (before, depth - 1)


def blas_products() -> contextlib.AbstractContextManager[None]:
    """Flat searches of any batch size on BLAS while the block runs (exact ground truth, exact
    search): a product per block of queries and rows instead of FAISS's per-pair loop."""
    return faiss_setting("distance_compute_blas_threshold", 0)
