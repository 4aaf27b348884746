"""Hamming distances between packed codes, per query and per pair (numpy + FAISS only).

Packed codes are ``uint8 [N, K/8]`` in FAISS bit order (see :mod:`hashindex.core.codes`); ``K``
below is the code length in bits.

One primitive carries the Hamming metrics: :func:`hamming_histograms`, which counts, per
query, how many gallery items lie at each Hamming distance ``0..K`` (and how many of those
share the query's label). Distances come from ``faiss.hammings`` in blocks of queries, so
memory stays at about ``_BLOCK_ELEMS`` distances whatever the gallery size. This module holds
Table 1 (pair distances) and Table 2 (candidate reduction of a radius lookup) of the paper;
:mod:`hashindex.evaluation.ranking` (mAP@R, radius retrieval, Recall@K) and
:mod:`hashindex.evaluation.recall` (recall against a candidate budget) build on the histograms.

Gallery conventions, shared by every retrieval function:

* ``db_codes=None``: leave-one-out. The queries are the gallery and each query never
  retrieves itself (it is neither counted nor part of the denominator).
* ``exclude``: ``int [Nq]`` gallery row that query ``q`` must never retrieve (``-1``: none),
  for a gallery that contains the queries at known rows.

Ties inside a distance follow :mod:`hashindex.evaluation.ties`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from hashindex.core.codes import check_codes
from hashindex.core.errors import InputError
from hashindex.core.validation import check_radius
from hashindex.evaluation.ties import group_hit_probability

# Distances materialised per block (int32): ~16 MB, plus ~32 MB of histogram keys.
_BLOCK_ELEMS = 1 << 22


# -- input checks ---------------------------------------------------------------------------
def check_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"{name} must be 1-D of length {n}, got shape {labels.shape}")
    return labels

def check_exclude(exclude: np.ndarray | None, nq: int, nb: int) -> np.ndarray | None:
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


def resolve_gallery(
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
    return q, db, check_exclude(exclude, q.shape[0], db.shape[0])


def gallery_labels(
    query_labels: np.ndarray, db_labels: np.ndarray | None, nq: int, nb: int, self_gallery: bool
) -> tuple[np.ndarray, np.ndarray]:
    ql = check_labels(query_labels, nq, "query_labels")
    if db_labels is None:
        if not self_gallery:
            raise InputError("db_labels are required when db_codes is given")
        return ql, ql
    return ql, check_labels(db_labels, nb, "db_labels")


def gallery_sizes(nq: int, nb: int, exclude: np.ndarray | None) -> np.ndarray:
    """Items each query can retrieve: ``int64 [Nq]``."""
    sizes = np.full(nq, nb, dtype=np.int64)
    if exclude is not None:
        sizes -= exclude >= 0
    return sizes

# -- blocked Hamming distances and per-query histograms --------------------------------
def distance_blocks(q: np.ndarray, db: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
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
    q, db, excl = resolve_gallery(query_codes, db_codes, exclude)
    ql = dl = None
    if query_labels is not None:
        ql, dl = gallery_labels(query_labels, db_labels, q.shape[0], db.shape[0], self_gallery)
    elif db_labels is not None:
        raise InputError("db_labels given without query_labels")
    bits = 8 * q.shape[1]
    # bins 0..K are distances, bin K+1 swallows excluded items; labels double the bins
    nbins = bits + 2
    groups = 1 if ql is None else 2
    total = np.zeros((q.shape[0], bits + 1), dtype=np.int64)
    same = None if ql is None else np.zeros_like(total)
    for start, stop, d in distance_blocks(q, db):
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

def hit_probability(total: np.ndarray, target: np.ndarray, depth: np.ndarray | int, ties: str) -> np.ndarray:
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
    return np.where(before, 1.0, group_hit_probability(n, m, t, ties))

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
    labels = check_labels(labels, codes.shape[0], "labels")
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
    q, db, excl = resolve_gallery(query_codes, db_codes, exclude)
    radii = tuple(check_radius(r) for r in radii)
    total, _ = hamming_histograms(q, db, exclude=excl)
    cum = np.cumsum(total, axis=1)
    sizes = gallery_sizes(q.shape[0], db.shape[0], excl)
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
