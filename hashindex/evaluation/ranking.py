"""Ranking quality of the Hamming ranking: mAP@R, precision / recall at a radius, Recall@K.

Closed-form functions of :func:`hashindex.evaluation.hamming.hamming_histograms` (same gallery
conventions), averaged over a random order inside tied distances
(:mod:`hashindex.evaluation.ties`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.validation import check_positive_int, check_radius
from hashindex.evaluation.exact import exact_search
from hashindex.evaluation.hamming import check_labels, hamming_histograms, hit_probability
from hashindex.evaluation.ties import check_ties


def _harmonic(n: int) -> np.ndarray:
    """``float64 [n+1]``: ``H_k = sum_{i<=k} 1/i`` for ``k = 0..n``."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64))])


def average_precision_at_r(
    query_codes: np.ndarray,
    query_labels: np.ndarray,
    db_codes: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Per-query AP@R of the Hamming ranking, tie-aware: ``float64 [Nq]`` (NaN when R = 0).

    ``AP@R = (1/R) sum_{i<=R} P(i) rel(i)`` with ``R`` the number of gallery items sharing the
    query's label (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020), averaged
    over a uniformly random order inside tied distances. For a tied group with ``a`` items
    before it, ``b`` of them relevant, ``n`` items of which ``m`` relevant, position
    ``a + t`` contributes ``(m/n) (b + 1 + (t-1)(m-1)/(n-1)) / (a + t)`` in expectation;
    summed over ``t`` with harmonic numbers (McSherry & Najork 2008).
    """
    total, same = hamming_histograms(query_codes, db_codes, query_labels, db_labels, exclude)
    return _expected_ap_at_r(total, same)


def _expected_ap_at_r(total: np.ndarray, rel: np.ndarray) -> np.ndarray:
    r = rel.sum(axis=1)
    a = np.cumsum(total, axis=1) - total
    b = np.cumsum(rel, axis=1) - rel
    taken = np.clip(r[:, None] - a, 0, total)
    h = _harmonic(int(total.sum(axis=1).max(initial=0)))
    dh = h[a + taken] - h[a]  # sum_{t=1..taken} 1 / (a + t)
    n = np.maximum(total, 1)
    p_rel = rel / n
    pair = np.where(total > 1, p_rel * (rel - 1) / np.maximum(total - 1, 1), 0.0)
    # sum_t (t-1)/(a+t) = taken - (a+1) * dh
    s = p_rel * (b + 1) * dh + pair * (taken - (a + 1) * dh)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(r > 0, s.sum(axis=1) / r, np.nan)


def map_at_r(
    query_codes: np.ndarray,
    query_labels: np.ndarray,
    db_codes: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> float:
    """mAP@R of the Hamming ranking: mean of :func:`average_precision_at_r` over queries that
    have at least one relevant gallery item (NaN if none has)."""
    ap = average_precision_at_r(query_codes, query_labels, db_codes, db_labels, exclude)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


@dataclass(frozen=True)
class RadiusRetrieval:
    """Retrieval quality of a Hamming-radius lookup (distance <= radius).

    Attributes:
        precision: mean over queries of relevant / retrieved, a query retrieving nothing
            scoring 0 (the usual "precision within Hamming radius 2" of hashing papers).
        precision_nonempty: the same mean over queries that retrieved something.
        recall: mean over queries with a relevant item of relevant retrieved / relevant.
        empty_fraction: share of queries retrieving nothing.
        mean_candidates: mean number retrieved.
    """

    radius: int
    precision: float
    precision_nonempty: float
    recall: float
    empty_fraction: float
    mean_candidates: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def precision_recall_at_radius(
    query_codes: np.ndarray,
    query_labels: np.ndarray,
    db_codes: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    radius: int = 2,
    exclude: np.ndarray | None = None,
) -> RadiusRetrieval:
    """Precision and recall of the candidates at Hamming distance <= ``radius``."""
    radius = check_radius(radius)
    total, same = hamming_histograms(query_codes, db_codes, query_labels, db_labels, exclude)
    r = min(radius, total.shape[1] - 1)
    retrieved = total[:, : r + 1].sum(axis=1)
    hits = same[:, : r + 1].sum(axis=1)
    relevant = same.sum(axis=1)
    nonempty = retrieved > 0
    precision = np.where(nonempty, hits / np.maximum(retrieved, 1), 0.0)
    has_rel = relevant > 0
    return RadiusRetrieval(
        radius=radius,
        precision=float(precision.mean()) if precision.size else float("nan"),
        precision_nonempty=float(precision[nonempty].mean()) if nonempty.any() else float("nan"),
        recall=float((hits[has_rel] / relevant[has_rel]).mean()) if has_rel.any() else float("nan"),
        empty_fraction=float(1.0 - nonempty.mean()) if nonempty.size else float("nan"),
        mean_candidates=float(retrieved.mean()) if retrieved.size else float("nan"),
    )


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(check_positive_int(k, "k") for k in ks)
    if not ks:
        raise InputError("ks must name at least one k")
    return ks


def recall_at_k(
    x: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
    metric: str = "cosine",
    ties: str = "expected",
    only_with_positives: bool = True,
) -> dict[int, float]:
    """Recall@K as in Song et al., "Deep Metric Learning via Facility Location" (CVPR 2017).

    Each item queries all the others; a query scores 1 when any of its K nearest neighbours
    shares its label.

    Args:
        x: packed codes ``uint8 [N, K/8]`` (Hamming ranking, ties handled by ``ties``) or
            features ``float [N, D]`` (exact FAISS search with ``metric``: "cosine", "l2",
            "ip"; float ties are left to FAISS's order).
        labels: ``[N]``.
        only_with_positives: average only over queries whose label occurs at least twice
            (a singleton can never score); False averages over all queries.

    Returns:
        ``{k: recall}``.
    """
    ks = _check_ks(ks)
    ties = check_ties(ties)
    x = np.asarray(x)
    labels = check_labels(labels, x.shape[0] if x.ndim else 0, "labels")
    if x.dtype == np.uint8:
        total, same = hamming_histograms(x, query_labels=labels)
        scores = np.stack([hit_probability(total, same, k, ties) for k in ks], axis=1)
    else:
        nn = exact_search(x, x, max(ks), metric, exclude=np.arange(x.shape[0]))
        hit = labels[nn] == labels[:, None]
        scores = np.stack([hit[:, :k].any(axis=1) for k in ks], axis=1).astype(np.float64)
    if only_with_positives:
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        scores = scores[counts[inverse] > 1]
    if not scores.shape[0]:
        return {k: float("nan") for k in ks}
    return {k: float(v) for k, v in zip(ks, scores.mean(axis=0))}
