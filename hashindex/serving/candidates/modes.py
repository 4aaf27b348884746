"""The Hamming stage's three search modes, over any backend's range and k-NN primitives.

Candidate lists are CSR: ``lims int64 [nq+1]``, ``positions int64 [M]``, ``hamming int32 [M]``;
query q's candidates are ``positions[lims[q]:lims[q+1]]`` (FAISS's range_search layout).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

CSR = tuple[np.ndarray, np.ndarray, np.ndarray]
DEFAULT_CANDIDATES_PER_K = 10


def merge_csr(nq: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]):
    """Merge CSR results computed for disjoint query subsets back into query order.

    ``parts``: (query_indices [m], lims [m+1], positions, hamming) per subset.
    """
    counts = np.zeros(nq, dtype=np.int64)
    for qi, lims, _, _ in parts:
        counts[qi] = np.diff(lims)
    out_lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    positions = np.empty(out_lims[-1], dtype=np.int64)
    hamming = np.empty(out_lims[-1], dtype=np.int32)
    for qi, lims, pos, ham in parts:
        seg = np.repeat(np.arange(len(qi)), np.diff(lims))
        dst = out_lims[qi][seg] + np.arange(len(pos)) - lims[:-1][seg]
        positions[dst] = pos
        hamming[dst] = ham
    return out_lims, positions, hamming


def knn_to_csr(positions: np.ndarray, hamming: np.ndarray):
    """FAISS knn output ``[nq, c]`` (-1 padded) -> CSR."""
    valid = positions >= 0
    lims = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int64)
    return lims, positions[valid].astype(np.int64), hamming[valid].astype(np.int32)


def select_candidates(
    qcodes: np.ndarray,
    k: int,
    radius: int | None,
    candidates: int | None,
    n: int,
    bits: int,
    range_fn: Callable[[np.ndarray, int], CSR],
    knn_fn: Callable[[np.ndarray, int], CSR],
) -> CSR:
    """Candidates for each query of ``qcodes`` among ``n`` stored codes.

    - ``radius``: every item within Hamming <= radius (``range_fn``, inclusive radius);
    - ``candidates``: the c Hamming-nearest (``knn_fn``);
    - neither: multi-probe, per query the smallest radius giving at least
      ``DEFAULT_CANDIDATES_PER_K * k`` candidates: a k-NN search finds that radius, then one
      range search per distinct radius takes every item tied at it.
    ``knn_fn`` must return each query's hits sorted by distance.
    """
    if radius is not None:
        return range_fn(qcodes, radius)
    if candidates is not None:
        return knn_fn(qcodes, min(candidates, n))
    target = DEFAULT_CANDIDATES_PER_K * k
    if target >= n:
        return range_fn(qcodes, bits)
    lims, _, dist = knn_fn(qcodes, target)
    radii = dist[lims[1:] - 1]  # the target-th nearest distance
    parts = []
    for r in np.unique(radii):
        qi = np.flatnonzero(radii == r)
        parts.append((qi, *range_fn(qcodes[qi], int(r))))
    return merge_csr(qcodes.shape[0], parts)
