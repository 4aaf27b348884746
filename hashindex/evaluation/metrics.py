"""Evaluation metrics for binary hash codes (numpy + FAISS only: usable at serving time).

Everything here is a pure function on arrays. Packed codes are ``uint8 [N, K/8]`` in FAISS
bit order (see :mod:`hashindex.core.codes`); ``K`` below is the code length in bits.

One primitive carries the Hamming metrics: :func:`hamming_histograms`, which counts, per
query, how many gallery items lie at each Hamming distance ``0..K`` (and how many of those
share the query's label). Distances come from ``faiss.hammings`` in blocks of queries, so
memory stays at about ``_BLOCK_ELEMS`` distances whatever the gallery size. Table 1 and 2 of
the paper, mAP@R, precision at a radius, Hamming Recall@K and recall against a candidate
budget are all closed-form functions of those histograms.

Gallery conventions, shared by every retrieval function:

* ``db_codes=None``: leave-one-out. The queries are the gallery and each query never
  retrieves itself (it is neither counted nor part of the denominator).
* ``exclude``: ``int [Nq]`` gallery row that query ``q`` must never retrieve (``-1``: none),
  for a gallery that contains the queries at known rows.

Ties. Hamming distances take only ``K + 1`` values, so a ranking by distance has large tied
groups and any fixed tie order (e.g. by gallery index) biases the result with the storage
order. The ranking metrics therefore average over a uniformly random order inside each tied
group (McSherry & Najork, "Computing information retrieval performance measures efficiently
in the presence of tied scores", ECIR 2008), computed exactly in closed form, not sampled.
Functions that take ``ties=`` also offer ``"pessimistic"`` (targets last in their tied
group) and ``"optimistic"`` (targets first).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from hashindex.core.codes import check_codes, hamming_pairs, unpack_bits
from hashindex.core.errors import InputError
from hashindex.core.validation import check_features, check_positive_int, check_radius

# Distances materialised per block (int32): ~16 MB, plus ~32 MB of histogram keys.
_BLOCK_ELEMS = 1 << 22

TIE_RULES = ("expected", "pessimistic", "optimistic")
FEATURE_METRICS = ("cosine", "l2", "ip")
DEFAULT_FRACTIONS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
)


# -- input checks ---------------------------------------------------------------------------
def _check_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"{name} must be 1-D of length {n}, got shape {labels.shape}")
    return labels


def _check_ties(ties: str) -> str:
    if ties not in TIE_RULES:
        raise InputError(f"unknown tie rule {ties!r}; choose one of {', '.join(TIE_RULES)}")
    return ties


def _check_exclude(exclude: np.ndarray | None, nq: int, nb: int) -> np.ndarray | None:
    if exclude is None:
        return None
    exclude = np.asarray(exclude)
    if exclude.ndim != 1 or exclude.shape[0] != nq:
        raise InputError(f"exclude must be 1-D of length {nq} (one gallery row per query), got shape {exclude.shape}")
    if exclude.size and not np.issubdtype(exclude.dtype, np.integer):
        raise InputError(f"exclude must hold integer gallery rows, got dtype {exclude.dtype}")
    exclude = exclude.astype(np.int64)
    if exclude.size and (exclude.min() < -1 or exclude.max() >= nb):
        raise InputError(f"exclude rows must be in [-1, {nb}) (-1: exclude nothing)")
    return exclude


def _gallery(
    query_codes: np.ndarray,
    db_codes: np.ndarray | None,
    exclude: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resolve the gallery convention -> (queries, gallery, exclude or None)."""
    q = check_codes(query_codes)
    if db_codes is None:
        if exclude is not None:
            raise InputError("exclude is implied (each query itself) when db_codes is None; pass db_codes to set it")
        return q, q, np.arange(q.shape[0], dtype=np.int64)
    db = check_codes(db_codes, q.shape[1])
    return q, db, _check_exclude(exclude, q.shape[0], db.shape[0])


def _gallery_labels(
    query_labels: np.ndarray, db_labels: np.ndarray | None, nq: int, nb: int, self_gallery: bool
) -> tuple[np.ndarray, np.ndarray]:
    ql = _check_labels(query_labels, nq, "query_labels")
    if db_labels is None:
        if not self_gallery:
            raise InputError("db_labels are required when db_codes is given")
        return ql, ql
    return ql, _check_labels(db_labels, nb, "db_labels")


