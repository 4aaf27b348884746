"""The Hamming stage's three search modes, over any backend's range and k-NN primitives.

Candidate lists are :class:`~hashindex.serving.candidates.csr.Candidates` (CSR); the modes are
chosen by the planner (serving/plan.py), which resolves every default before this runs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hashindex.serving.candidates.csr import Candidates, merge


def select_candidates(
    qcodes: np.ndarray,
    radius: int | None,
    candidates: int | None,
    at_least: int | None,
    n: int,
    bits: int,
    range_fn: Callable[[np.ndarray, int], Candidates],
    knn_fn: Callable[[np.ndarray, int], Candidates],
) -> Candidates:
    """Candidates for each query of ``qcodes`` among ``n`` stored codes; exactly one mode is set:

    - ``radius``: every item within Hamming <= radius (``range_fn``, inclusive radius);
    - ``candidates``: the c Hamming-nearest (``knn_fn``);
    - ``at_least``: multi-probe, per query the smallest radius giving at least ``at_least``
      candidates: a k-NN search finds that radius, then one range search per distinct radius
      takes every item tied at it.

    ``knn_fn`` must return each query's hits sorted by distance.
    """
    if radius is not None:
        return range_fn(qcodes, radius)
    if candidates is not None:
        return knn_fn(qcodes, min(candidates, n))
    if at_least >= n:
        return range_fn(qcodes, bits)
    lims, _, dist = knn_fn(qcodes, at_least)
    have = np.diff(lims)
    radii = np.where(have > 0, dist[np.maximum(lims[1:] - 1, 0)], bits)  # the at_least-th nearest distance
    parts = []
    for r in np.unique(radii):
        qi = np.flatnonzero(radii == r)
        parts.append((qi, range_fn(qcodes[qi], int(r))))
    return merge(qcodes.shape[0], parts)


def multiprobe_scans(at_least: int, n: int) -> int:
    """Scans of the codes a multi-probe search makes per query (the k-NN, then the range)."""
    return 1 if at_least >= n else 2
