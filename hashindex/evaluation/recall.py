"""Recall of the Hamming shortlist against its size: how much of the gallery must be reranked.

The index shortlists Hamming neighbours and reranks them exactly, so a code is good when each
query's exact float nearest neighbour (:mod:`hashindex.evaluation.exact`) comes early in the
Hamming ranking. Same gallery conventions as :mod:`hashindex.evaluation.hamming`; tie rules from
:mod:`hashindex.evaluation.ties`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hashindex.core.codes import hamming_pairs
from hashindex.core.errors import InputError
from hashindex.core.validation import check_features
from hashindex.evaluation.exact import exact_search
from hashindex.evaluation.hamming import (
    distance_blocks,
    gallery_labels,
    gallery_sizes,
    hamming_histograms,
    hit_probability,
    resolve_gallery,
)
from hashindex.evaluation.ties import check_ties, first_target_rank

DEFAULT_FRACTIONS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
)


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
    q, db, excl = resolve_gallery(query_codes, db_codes, exclude)
    qf = check_features(query_feats, name="query features")
    dbf = qf if self_gallery else check_features(db_feats, qf.shape[1], name="gallery features")
    if qf.shape[0] != q.shape[0] or dbf.shape[0] != db.shape[0]:
        raise InputError(
            f"codes and features disagree in row count: queries {q.shape[0]} vs {qf.shape[0]}, "
            f"gallery {db.shape[0]} vs {dbf.shape[0]}"
        )
    nn = exact_search(qf, dbf, 1, metric, excl)[:, 0]
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
    ties = check_ties(ties)
    self_gallery = db_codes is None
    q, db, excl, level = _nn_setup(query_codes, db_codes, query_feats, db_feats, metric, exclude)
    ql = dl = None
    if query_labels is not None:
        ql, dl = gallery_labels(query_labels, db_labels, q.shape[0], db.shape[0], self_gallery)
    total, same = hamming_histograms(q, db, ql, dl, excl)
    target = np.zeros_like(total)
    target[np.arange(q.shape[0]), level] = 1
    sizes = gallery_sizes(q.shape[0], db.shape[0], excl)
    depths = [np.ceil(c * sizes).astype(np.int64) for c in fr]
    nn_recall = np.array([hit_probability(total, target, d, ties).mean() for d in depths])
    identity_recall, n_id = None, 0
    if same is not None:
        has = same.sum(axis=1) > 0
        n_id = int(has.sum())
        identity_recall = np.array(
            [hit_probability(total[has], same[has], d[has], ties).mean() if n_id else np.nan for d in depths]
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
    ties = check_ties(ties)
    q, db, excl, level = _nn_setup(query_codes, db_codes, query_feats, db_feats, metric, exclude)
    sizes = gallery_sizes(q.shape[0], db.shape[0], excl)
    closer = np.zeros(q.shape[0], dtype=np.int64)
    tied = np.zeros(q.shape[0], dtype=np.int64)
    # only two counts per query are needed, so skip the histogram: compare with the NN level
    for start, stop, d in distance_blocks(q, db):
        lv = level[start:stop, None]
        if excl is not None:
            r = np.flatnonzero(excl[start:stop] >= 0)
            d[r, excl[start + r]] = np.iinfo(np.int32).max
        closer[start:stop] = (d < lv).sum(axis=1)
        tied[start:stop] = (d == lv).sum(axis=1)
    return first_target_rank(closer, tied, 1, ties) / sizes
