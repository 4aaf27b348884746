"""Exact reranking of candidates (CSR lists, see :mod:`hashindex.serving.candidates.csr`)."""

from __future__ import annotations

import faiss
import numpy as np

METRICS = ("cosine", "ip", "l2")
# Cells of the padded [queries, candidates] matrices per block: small enough to stay in cache
# (small blocks ran much faster than one huge one; benchmarks/README.md).
_BLOCK_CELLS = 1 << 16


def higher_is_better(metric: str) -> bool:
    return metric != "l2"


def exact_scores(queries: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """Row-wise score of ``queries[i]`` against ``candidates[i]`` (both ``[M, D]``)."""
    if metric == "l2":
        diff = candidates - queries
        return np.einsum("ij,ij->i", diff, diff)
    return np.einsum("ij,ij->i", candidates, queries)


def score_matrix(queries: np.ndarray, features: np.ndarray, positions: np.ndarray, metric: str) -> np.ndarray:
    """Scores ``float32 [nq, w]`` of each query against its row of ``positions`` ``int64 [nq, w]``.

    Padding (position -1) scores -inf for similarities and +inf for l2. A contiguous float32
    store (in memory or memory-mapped) is scored in place by FAISS's ``fvec_*_by_idx``, in
    C++ without gathering the candidates; a float16 store is gathered and scored by numpy.
    ``features`` may also be a compact store (serving/store.py ``CompactStore``): anything with
    ``score(queries, positions, metric)`` scores itself.
    """
    if hasattr(features, "score"):
        return features.score(queries, positions, metric)
    nq, width = positions.shape
    out = np.empty((nq, width), dtype=np.float32)
    if features.dtype == np.float32 and features.flags.c_contiguous and nq and width:
        fn = faiss.fvec_L2sqr_by_idx if metric == "l2" else faiss.fvec_inner_products_by_idx
        q = np.ascontiguousarray(queries, dtype=np.float32)
        pos = np.ascontiguousarray(positions, dtype=np.int64)
        fn(faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(features), faiss.swig_ptr(pos),
           q.shape[1], nq, width)
        return out
    valid = positions >= 0
    rows = np.nonzero(valid)[0]
    out.fill(np.inf if metric == "l2" else -np.inf)
    out[valid] = exact_scores(queries[rows], np.asarray(features[positions[valid]], dtype=np.float32), metric)
    return out


def rerank(
    queries: np.ndarray,
    features: np.ndarray,
    lims: np.ndarray,
    positions: np.ndarray,
    hamming: np.ndarray,
    k: int,
    metric: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k of each query's candidates by exact score, best first.

    Args:
        queries: float32 ``[nq, D]``; features: the store ``[N, D]`` (float32/float16, may be mmap).
        lims, positions, hamming: CSR candidates.
    Returns:
        positions int64 ``[nq, k]`` (-1 padded), scores float32 ``[nq, k]`` (-inf padded for
        similarities, +inf for l2), hamming int32 ``[nq, k]`` (-1 padded).
        Among the k kept, equal scores are ordered by position.

    Queries go in blocks whose padded ``[queries, longest list]`` matrix has at most
    ``_BLOCK_CELLS`` cells; top-k per row is one ``argpartition``, not a sort of every candidate.
    """
    nq = queries.shape[0]
    sign = np.float32(-1.0 if higher_is_better(metric) else 1.0)  # rank on "lower is better"
    out_pos = np.full((nq, k), -1, dtype=np.int64)
    out_score = np.full((nq, k), sign * np.inf, dtype=np.float32)
    out_ham = np.full((nq, k), -1, dtype=np.int32)
    counts = np.diff(lims)

    start = 0
    while start < nq:
        widest = np.maximum.accumulate(np.maximum(counts[start:], 1))
        cells = widest * np.arange(1, widest.size + 1)
        stop = start + max(int(np.searchsorted(cells, _BLOCK_CELLS, side="right")), 1)
        lo, hi = lims[start], lims[stop]
        if hi > lo:
            nb, width = stop - start, int(counts[start:stop].max())
            rows = np.repeat(np.arange(nb), counts[start:stop])
            cols = np.arange(hi - lo) - (lims[start:stop][rows] - lo)
            slot = np.full((nb, width), -1, dtype=np.int64)  # index into this block's candidates
            slot[rows, cols] = np.arange(hi - lo)
            pos = positions[lo:hi]
            pos_matrix = np.where(slot >= 0, pos[slot], -1)
            key = sign * score_matrix(queries[start:stop], features, pos_matrix, metric)
            if width > k:
                keep = np.argpartition(key, k - 1, axis=1)[:, :k]
                key, slot = np.take_along_axis(key, keep, 1), np.take_along_axis(slot, keep, 1)
            tie = np.where(slot >= 0, pos[slot], np.iinfo(np.int64).max)
            order = np.lexsort((tie, key), axis=1)
            key, slot = np.take_along_axis(key, order, 1), np.take_along_axis(slot, order, 1)
            r, c = np.nonzero(slot >= 0)
            chosen = slot[r, c]
            out_pos[start + r, c] = pos[chosen]
            out_score[start + r, c] = sign * key[r, c]
            out_ham[start + r, c] = hamming[lo:hi][chosen]
        start = stop
    return out_pos, out_score, out_ham


def rescore_exact(
    queries: np.ndarray, rows: np.ndarray, positions: np.ndarray, hamming: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact scores of the returned rows ``positions int64 [nq, k]`` (-1 padded), given their
    float32 features ``rows [M, D]`` (one per valid position, in row-major order), re-sorted best
    first (ties by position), with ``hamming`` carried along. The compact stores' final step."""
    sign = np.float32(-1.0 if higher_is_better(metric) else 1.0)
    valid = positions >= 0
    local = np.full(positions.shape, -1, dtype=np.int64)
    local[valid] = np.arange(int(valid.sum()))
    rows = np.ascontiguousarray(rows, dtype=np.float32) if len(rows) else np.zeros((1, queries.shape[1]), np.float32)
    key = sign * score_matrix(queries, rows, local, metric)
    tie = np.where(valid, positions, np.iinfo(np.int64).max)
    order = np.lexsort((tie, key), axis=1)
    pos = np.take_along_axis(positions, order, 1)
    return pos, sign * np.take_along_axis(key, order, 1), np.take_along_axis(hamming, order, 1)
