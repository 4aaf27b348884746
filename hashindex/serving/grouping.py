"""One result per person: group reranked candidates by label; the open-set threshold.

``group_by="label"`` with ``group_size=g`` returns, per query, the k labels whose best candidate
scores best, each with its g best candidates. Results keep SearchResult's 2-D layout: shape
``[nq, k * g]``, label block j (the j-th best label) in columns ``j*g .. j*g+g-1``, its items best
first, -1 padded where a label has fewer than g candidates or fewer than k labels were found
(``result.ids.reshape(nq, k, g)`` gives one row per label). With g = 1 that is ``[nq, k]``.

Grouping is exact over the candidates: every candidate is scored on the stored features
(not only a top-k), and the candidate set is widened (:func:`widen_for_labels`) until it holds
k distinct labels, or every allowed item, or the backend's cap.

numpy only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hashindex.serving.candidates.csr import Candidates, merge, take_queries
from hashindex.serving.rerank import higher_is_better, score_matrix


def distinct_per_query(lims: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Number of distinct labels among each query's candidates (``labels`` aligned with CSR)."""
    nq = len(lims) - 1
    if labels.size == 0:
        return np.zeros(nq, np.int64)
    q = np.repeat(np.arange(nq), np.diff(lims))
    order = np.lexsort((labels, q))
    qs, ls = q[order], labels[order]
    first = np.ones(qs.size, dtype=bool)
    first[1:] = (qs[1:] != qs[:-1]) | (ls[1:] != ls[:-1])
    return np.bincount(qs[first], minlength=nq).astype(np.int64)


def widen_for_labels(
    csr: Candidates,
    k: int,
    n_allowed: int,
    labels_of: Callable[[np.ndarray], np.ndarray],
    refetch: Callable[[np.ndarray, int], Candidates] | None,
    max_candidates: int | None = None,
) -> Candidates:
    """Widen each query's candidates until they hold ``k`` distinct labels.

    ``refetch(query_indices, c)`` returns the c best-ranked candidates of those queries (a
    superset of what they have: the modes' candidate sets are nested); c doubles per round,
    up to every allowed item (``n_allowed``) or ``max_candidates``. ``refetch`` None (a radius
    search, whose ball is the rule) leaves the candidates as they are.

    Bounded: a query stops widening once it holds k labels, reaches the cap, or a round gives it
    no more candidates than it had (the stage can find no more), so the loop ends after at most
    ``log2(cap) + 2`` rounds whatever ``refetch`` returns.
    """
    csr = Candidates(*csr)
    if refetch is None:
        return csr
    cap = n_allowed if max_candidates is None else min(n_allowed, max_candidates)
    nq = len(csr.lims) - 1
    stuck = np.zeros(nq, dtype=bool)
    for _ in range(max(cap, 1).bit_length() + 2):
        counts = csr.counts
        need = (distinct_per_query(csr.lims, labels_of(csr.keys)) < k) & (counts < cap) & ~stuck
        if not need.any():
            break
        qi = np.flatnonzero(need)
        c = int(min(max(2 * int(counts[qi].max()), 2 * k), cap))
        wider = Candidates(*refetch(qi, c))
        grew = wider.counts > counts[qi]
        stuck[qi[~grew]] = True
        keep = np.flatnonzero(~need | stuck)  # the others keep what they had
        parts = [(qi[grew], take_queries(wider, np.flatnonzero(grew)))]
        csr = merge(nq, parts + ([(keep, take_queries(csr, keep))] if keep.size else []))
    return csr


def csr_scores(queries: np.ndarray, features: np.ndarray, lims: np.ndarray, positions: np.ndarray, metric: str):
    """Exact score of every candidate, aligned with the CSR ``positions`` (float32 ``[M]``)."""
    out = np.empty(positions.size, dtype=np.float32)
    for q in range(len(lims) - 1):
        lo, hi = lims[q], lims[q + 1]
        if hi > lo:
            out[lo:hi] = score_matrix(queries[q : q + 1], features, positions[None, lo:hi], metric)[0]
    return out


def group_top(
    lims: np.ndarray,
    positions: np.ndarray,
    hamming: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    k: int,
    group_size: int,
    metric: str,
):
    """The k best labels per query, each with its ``group_size`` best candidates.

    Args: CSR candidates (``positions`` are row keys, also the tie-break among equal scores),
    their exact ``scores`` and ``labels``. Returns ``(positions int64, scores float32,
    hamming int32, labels int64)``, each ``[nq, k * group_size]`` in the layout of the module
    docstring, padded with -1 (scores with -inf, +inf for l2).
    """
    nq, width = len(lims) - 1, k * group_size
    sign = np.float32(-1.0 if higher_is_better(metric) else 1.0)
    out_pos = np.full((nq, width), -1, np.int64)
    out_score = np.full((nq, width), sign * np.inf, np.float32)
    out_ham = np.full((nq, width), -1, np.int32)
    out_lab = np.full((nq, width), -1, np.int64)
    if positions.size == 0:
        return out_pos, out_score, out_ham, out_lab
    q = np.repeat(np.arange(nq), np.diff(lims))
    order = np.lexsort((positions, sign * scores, q))  # per query: best first, ties by position
    q_s, lab_s = q[order], labels[order]
    rank = np.arange(order.size)
    # rank of each candidate within its (query, label) group, in score order
    by_group = np.lexsort((rank, lab_s, q_s))
    gq, gl = q_s[by_group], lab_s[by_group]
    start = np.ones(by_group.size, dtype=bool)
    start[1:] = (gq[1:] != gq[:-1]) | (gl[1:] != gl[:-1])
    group_id = np.cumsum(start) - 1
    first_at = np.flatnonzero(start)
    within = np.empty(order.size, np.int64)
    within[by_group] = np.arange(by_group.size) - first_at[group_id]
    gid = np.empty(order.size, np.int64)
    gid[by_group] = group_id
    # rank of each label within its query: order of the labels' best candidates
    heads = np.flatnonzero(within == 0)  # already in (query, score) order
    head_q = q_s[heads]
    qstart = np.searchsorted(head_q, np.arange(nq))
    label_rank_of_group = np.empty(first_at.size, np.int64)
    label_rank_of_group[gid[heads]] = np.arange(heads.size) - qstart[head_q]
    label_rank = label_rank_of_group[gid]
    keep = (within < group_size) & (label_rank < k)
    rows, cols = q_s[keep], label_rank[keep] * group_size + within[keep]
    src = order[keep]
    out_pos[rows, cols] = positions[src]
    out_score[rows, cols] = scores[src]
    out_ham[rows, cols] = hamming[src]
    out_lab[rows, cols] = labels[src]
    return out_pos, out_score, out_ham, out_lab


def below_threshold(scores: np.ndarray, min_score: float, metric: str) -> np.ndarray:
    """Which results the open-set threshold drops: similarity < t, or l2 distance > t."""
    return scores < min_score if higher_is_better(metric) else scores > min_score
