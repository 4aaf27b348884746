"""Exact float nearest neighbours, the ground truth every recall is measured against (FAISS).

:class:`ExactTopK` is the one exact search of the package: the demo, the metrics and the
benchmarks use it, either whole (:func:`exact_search`) or over a gallery streamed in chunks
(``add`` one chunk at a time, never holding the gallery). :func:`recall_at_k_vs_exact` scores a
search's results against it.
"""

from __future__ import annotations

import faiss
import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.validation import check_features, check_positive_int
from hashindex.serving.faiss_settings import blas_products

FEATURE_METRICS = ("cosine", "l2", "ip")

# Elements compared per block in recall_at_k_vs_exact: ~4M booleans.
_BLOCK_ELEMS = 1 << 22


def check_metric(metric: str) -> str:
    if metric not in FEATURE_METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(FEATURE_METRICS)}")
    return metric


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``float [N, D]`` -> a float32 copy with L2-normalised rows (FAISS's normalize_L2)."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(out)
    return out


class ExactTopK:
    """Exact top-``width`` gallery rows of fixed queries, the gallery added chunk by chunk.

    Args:
        queries: ``float [Nq, D]``.
        width: neighbours kept per query.
        metric: "cosine" (queries and gallery L2-normalised), "ip" or "l2".

    Gallery rows are numbered in the order they are added (0, 1, ... over all chunks).
    """

    def __init__(self, queries: np.ndarray, width: int, metric: str = "cosine") -> None:
        self.metric = check_metric(metric)
        self.width = check_positive_int(width, "k")
        self.queries = self._prepare(check_features(queries, name="query features"))
        self.n = 0
        self._heap = faiss.ResultHeap(self.queries.shape[0], self.width, keep_max=metric != "l2")

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return unit_rows(x) if self.metric == "cosine" else x

    def add(self, chunk: np.ndarray) -> None:
        """Merge the next gallery rows into every query's top list."""
        x = self._prepare(check_features(chunk, self.queries.shape[1], name="gallery features"))
        if not x.shape[0]:
            return
        kind = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        with blas_products():  # any batch of queries on BLAS (FAISS's own rule wants >= 128000 / D)
            d, i = faiss.knn(self.queries, x, min(self.width, x.shape[0]), metric=kind)
        self._heap.add_result(np.ascontiguousarray(d, np.float32), np.ascontiguousarray(i + self.n, np.int64))
        self.n += x.shape[0]

    def ids(self, k: int | None = None, exclude: np.ndarray | None = None) -> np.ndarray:
        """``int64 [Nq, k]`` best first (``-1`` pads a gallery smaller than ``k``).

        ``exclude``: ``int [Nq]`` row each query must not return; it is dropped from the list
        (the last kept entry is dropped instead when it is not there, e.g. behind exact
        duplicates), so keep ``width = k + 1`` for it.
        """
        self._heap.finalize()
        ids = self._heap.I
        return drop_excluded(ids, exclude, ids.shape[1] if k is None else k)


def drop_excluded(ids: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    """``ids int [Nq, >= k]`` without each row's ``exclude`` id (moved last, order kept) -> ``[Nq, k]``."""
    if exclude is None:
        return ids[:, :k].copy()
    order = np.argsort(ids == np.asarray(exclude)[:, None], axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1)


def exact_search(
    query: np.ndarray, db: np.ndarray, k: int, metric: str = "cosine", exclude: np.ndarray | None = None
) -> np.ndarray:
    """Exact ``k`` nearest gallery rows ``int64 [Nq, k]``, best first.

    With ``exclude`` (``int [Nq]``, -1: none), one extra neighbour is fetched and the excluded
    row dropped (the last one is dropped when the excluded row is not among them).
    """
    check_metric(metric)
    q = check_features(query, name="query features")
    db = check_features(db, q.shape[1], name="gallery features")
    extra = 0 if exclude is None else 1
    if k + extra > db.shape[0]:
        raise InputError(f"k={k} needs at least {k + extra} gallery items, got {db.shape[0]}")
    top = ExactTopK(q, k + extra, metric)
    top.add(db)
    return top.ids(k, exclude)


def recall_at_k_vs_exact(result_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Recall of a search's top-k against the exact float top-k.

    ``mean_q |result[q, :k] ∩ exact[q, :k]| / |exact[q, :k]|``, ignoring ``-1`` (FAISS's
    "no result") on both sides; ids within a row are assumed distinct, as search results
    are. Queries whose exact row is all ``-1`` are skipped.

    Args:
        result_ids: ``int [Nq, >= k]`` ids returned by the search under test.
        exact_ids: ``int [Nq, >= k]`` exact float nearest ids, best first.
    """
    k = check_positive_int(k, "k")
    res = np.asarray(result_ids)
    ex = np.asarray(exact_ids)
    if res.ndim != 2 or ex.ndim != 2 or res.shape[0] != ex.shape[0]:
        raise InputError(f"result_ids and exact_ids must be 2-D with the same rows, got {res.shape} and {ex.shape}")
    if res.shape[1] < k or ex.shape[1] < k:
        raise InputError(f"k={k} exceeds the columns given: results {res.shape[1]}, exact {ex.shape[1]}")
    res, ex = res[:, :k], ex[:, :k]
    found = np.zeros(res.shape[0], dtype=np.int64)
    rows = max(1, _BLOCK_ELEMS // (k * k))
    for s in range(0, res.shape[0], rows):
        match = (res[s : s + rows, :, None] == ex[s : s + rows, None, :]) & (ex[s : s + rows, None, :] >= 0)
        found[s : s + rows] = match.any(axis=2).sum(axis=1)
    valid = (ex >= 0).sum(axis=1)
    keep = valid > 0
    return float((found[keep] / valid[keep]).mean()) if keep.any() else float("nan")