def _gallery_sizes(nq: int, nb: int, exclude: np.ndarray | None) -> np.ndarray:
    """Items each query can retrieve: ``int64 [Nq]``."""
    sizes = np.full(nq, nb, dtype=np.int64)
    if exclude is not None:
        sizes -= exclude >= 0
    return sizes


# -- core: blocked Hamming distances and per-query histograms --------------------------------
def _distance_blocks(q: np.ndarray, db: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, D)`` with ``D = int32 [stop - start, Nb]`` Hamming distances."""
    nq, nb = q.shape[0], db.shape[0]
    rows = max(1, _BLOCK_ELEMS // max(nb, 1))
    nbytes = q.shape[1]
    for start in range(0, nq, rows):
        stop = min(nq, start + rows)
        d = np.empty((stop - start, nb), dtype=np.int32)
        faiss.hammings(faiss.swig_ptr(q[start:stop]), faiss.swig_ptr(db), stop - start, nb, nbytes, faiss.swig_ptr(d))
        yield start, stop, d


def hamming_histograms(
    query_codes: np.ndarray,
    db_codes: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-query counts of gallery items at each Hamming distance.

    Args:
        query_codes: ``uint8 [Nq, K/8]``.
        db_codes: ``uint8 [Nb, K/8]``, or None for leave-one-out over the queries.
        query_labels, db_labels: optional ``[Nq]`` / ``[Nb]`` labels (any comparable dtype);
            ``db_labels`` defaults to ``query_labels`` in leave-one-out mode.
        exclude: ``int [Nq]`` gallery row each query must not count (-1: none).

    Returns:
        ``(total, same)``: ``int64 [Nq, K+1]``, ``total[q, d]`` = gallery items at distance
        ``d`` from query ``q``; ``same[q, d]`` = those with the query's label (None
        without labels).
    """
    self_gallery = db_codes is None
    q, db, excl = _gallery(query_codes, db_codes, exclude)
    ql = dl = None
    if query_labels is not None:
        ql, dl = _gallery_labels(query_labels, db_labels, q.shape[0], db.shape[0], self_gallery)
    elif db_labels is not None:
        raise InputError("db_labels given without query_labels")
    bits = 8 * q.shape[1]
    # bins 0..K are distances, bin K+1 swallows excluded items; labels double the bins
    nbins = bits + 2
    groups = 1 if ql is None else 2
    total = np.zeros((q.shape[0], bits + 1), dtype=np.int64)
    same = None if ql is None else np.zeros_like(total)
    for start, stop, d in _distance_blocks(q, db):
        nrows = stop - start
        if excl is not None:
            r = np.flatnonzero(excl[start:stop] >= 0)
            d[r, excl[start + r]] = bits + 1
        key = d.astype(np.int64)
        if ql is not None:
            key += nbins * (ql[start:stop, None] == dl[None, :])
        key += (np.arange(nrows, dtype=np.int64) * (groups * nbins))[:, None]
        h = np.bincount(key.ravel(), minlength=nrows * groups * nbins).reshape(nrows, groups, nbins)
        total[start:stop] = h[:, :, : bits + 1].sum(axis=1)
        if same is not None:
            same[start:stop] = h[:, 1, : bits + 1]
    return total, same


def _log_factorials(n: int) -> np.ndarray:
    """``float64 [n+1]``: ``log(k!)`` for ``k = 0..n``."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def _harmonic(n: int) -> np.ndarray:
    """``float64 [n+1]``: ``H_k = sum_{i<=k} 1/i`` for ``k = 0..n``."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64))])


