"""Input checks shared by hashers, the index and the encoder: clear errors, no silent casts."""

from __future__ import annotations

import numpy as np

from .errors import InputError


def check_features(x: np.ndarray, dim: int | None = None, name: str = "features") -> np.ndarray:
    """Validate a float matrix ``[N, D]``; return it as contiguous float32.

    Rejects 1-D input (a single vector must be passed as ``[1, D]``), non-float dtypes,
    NaN / inf, and a wrong dimension.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        hint = " (pass a single vector as x[None, :])" if x.ndim == 1 else ""
        raise InputError(f"{name} must be 2-D [N, D], got shape {x.shape}{hint}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{name} must be floating point, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"{name} have dimension {x.shape[1]}, expected {dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise InputError(f"{name} contain NaN or inf (rows {bad[:5].tolist()}{'...' if bad.size > 5 else ''})")
    return x


def check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """Validate ids for ``n`` rows: integer, 1-D, length n, unique; return int64."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise InputError(f"ids must be 1-D of length {n}, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if (ids < 0).any():
        raise InputError(f"ids must be non-negative (-1 pads search results), got {ids[ids < 0][:5].tolist()}")
    return ids


def check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise InputError(f"radius must be a non-negative integer (Hamming distance), got {radius!r}")
    return int(radius)
