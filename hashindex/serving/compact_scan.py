"""Scores of a compact rerank store's candidates in one call for a batch (``compact_scan.c``).

:meth:`CompactStore.top <hashindex.serving.store.CompactStore.top>` ranks each query's few
hundred candidates on their int8 / int6 codes. Through FAISS's scanner that is one Python call
per query (~30 us a query at 573 candidates, most of it around the arithmetic); the kernel here
scores every query's candidates in one pass over FAISS's packed codes, with the same decoding
(tests/test_compact_scan.py holds it to FAISS's ``decode``). Where it is not built, or for a
float16 store, the store asks FAISS's scanner as before.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Iterator

import numpy as np

from hashindex.serving import native

BITS = {"int8": 8, "int6": 6}  # the kinds the kernel reads


def _load() -> ctypes.CDLL | None:
    lib = native.load(Path(__file__).parent, "_compact_scan")
    if lib is not None:
        p, i, c = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.hx_compact_scores.argtypes = [i, i, p, p, c, c, p, i, i, p, p, p, p]
        lib.hx_compact_scores.restype = c
        lib.hx_compact_isa.restype = c
        lib.hx_compact_cap_isa.argtypes = [c]
    return lib


_LIB = _load()


def available(kind: str) -> bool:
    """Whether the kernel is built and reads stores of this ``kind``."""
    return _LIB is not None and kind in BITS


def isa() -> int:
    """The row kernel in use: 2 AVX-512, 1 AVX2, 0 plain C (or not built)."""
    return int(_LIB.hx_compact_isa()) if _LIB is not None else 0


@contextlib.contextmanager
def isa_cap(level: int) -> Iterator[None]:
    """Within the block, no row kernel above ``level`` (0: plain C), in every thread (tests)."""
    _LIB.hx_compact_cap_isa(int(level))
    try:
        yield
    finally:
        _LIB.hx_compact_cap_isa(2)


def scores(
    queries: np.ndarray, params: np.ndarray, codes: np.ndarray, kind: str, metric: str, lims: np.ndarray,
    positions: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """``float32 [M]``: query ``i`` (of ``queries [nq, D]``) against the rows ``positions[lims[i]
    : lims[i + 1]]`` of ``codes uint8 [N, code_size]``, decoded with ``params`` (``vmin[D]`` then
    ``vdiff[D]``): squared distances for ``l2``, else inner products. Call only where
    :func:`available` holds; positions must lie in ``[0, N)``."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    params = np.ascontiguousarray(params, dtype=np.float32)
    lims = np.ascontiguousarray(lims, dtype=np.int64)
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    out = np.empty(len(positions), np.float32)
    if not len(positions):  # (an untrained store has no parameters to read)
        return out
    if not codes.flags.c_contiguous:
        raise ValueError("compact codes must be C-contiguous")
    if q.ndim != 2 or params.shape != (2 * q.shape[1],) or len(lims) != len(q) + 1:
        raise ValueError(f"compact-store kernel: queries {q.shape}, params {params.shape}, lims {lims.shape} disagree")
    scratch = np.empty(2 * q.shape[1], np.float32)
    rc = _LIB.hx_compact_scores(
        q.shape[0], q.shape[1], q.ctypes.data, params.ctypes.data, BITS[kind], int(metric == "l2"), codes.ctypes.data,
        codes.shape[0], codes.shape[1], lims.ctypes.data, positions.ctypes.data, scratch.ctypes.data, out.ctypes.data,
    )  # fmt: skip
    if rc:
        raise ValueError("compact-store kernel: bad arguments (a position outside the store, or a size mismatch)")
    return out