def _hit_probability(total: np.ndarray, target: np.ndarray, depth: np.ndarray | int, ties: str) -> np.ndarray:
    """Probability that at least one *target* item is among the first ``depth`` of the ranking.

    The ranking orders gallery items by Hamming distance; ``total`` / ``target`` are
    ``int [Nq, K+1]`` histograms of all items and of target items. Let the cut at ``depth``
    fall in the tied group at distance ``d``: ``a`` items strictly closer, ``n`` items at
    ``d`` of which ``m`` are targets, ``t = depth - a`` of them taken. A target strictly
    closer is a sure hit; otherwise, with a uniformly random order inside the group, the
    ``t`` taken miss every target with probability ``C(n-m, t) / C(n, t)``.

    Returns ``float64 [Nq]``.
    """
    nq = total.shape[0]
    cum = np.cumsum(total, axis=1)
    cum_target = np.cumsum(target, axis=1)
    depth = np.minimum(np.broadcast_to(np.asarray(depth, dtype=np.int64), (nq,)), cum[:, -1])
    level = np.minimum((cum < depth[:, None]).sum(axis=1), total.shape[1] - 1)
    rows = np.arange(nq)
    n = total[rows, level]
    m = target[rows, level]
    t = depth - (cum[rows, level] - n)
    before = (cum_target[rows, level] - m) > 0
    if ties == "pessimistic":
        in_group = t > n - m
    elif ties == "optimistic":
        in_group = (m > 0) & (t >= 1)
    else:
        lf = _log_factorials(int(n.max(initial=0)))
        possible = n - m >= t
        k = np.where(possible, n - m - t, 0)
        miss = np.where(possible, np.exp(lf[n - m] - lf[k] - lf[n] + lf[np.maximum(n - t, 0)]), 0.0)
        return np.where(before, 1.0, 1.0 - miss)
    return np.where(before | in_group, 1.0, 0.0)


# -- Table 1: pair distances ---------------------------------------------------------------
@dataclass(frozen=True)
class PairHammingTable:
    """Hamming distances of all unordered pairs ``i < j``, split by same / different label.

    Attributes:
        bits: code length K.
        radii: the radii reported by :meth:`format` (within = distance <= r).
        positive_hist: ``int64 [K+1]`` same-label pairs at each distance.
        negative_hist: ``int64 [K+1]`` different-label pairs at each distance.
    """

    bits: int
    radii: tuple[int, ...]
    positive_hist: np.ndarray
    negative_hist: np.ndarray

    @property
    def n_positive(self) -> int:
        return int(self.positive_hist.sum())

    @property
    def n_negative(self) -> int:
        return int(self.negative_hist.sum())

    def positive_within(self, radius: int) -> float:
        """Fraction of same-label pairs at Hamming distance <= radius."""
        return _fraction_within(self.positive_hist, radius)

    def negative_within(self, radius: int) -> float:
        """Fraction of different-label pairs at Hamming distance <= radius."""
        return _fraction_within(self.negative_hist, radius)

    def to_dict(self) -> dict:
        return {
            "bits": self.bits,
            "n_positive_pairs": self.n_positive,
            "n_negative_pairs": self.n_negative,
            "within": [
                {"radius": r, "positive": self.positive_within(r), "negative": self.negative_within(r)}
                for r in self.radii
            ],
            "positive_hist": self.positive_hist.tolist(),
            "negative_hist": self.negative_hist.tolist(),
        }

    def format(self) -> str:
        lines = [
            f"{self.bits}-bit codes: {self.n_positive:,} positive / {self.n_negative:,} negative pairs",
            f"{'Hamming distance':<18}{'positive pairs':>16}{'negative pairs':>16}",
        ]
        for r in self.radii:
            name = "= 0" if r == 0 else f"<= {r}"
            lines.append(f"{name:<18}{self.positive_within(r):>15.4%} {self.negative_within(r):>15.6%}")
        return "\n".join(lines)


def _fraction_within(hist: np.ndarray, radius: int) -> float:
    total = hist.sum()
    return float(hist[: check_radius(radius) + 1].sum() / total) if total else float("nan")


