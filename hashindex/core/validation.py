"""Input checks shared by hashers, the index and the encoder: clear errors, no silent casts."""

from __future__ import annotations

import numpy as np

from hashindex.core.codes import check_codes
from hashindex.core.errors import DuplicateIdError, InputError


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


def check_int_vector(values: np.ndarray, n: int, name: str) -> np.ndarray:
    """A 1-D integer array of length ``n`` (ids, labels) -> int64."""
    values = np.asarray(values)
    if values.ndim != 1 or values.shape[0] != n:
        raise InputError(f"{name} must be 1-D of length {n}, got shape {values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"{name} must be integers, got dtype {values.dtype}")
    return values.astype(np.int64, copy=False)


def check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """Validate ids for ``n`` rows: 1-D non-negative integers of length n; return int64."""
    ids = check_int_vector(ids, n, "ids")
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


def prepare_features(features: np.ndarray, dim: int, metric: str, name: str = "features") -> np.ndarray:
    """``float [N, D]`` -> float32, L2-normalised for the cosine metric (zero rows refused)."""
    x = check_features(features, dim, name=name)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InputError(f"{name} contain zero vectors, which have no cosine similarity")
        x = x / norms
    return x


def check_search_args(k: int, radius: int | None, candidates: int | None) -> tuple[int, int | None, int | None]:
    """k > 0; at most one of radius (>= 0) and candidates (> 0)."""
    k = check_positive_int(k, "k")
    if radius is not None and candidates is not None:
        raise InputError("give radius or candidates, not both")
    radius = None if radius is None else check_radius(radius)
    candidates = None if candidates is None else check_positive_int(candidates, "candidates")
    return k, radius, candidates


def check_recall(recall: float, name: str = "recall") -> float:
    """A recall target in (0, 1]: a fraction of queries whose true nearest neighbour is found."""
    if isinstance(recall, bool) or not isinstance(recall, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number in (0, 1], got {recall!r}")
    value = float(recall)
    if not 0.0 < value <= 1.0:  # also refuses NaN
        raise InputError(f"{name} must be in (0, 1] (a fraction, not a percentage), got {recall!r}")
    return value


def check_tuning_args(
    nprobe: int | None, recall: float | None, radius: int | None, candidates: int | None
) -> tuple[int | None, float | None]:
    """``nprobe`` (lists to scan, > 0) and ``recall`` (target in (0, 1]) for asymmetric search:
    neither goes with a Hamming ``radius``; ``recall`` picks candidates and nprobe itself."""
    nprobe = None if nprobe is None else check_positive_int(nprobe, "nprobe")
    recall = None if recall is None else check_recall(recall)
    if radius is not None and (nprobe is not None or recall is not None):
        raise InputError("radius selects by Hamming distance; nprobe= and recall= set the asymmetric stage")
    if recall is not None and (candidates is not None or nprobe is not None):
        raise InputError(
            "recall= picks candidates and nprobe from a tuned operating point: give recall, or candidates/nprobe, not both"
        )
    return nprobe, recall


def check_id_list(ids: np.ndarray) -> np.ndarray:
    """Ids for remove / get_features: a scalar or 1-D integers -> int64 ``[n]``."""
    a = np.atleast_1d(np.asarray(ids))
    return check_ids(a, a.shape[0])


def check_new_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """Ids for ``n`` new rows: 1-D non-negative integers, no repeats within the batch."""
    ids = check_ids(ids, n)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DuplicateIdError(f"ids repeat within the batch: {uniq[counts > 1][:5].tolist()}")
    return ids


def check_query_codes(codes: np.ndarray, nbytes: int, n_rows: int) -> np.ndarray:
    """Precomputed query codes: uint8 ``[n_rows, nbytes]``, one per query feature row."""
    codes = check_codes(codes, nbytes)
    if codes.shape[0] != n_rows:
        raise InputError(f"{codes.shape[0]} query codes but {n_rows} query rows")
    return codes
