"""Input checks shared by hashers, the index and the encoder: clear errors, no silent casts.

Limits shared by every backend (HashIndex and MilvusHashIndex):

* ids are integers in ``[0, MAX_ID]``. ``MAX_ID = 2**63 - 2``: ids are stored as int64, and
  the next automatic id (largest id + 1) must still be one. Unsigned input at or above 2**63
  is refused, never wrapped to a negative id.
* ``k`` is at most :data:`MAX_K` results per query, and ``queries * k`` at most
  :data:`MAX_RESULT_CELLS` (the result arrays take 16 bytes per cell); beyond that a search is
  refused before anything is allocated. To get every item, use a radius of ``bits``.
* a Hamming ``radius`` beyond the code length means "every item": it is clamped to ``bits``
  before it reaches FAISS (C int) or Milvus (exclusive int32 bound).
* under the ``ip`` and ``l2`` metrics a feature or query row's L2 norm is at most
  :data:`MAX_FEATURE_NORM` (``2**62``, about 4.6e18): scores are float32, and two such rows
  give inner products up to ``2**124`` and squared distances up to ``2**126``, inside float32's
  ``~2**128``. Larger (finite) rows are refused rather than scored as ``inf``. ``cosine``
  normalises every row and has no limit.
"""

from __future__ import annotations

import numpy as np

from hashindex.core.codes import check_codes
from hashindex.core.errors import DuplicateIdError, InputError


MAX_ID = 2**63 - 2
"""Largest id an item may have: int64, and the next automatic id (id + 1) still fits."""
MAX_K = 1 << 20
"""Largest ``k`` (results per query) a search accepts."""
MAX_RESULT_CELLS = 1 << 28
"""Largest ``queries * k`` one search call accepts (16 bytes each: ids, scores, Hamming)."""
MAX_FEATURE_NORM = 2.0**62
"""Largest L2 norm of a row under the ``ip`` / ``l2`` metrics (scores stay finite in float32)."""


def as_array(x, name: str) -> np.ndarray:
    """``np.asarray`` with InputError for input numpy cannot make one array of (ragged lists)."""
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:
        raise InputError(f"{name} is not a rectangular array ({e})") from None