def pair_hamming_table(codes: np.ndarray, labels: np.ndarray, radii: Sequence[int] = (0, 1, 2)) -> PairHammingTable:
    """The paper's Table 1: how positive and negative pairs spread over Hamming distance.

    Every unordered pair ``i < j`` of ``codes uint8 [N, K/8]`` is counted once, as positive
    when ``labels[i] == labels[j]``. Computed as leave-one-out histograms over ordered pairs,
    which count each unordered pair exactly twice.
    """
    codes = check_codes(codes)
    labels = _check_labels(labels, codes.shape[0], "labels")
    radii = tuple(check_radius(r) for r in radii)
    total, same = hamming_histograms(codes, query_labels=labels)
    pos = same.sum(axis=0)
    neg = total.sum(axis=0) - pos
    return PairHammingTable(8 * codes.shape[1], radii, pos // 2, neg // 2)


# -- Table 2: candidate reduction ------------------------------------------------------------
@dataclass(frozen=True)
class CandidateReduction:
    """Expected share of the gallery a Hamming-radius lookup returns.

    Attributes:
        bits: code length K.
        radii: lookup radii (distance <= r).
        fraction: ``float64 [len(radii)]``: mean over queries of candidates / gallery size.
        mean_candidates: ``float64 [len(radii)]``: mean number of candidates.
        empty_fraction: ``float64 [len(radii)]``: share of queries with no candidate at all.
        n_queries, n_db: query and gallery sizes.
        count_self: whether a query's own gallery entry was counted.
    """

    bits: int
    radii: tuple[int, ...]
    fraction: np.ndarray
    mean_candidates: np.ndarray
    empty_fraction: np.ndarray
    n_queries: int
    n_db: int
    count_self: bool

    @property
    def reduction(self) -> np.ndarray:
        """Comparison reduction ``1 / fraction`` (inf when no query has a candidate)."""
        with np.errstate(divide="ignore"):
            return 1.0 / self.fraction

    def to_dict(self) -> dict:
        return {
            "bits": self.bits,
            "n_queries": self.n_queries,
            "n_db": self.n_db,
            "count_self": self.count_self,
            "rows": [
                {
                    "radius": r,
                    "fraction": float(f),
                    "reduction": float(x),
                    "mean_candidates": float(c),
                    "empty_fraction": float(e),
                }
                for r, f, x, c, e in zip(
                    self.radii, self.fraction, self.reduction, self.mean_candidates, self.empty_fraction
                )
            ],
        }

    def format(self) -> str:
        lines = [
            f"{self.bits}-bit codes, {self.n_queries:,} queries x {self.n_db:,} gallery"
            f" ({'query counted' if self.count_self else 'query itself not counted'})",
            f"{'radius':<8}{'fraction':>12}{'reduction':>12}{'candidates':>12}{'empty':>9}",
        ]
        for r, f, x, c, e in zip(self.radii, self.fraction, self.reduction, self.mean_candidates, self.empty_fraction):
            red = f"{x:>11.1f}x" if np.isfinite(x) else f"{'-':>12}"
            lines.append(f"{'<= ' + str(r):<8}{f:>12.6f}{red}{c:>12.1f}{e:>9.2%}")
        return "\n".join(lines)


def candidate_reduction(
    query_codes: np.ndarray,
    db_codes: np.ndarray | None = None,
    radii: Sequence[int] = (0, 1, 2),
    exclude: np.ndarray | None = None,
) -> CandidateReduction:
    """The paper's Table 2: expected fraction of the gallery left by a radius-r lookup.

    ``fraction[r] = mean_q |{j : d(q, j) <= r}| / N_q`` where ``N_q`` is the gallery the query
    searches. With ``db_codes=None`` each query is looked up among the *other* codes
    (itself not counted, ``N_q = N - 1``); to count the query itself, as a lookup into a
    gallery that already holds it does, pass the same array as ``db_codes`` (``N_q = N``).
    The comparison reduction is ``1 / fraction``.
    """
    q, db, excl = _gallery(query_codes, db_codes, exclude)
    radii = tuple(check_radius(r) for r in radii)
    total, _ = hamming_histograms(q, db, exclude=excl)
    cum = np.cumsum(total, axis=1)
    sizes = _gallery_sizes(q.shape[0], db.shape[0], excl)
    bits = 8 * q.shape[1]
    within = cum[:, [min(r, bits) for r in radii]]
    return CandidateReduction(
        bits=bits,
        radii=radii,
        fraction=(within / sizes[:, None]).mean(axis=0),
        mean_candidates=within.mean(axis=0),
        empty_fraction=(within == 0).mean(axis=0),
        n_queries=q.shape[0],
        n_db=db.shape[0],
        count_self=excl is None or not (excl >= 0).any(),
    )


# -- ranking quality: mAP@R, precision/recall at a radius, Recall@K -------------------------
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
    ties = _check_ties(ties)
    x = np.asarray(x)
    labels = _check_labels(labels, x.shape[0] if x.ndim else 0, "labels")
    if x.dtype == np.uint8:
        total, same = hamming_histograms(x, query_labels=labels)
        scores = np.stack([_hit_probability(total, same, k, ties) for k in ks], axis=1)
    else:
        nn = _exact_knn(x, x, max(ks), metric, exclude=np.arange(x.shape[0]))
        hit = labels[nn] == labels[:, None]
        scores = np.stack([hit[:, :k].any(axis=1) for k in ks], axis=1).astype(np.float64)
    if only_with_positives:
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        scores = scores[counts[inverse] > 1]
    if not scores.shape[0]:
        return {k: float("nan") for k in ks}
    return {k: float(v) for k, v in zip(ks, scores.mean(axis=0))}


# -- exact float neighbours ------------------------------------------------------------------
def _exact_knn(
    query: np.ndarray, db: np.ndarray, k: int, metric: str, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Exact ``k`` nearest gallery rows ``int64 [Nq, k]`` by FAISS flat search.

    With ``exclude``, one extra neighbour is fetched and the excluded row dropped (the last
    one is dropped when the excluded row is not among them, e.g. behind exact duplicates).
    """
    if metric not in FEATURE_METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(FEATURE_METRICS)}")
    q = check_features(query, name="query features")
    db = check_features(db, q.shape[1], name="gallery features")
    extra = 0 if exclude is None else 1
    if k + extra > db.shape[0]:
        raise InputError(f"k={k} needs at least {k + extra} gallery items, got {db.shape[0]}")
    if metric == "cosine":
        q, db = q.copy(), db.copy()
        faiss.normalize_L2(q)
        faiss.normalize_L2(db)
    index = faiss.IndexFlatL2(q.shape[1]) if metric == "l2" else faiss.IndexFlatIP(q.shape[1])
    index.add(db)
    _, ids = index.search(q, k + extra)
    if exclude is None:
        return ids
    keep = ids != exclude[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1)


# -- recall against the candidate budget ------------------------------------------------------
@dataclass(frozen=True)
class RecallCurve:
    """Recall of Hamming candidate generation as a function of the candidate budget.

    Attributes:
        fractions: ``float64 [F]`` candidate budgets as fractions of the gallery.
        nn_recall: ``float64 [F]`` share of queries whose exact float nearest neighbour is
            among the ``ceil(c N)`` Hamming-nearest items.
        identity_recall: ``float64 [F]`` share of queries (with a same-label gallery item)
            that get at least one same-label item among them; None without labels.
        n_queries, n_identity_queries, n_db: sizes behind the means.
        ties: the tie rule used at the budget boundary.
    """

    fractions: np.ndarray
    nn_recall: np.ndarray
    identity_recall: np.ndarray | None
    n_queries: int
    n_identity_queries: int
    n_db: int
    ties: str

    def to_dict(self) -> dict:
        return {
            "fractions": self.fractions.tolist(),
            "nn_recall": self.nn_recall.tolist(),
            "identity_recall": None if self.identity_recall is None else self.identity_recall.tolist(),
            "n_queries": self.n_queries,
            "n_identity_queries": self.n_identity_queries,
            "n_db": self.n_db,
            "ties": self.ties,
        }

    def format(self) -> str:
        head = f"{'fraction':>10}{'candidates':>12}{'NN recall':>11}"
        if self.identity_recall is not None:
            head += f"{'id recall':>11}"
        lines = [head]
        for i, c in enumerate(self.fractions):
            row = f"{c:>10.4g}{math.ceil(c * self.n_db):>12,}{self.nn_recall[i]:>11.4f}"
            if self.identity_recall is not None:
                row += f"{self.identity_recall[i]:>11.4f}"
            lines.append(row)
        return "\n".join(lines)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or not f.size or not np.all((f > 0) & (f <= 1)):
        raise InputError(f"fractions must be a non-empty 1-D list in (0, 1], got {fractions!r}")
    return f


def _nn_setup(query_codes, db_codes, query_feats, db_feats, metric, exclude):
    """Shared by the candidate-budget metrics.

    Returns ``(q, db, exclude, level)`` with ``level int32 [Nq]`` the Hamming distance from
    each query to its exact float nearest neighbour.
    """
    self_gallery = db_codes is None
    if self_gallery != (db_feats is None):
        raise InputError("give both db_codes and db_feats, or neither (leave-one-out over the queries)")
    q, db, excl = _gallery(query_codes, db_codes, exclude)
    qf = check_features(query_feats, name="query features")
    dbf = qf if self_gallery else check_features(db_feats, qf.shape[1], name="gallery features")
    if qf.shape[0] != q.shape[0] or dbf.shape[0] != db.shape[0]:
        raise InputError(
            f"codes and features disagree in row count: queries {q.shape[0]} vs {qf.shape[0]}, "
            f"gallery {db.shape[0]} vs {dbf.shape[0]}"
        )
    nn = _exact_knn(qf, dbf, 1, metric, excl)[:, 0]
    level = hamming_pairs(q, db[nn])
    return q, db, excl, level


def recall_vs_candidates(
    query_codes: np.ndarray,
    db_codes: np.ndarray | None,
    query_feats: np.ndarray,
    db_feats: np.ndarray | None,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    metric: str = "cosine",
    exclude: np.ndarray | None = None,
    ties: str = "expected",
) -> RecallCurve:
    """How much of the gallery must be reranked: recall of the Hamming shortlist vs its size.

    For each budget ``c``, the shortlist is the ``L = ceil(c N_q)`` Hamming-nearest gallery
    items (``N_q``: the gallery the query searches, one less when it excludes itself). A
    query's exact float nearest neighbour (FAISS flat search, ``metric``) is found when it is
    in the shortlist; with labels, separately, when any same-label item is. When ``L`` cuts a
    tied distance group, ``ties="expected"`` scores the probability under a random order
    inside the group (``(L - a) / n`` for the nearest neighbour with ``a`` items strictly
    closer and ``n`` tied), "pessimistic" counts it found only when the whole group fits,
    "optimistic" when any of it does.

    Args:
        query_codes / db_codes: ``uint8 [Nq, K/8]`` / ``[Nb, K/8]``; ``db_codes`` and
            ``db_feats`` None for leave-one-out over the queries.
        query_feats / db_feats: ``float [Nq, D]`` / ``[Nb, D]`` full-precision features.
        query_labels / db_labels: optional identities for the identity recall.
    """
    fr = _check_fractions(fractions)
    ties = _check_ties(ties)
    self_gallery = db_codes is None
    q, db, excl, level = _nn_setup(query_codes, db_codes, query_feats, db_feats, metric, exclude)
    ql = dl = None
    if query_labels is not None:
        ql, dl = _gallery_labels(query_labels, db_labels, q.shape[0], db.shape[0], self_gallery)
    total, same = hamming_histograms(q, db, ql, dl, excl)
    target = np.zeros_like(total)
    target[np.arange(q.shape[0]), level] = 1
    sizes = _gallery_sizes(q.shape[0], db.shape[0], excl)
    depths = [np.ceil(c * sizes).astype(np.int64) for c in fr]
    nn_recall = np.array([_hit_probability(total, target, d, ties).mean() for d in depths])
    identity_recall, n_id = None, 0
    if same is not None:
        has = same.sum(axis=1) > 0
        n_id = int(has.sum())
        identity_recall = np.array(
            [_hit_probability(total[has], same[has], d[has], ties).mean() if n_id else np.nan for d in depths]
        )
    return RecallCurve(fr, nn_recall, identity_recall, q.shape[0], n_id, int(sizes.max(initial=0)), ties)


def candidate_fraction_needed(
    query_codes: np.ndarray,
    db_codes: np.ndarray | None,
    query_feats: np.ndarray,
    db_feats: np.ndarray | None,
    metric: str = "cosine",
    exclude: np.ndarray | None = None,
    ties: str = "expected",
) -> np.ndarray:
    """Per query, the share of the gallery that must be reranked to reach its exact float NN.

    With ``a`` gallery items strictly Hamming-closer than the nearest neighbour and ``n`` at
    its distance (itself included), its Hamming rank is ``a + 1`` ("optimistic"),
    ``a + n`` ("pessimistic": guaranteed whatever the tie order) or ``a + (n + 1) / 2``
    ("expected" under a random tie order); the result is that rank over ``N_q``. Same
    arguments as :func:`recall_vs_candidates`. Returns ``float64 [Nq]``, ready for
    ``np.quantile(..., [0.5, 0.95, 0.99])``.
    """
    ties = _check_ties(ties)
    q, db, excl, level = _nn_setup(query_codes, db_codes, query_feats, db_feats, metric, exclude)
    sizes = _gallery_sizes(q.shape[0], db.shape[0], excl)
    closer = np.zeros(q.shape[0], dtype=np.int64)
    tied = np.zeros(q.shape[0], dtype=np.int64)
    # only two counts per query are needed, so skip the histogram: compare with the NN level
    for start, stop, d in _distance_blocks(q, db):
        lv = level[start:stop, None]
        if excl is not None:
            r = np.flatnonzero(excl[start:stop] >= 0)
            d[r, excl[start + r]] = np.iinfo(np.int32).max
        closer[start:stop] = (d < lv).sum(axis=1)
        tied[start:stop] = (d == lv).sum(axis=1)
    if ties == "optimistic":
        rank = closer + 1.0
    elif ties == "pessimistic":
        rank = (closer + tied).astype(np.float64)
    else:
        rank = closer + (tied + 1) / 2.0
    return rank / sizes


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


# -- clustering quality: NMI -----------------------------------------------------------------
def nmi(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Normalised mutual information ``I(A;B) / ((H(A) + H(B)) / 2)``.

    Arithmetic-mean normalisation, natural log, and the same limit cases as scikit-learn's
    ``normalized_mutual_info_score`` default: 1.0 when both labelings are a single cluster,
    0.0 when the mutual information is 0. The contingency table is kept sparse (unique
    label pairs), so thousands of classes cost nothing.
    """
    a = np.asarray(labels_a)
    b = np.asarray(labels_b)
    if a.ndim != 1 or b.shape != a.shape:
        raise InputError(f"labelings must be 1-D of equal length, got shapes {a.shape} and {b.shape}")
    n = a.shape[0]
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    ka, kb = (int(ia.max()) + 1, int(ib.max()) + 1) if n else (0, 0)
    if ka == kb and ka <= 1:
        return 1.0
    pa = np.bincount(ia) / n
    pb = np.bincount(ib) / n
    pair, nij = np.unique(ia.astype(np.int64) * kb + ib, return_counts=True)
    pij = nij / n
    mi = float(np.sum(pij * (np.log(pij) - np.log(pa[pair // kb]) - np.log(pb[pair % kb]))))
    if mi <= 0 or ka == 1 or kb == 1:
        return 0.0
    ha = -float(np.sum(pa * np.log(pa)))
    hb = -float(np.sum(pb * np.log(pb)))
    return mi / ((ha + hb) / 2.0)


def nmi_kmeans(
    x: np.ndarray,
    labels: np.ndarray,
    n_clusters: int | None = None,
    seed: int = 0,
    niter: int = 20,
) -> float:
    """NMI between ``labels`` and a k-means clustering of ``x`` (Song et al. 2017 protocol).

    Args:
        x: packed codes ``uint8 [N, K/8]``, clustered as their ``{0,1}`` bits (squared L2
            between bit vectors is the Hamming distance), or features ``float [N, D]``.
        labels: ``[N]`` ground-truth classes.
        n_clusters: defaults to the number of distinct labels.
        seed, niter: FAISS k-means seed and iterations; all points are used for training.
    """
    x = np.asarray(x)
    data = unpack_bits(x).astype(np.float32) if x.dtype == np.uint8 else check_features(x)
    labels = _check_labels(labels, data.shape[0], "labels")
    k = len(np.unique(labels)) if n_clusters is None else check_positive_int(n_clusters, "n_clusters")
    if k > data.shape[0]:
        raise InputError(f"n_clusters={k} exceeds the {data.shape[0]} points")
    km = faiss.Kmeans(
        data.shape[1], k, niter=niter, seed=seed, verbose=False,
        min_points_per_centroid=1, max_points_per_centroid=max(1, -(-data.shape[0] // k)),
    )
    km.train(data)
    _, assign = km.index.search(data, 1)
    return nmi(labels, assign[:, 0])