def check_features(x: np.ndarray, dim: int | None = None, name: str = "features") -> np.ndarray:
    """Validate a float matrix ``[N, D]``; return it as contiguous float32.

    Rejects 1-D input (a single vector must be passed as ``[1, D]``), non-float dtypes,
    NaN / inf, and a wrong dimension.
    """
    x = as_array(x, name)
    if x.ndim != 2:
        hint = " (pass a single vector as x[None, :])" if x.ndim == 1 else ""
        raise InputError(f"{name} must be 2-D [N, D], got shape {x.shape}{hint}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{name} must be floating point, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"{name} have dimension {x.shape[1]}, expected {dim}")
    wide = x.dtype.itemsize > 4
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        what = "NaN, inf, or values beyond float32's range" if wide else "NaN or inf"
        raise InputError(f"{name} contain {what} (rows {bad[:5].tolist()}{'...' if bad.size > 5 else ''})")
    return x


def check_int_vector(values: np.ndarray, n: int, name: str) -> np.ndarray:
    """A 1-D integer array of length ``n`` (ids, labels) -> int64 (unsigned values >= 2**63 refused)."""
    values = as_array(values, name)
    if values.ndim != 1 or values.shape[0] != n:
        raise InputError(f"{name} must be 1-D of length {n}, got shape {values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"{name} must be integers, got dtype {values.dtype}")
    if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
        raise InputError(f"{name} must fit int64, got {values[values > np.iinfo(np.int64).max][:5].tolist()}")
    return values.astype(np.int64, copy=False)


def check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """Validate ids for ``n`` rows: 1-D integers in ``[0, MAX_ID]`` of length n; return int64."""
    ids = check_int_vector(ids, n, "ids")
    if (ids < 0).any():
        raise InputError(f"ids must be non-negative (-1 pads search results), got {ids[ids < 0][:5].tolist()}")
    if (ids > MAX_ID).any():
        raise InputError(f"ids must be at most 2**63 - 2 (so the next automatic id fits int64), got {ids[ids > MAX_ID][:5].tolist()}")
    return ids


def auto_ids(next_id: int, n: int) -> np.ndarray:
    """``n`` automatic ids from ``next_id`` on; InputError when the last would pass MAX_ID."""
    if next_id + n - 1 > MAX_ID:
        raise InputError(
            f"no room for {n} automatic ids: the next one is {next_id} and ids stop at 2**63 - 2; "
            "pass explicit ids"
        )
    return np.arange(next_id, next_id + n, dtype=np.int64)


def check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_radius(radius: int, bits: int | None = None) -> int:
    """A non-negative integer Hamming radius; with ``bits``, clamped to it (beyond = every item)."""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise InputError(f"radius must be a non-negative integer (Hamming distance), got {radius!r}")
    return int(radius) if bits is None else min(int(radius), int(bits))


def check_k(k: int) -> int:
    """Results per query: a positive integer up to :data:`MAX_K`."""
    k = check_positive_int(k, "k")
    if k > MAX_K:
        raise InputError(
            f"k={k} is more than the {MAX_K:,} results per query a search returns; "
            "to get every item, search with radius=bits (or use range_search)"
        )
    return k


def check_result_size(n_queries: int, k: int) -> None:
    """Refuse a search whose ``[n_queries, k]`` results would pass :data:`MAX_RESULT_CELLS`."""
    if n_queries * k > MAX_RESULT_CELLS:
        raise InputError(
            f"{n_queries} queries x k={k} is {n_queries * k:,} results, more than the {MAX_RESULT_CELLS:,} "
            "one search returns: search in smaller batches of queries"
        )


def prepare_features(features: np.ndarray, dim: int, metric: str, name: str = "features") -> np.ndarray:
    """``float [N, D]`` -> float32, L2-normalised for the cosine metric (zero rows refused).

    Each row is first divided by its largest magnitude, so the norm neither overflows (finite
    rows near float32's maximum) nor underflows (tiny, subnormal rows) in float32.
    """
    x = check_features(features, dim, name=name)
    if metric == "cosine":
        scale = np.abs(x).max(axis=1, keepdims=True) if x.shape[1] else np.zeros((x.shape[0], 1), np.float32)
        if (scale == 0).any():
            bad = np.flatnonzero(scale[:, 0] == 0)
            raise InputError(f"{name} contain zero vectors, which have no cosine similarity (rows {bad[:5].tolist()})")
        x = x / scale
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    else:
        check_feature_norms(x, metric, name)
    return x


def check_feature_norms(x: np.ndarray, metric: str, name: str = "features") -> None:
    """Refuse float32 rows whose L2 norm passes :data:`MAX_FEATURE_NORM` (``ip`` / ``l2`` scores
    of such rows overflow float32)."""
    if not x.size:
        return
    top = max(float(x.max()), -float(x.min()))
    if top * np.sqrt(x.shape[1]) <= MAX_FEATURE_NORM:
        return  # no row can be longer: skip the per-row norms
    sq = np.einsum("ij,ij->i", x, x)  # float32; inf where a norm passes ~1.8e19
    bad = np.flatnonzero(~(sq <= MAX_FEATURE_NORM**2))
    if bad.size:
        raise InputError(
            f"{name} have rows with L2 norm above 2**62 (~4.6e18), the most the {metric!r} metric scores "
            f"without overflowing float32 (rows {bad[:5].tolist()}{'...' if bad.size > 5 else ''}); "
            "scale the features down, or use metric='cosine'"
        )


def check_search_args(
    k: int, radius: int | None, candidates: int | None, bits: int | None = None
) -> tuple[int, int | None, int | None]:
    """k in ``[1, MAX_K]``; at most one of radius (>= 0, clamped to ``bits`` when given) and
    candidates (> 0)."""
    k = check_k(k)
    if radius is not None and candidates is not None:
        raise InputError("give radius or candidates, not both")
    radius = None if radius is None else check_radius(radius, bits)
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
    a = np.atleast_1d(as_array(ids, "ids"))
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


# -- index configuration: one set of limits for the constructors and the index-directory schema --
MAX_DIM = 1 << 20
"""Largest feature dimension an index accepts (and its manifest may claim)."""
MAX_ITEMS = 1 << 40
"""Largest item count (and number of partition lists) an index manifest may claim."""
MAX_PARTITION_SPILL = 16
"""Most partition lists one item may be put in (``partition_spill``)."""
PARTITION_MODES = ("auto",)


def check_dim(dim: int, name: str = "dim") -> int:
    """A feature dimension: a positive integer up to :data:`MAX_DIM`."""
    dim = check_positive_int(dim, name)
    if dim > MAX_DIM:
        raise InputError(f"{name} must be at most {MAX_DIM:,}, got {dim:,}")
    return dim


def check_partitions(partitions: str | int | None) -> str | int | None:
    """``"auto"``, a number of partition lists in ``[1, MAX_ITEMS]``, or None."""
    if partitions is None or (isinstance(partitions, str) and partitions in PARTITION_MODES):
        return partitions
    if isinstance(partitions, str):
        raise InputError(f"partitions must be 'auto', a number of lists or None, got {partitions!r}")
    partitions = check_positive_int(partitions, "partitions (number of lists)")
    if partitions > MAX_ITEMS:
        raise InputError(f"partitions (number of lists) must be at most 2**40, got {partitions}")
    return partitions


def check_partition_spill(spill: int) -> int:
    """Lists each item is put in: an integer in ``[1, MAX_PARTITION_SPILL]``."""
    spill = check_positive_int(spill, "partition_spill")
    if spill > MAX_PARTITION_SPILL:
        raise InputError(f"partition_spill must be in [1, {MAX_PARTITION_SPILL}], got {spill}")
    return spill


def check_hasher_kind(kind: str) -> str:
    """A linear hasher's kind: any string (a label such as "itq" or "itq v2", kept with the index)."""
    if not isinstance(kind, str):
        raise InputError(f"a hasher's kind must be a string, got {type(kind).__name__}")
    return kind
