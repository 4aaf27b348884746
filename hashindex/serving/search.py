"""One search pipeline for every backend: the same steps, in the same order, on a resolved plan.

``IndexFront.search`` checks the arguments and encodes the queries; serving/plan.py resolves
every default into a :class:`~hashindex.serving.plan.Plan`; then :func:`execute` runs it:
restrict (the allow-lists) -> candidates -> widen + group by label | rerank -> Hamming fill ->
ids / labels -> open-set threshold -> :class:`SearchResult`.

A backend supplies a narrow protocol (hooks on the index object, all under its read lock):

- ``_restrict(restriction, nq) -> Scope``: how many items a search may return, and the
  backend's handle on them (an allow-list of rows, Milvus filter expressions, or None);
- ``_hamming_range(qcodes, radius, scope)`` / ``_hamming_knn(qcodes, c, scope)`` ->
  :class:`Candidates`, whose keys are the backend's row keys, and (asymmetric backends)
  ``_asymmetric_knn(x, z, c, nprobe, scope)`` -> ``(Candidates, scanned int64 [nq])``, the codes
  each query scored (``n_scanned``: the probed lists' sizes with ``nprobe``);
- ``_rows(keys, features=, labels=, codes=) -> Rows``: the stored rows of those keys; their
  ``features`` may be a compact rerank store (``Rows.exact`` False: HashIndex(rerank="int8")),
  and then ``_exact_features(keys) -> float32 [M, D]`` gives the rows the results are rescored on;
- optionally ``_rerank(x, candidates, k)`` (Milvus reranks on its server), ``_range_scans``
  (what ``n_scanned`` counts for a radius) and ``_max_candidates`` (a server's cap).

Shapes: ``x float32 [nq, D]``, ``codes uint8 [nq, bits/8]``, ``z float32 [nq, bits]``; results
``[nq, w]`` with ``w = k`` (``k * group_size`` when grouping), padded with id -1, score -inf
(+inf for l2), Hamming -1, label -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hashindex.core.codes import hamming_pairs, unpack_bits
from hashindex.serving.candidates.csr import Candidates, empty, from_knn
from hashindex.serving.candidates.modes import multiprobe_scans, select_candidates
from hashindex.serving.filters import Restriction
from hashindex.serving.grouping import below_threshold, csr_scores, group_top, widen_for_labels
from hashindex.serving.rerank import higher_is_better, rerank, rescore_exact
from hashindex.serving.plan import Plan

# rows per result a compact (int8 / float16) store hands to the exact rescoring: its scores
# swap near-ties around the k-th; 3k float rows read per query bring recall@k back to the
# float32 rerank's (benchmarks/README.md, "Memory per item")
COMPACT_RESCORE = 3

# a projection row whose largest entry exceeds this is rescaled before the fast-scan tables are
# built (their float32 sums must not overflow); ranking by <z, 2b - 1> ignores the scale
_MAX_PROJECTION = 1e30


@dataclass
class SearchResult:
    """Per-query results, best first.

    ids: int64 ``[nq, k]``, -1 where fewer than k candidates were found.
    scores: float32 ``[nq, k]``: cosine / inner product (higher is better) or squared L2
        distance (lower is better) on the stored full-precision features.
    hamming: int32 ``[nq, k]``: Hamming distance of each result's code to the query's (-1 pad).
    n_candidates: int64 ``[nq]``: how many items were reranked for each query.
    labels: int64 ``[nq, k]``: each result's label (-1 pad); None when the index has no labels.
    n_scanned: int64 ``[nq]``: codes the candidate stage scored for each query: every allowed
        item per pass of a scan (multi-probe makes two passes, an upper bound where its range
        runs on hash tables; widening for ``group_by`` one more per round), the items in the
        probed lists with ``nprobe``, the candidates found for a radius on HashIndex's hash
        tables (they probe buckets, not every code); for Milvus's BIN_IVF_FLAT an upper bound.
    n_reranked: int64 ``[nq]``: items scored on their rerank store (= ``n_candidates``).
    exact_scores: whether ``scores`` are exact on the stored features. An index with a compact
        rerank store (``HashIndex(rerank="int6" | "int8" | "float16")``) ranks the candidates on it
        and then rescores its best 3k rows from its float store and keeps k (a grouped search: the
        best 3k labels, 3g items each, grouped again), so they are exact (True) on HashIndex.

    With ``group_by="label"`` and ``group_size=g`` the arrays are ``[nq, k * g]``: label block j
    in columns ``j*g .. j*g+g-1`` (``ids.reshape(nq, k, g)``: one row per label), best first.
    """

    ids: np.ndarray
    scores: np.ndarray
    hamming: np.ndarray
    n_candidates: np.ndarray
    labels: np.ndarray | None = None
    n_scanned: np.ndarray | None = None
    n_reranked: np.ndarray | None = None
    exact_scores: bool = True


def no_result(nq: int, width: int, metric: str, labelled: bool) -> SearchResult:
    """Padding only: ``nq`` queries of ``width`` columns, nothing scanned."""
    pad = -np.inf if higher_is_better(metric) else np.inf
    zeros = np.zeros(nq, np.int64)
    return SearchResult(
        np.full((nq, width), -1, np.int64), np.full((nq, width), pad, np.float32), np.full((nq, width), -1, np.int32),
        zeros, np.full((nq, width), -1, np.int64) if labelled else None, zeros.copy(), zeros.copy(),
    )  # fmt: skip


# -- what the backends exchange with the pipeline ----------------------------------------------------
@dataclass(frozen=True)
class Queries:
    """Checked queries: features ``x``, their codes, and (asymmetric) their projections ``z``."""

    x: np.ndarray
    codes: np.ndarray
    z: np.ndarray | None = None


@dataclass(frozen=True)
class Scope:
    """The items a search may return: their number, and the backend's handle on them (None: all)."""

    count: int
    handle: Any = None


@dataclass(frozen=True)
class Rows:
    """Stored rows of some keys: table arrays (``[R]`` / ``[R, ...]``, only those asked for) and
    ``at int64 [M]``, the table row of each key asked. ``keys``: the key of each table row, or
    None when a table row's number is its key (HashIndex: the stores themselves, no copy).
    ``features``: what candidates are scored on: the feature rows, or (``exact`` False) a compact
    rerank store that scores itself (serving/store.py ``CompactStore.score``, approximate).
    ``codes``: anything ``codes[at]`` reads rows from: an array, or a loaded index's code file
    (serving/store.py ``FileRows``, read by pread)."""

    at: np.ndarray
    ids: np.ndarray
    features: np.ndarray | None = None
    labels: np.ndarray | None = None
    codes: Any = None
    keys: np.ndarray | None = None
    exact: bool = True

    def key_of(self, rows: np.ndarray) -> np.ndarray:
        """Table rows (-1 padded, any shape) -> keys (-1 padded)."""
        if self.keys is None:
            return rows
        return np.where(rows >= 0, self.keys[np.maximum(rows, 0)] if self.keys.size else -1, -1)


# -- the pipeline --------------------------------------------------------------------------------------
def execute(index: Any, plan: Plan, q: Queries) -> SearchResult:
    """Execute ``plan`` on ``index`` for encoded queries ``q`` (see the module docstring)."""
    nq = q.x.shape[0]
    labelled = bool(index._has_labels())
    if nq == 0 or plan.nothing_allowed:
        return no_result(nq, plan.width, index.metric, labelled)
    if q.z is not None:
        q = Queries(q.x, q.codes, rankable_projection(q.z, q.codes))
    with index._reading():
        scope = restrict(index, plan.options.restriction, nq)
        cands, scanned = candidates(index, plan, q, scope)
        labels, exact = None, True
        if plan.options.grouped:
            cands = widen(index, plan, q, scope, cands, scanned)
            keys, scores, ham, labels, exact = group(index, plan, q.x, cands)
        else:
            keys, scores, ham = index._rerank(q.x, cands, plan.k)
        ids, labels, ham = fill_rows(index, q, keys, ham, labels if labelled else None, labelled, plan.asymmetric)
    n = cands.counts
    res = SearchResult(ids, scores, ham, n, labels, scanned, n.copy(), exact)
    return threshold(res, plan.options.min_score, index.metric)


def restrict(index: Any, restriction: Restriction | None, nq: int) -> Scope:
    """The allow-lists as the backend's scope (every item when there are none)."""
    if restriction is None:
        return Scope(len(index))
    return index._restrict(restriction, nq)


def candidates(index: Any, plan: Plan, q: Queries, scope: Scope) -> tuple[Candidates, np.ndarray]:
    """The plan's candidates among the scope, and the codes scored per query (``int64 [nq]``)."""
    nq, n = q.x.shape[0], scope.count
    if n == 0:
        return empty(nq), np.zeros(nq, np.int64)
    if plan.asymmetric:
        return index._asymmetric_knn(q.x, q.z, min(plan.candidates, n), plan.nprobe, scope)
    cands = select_candidates(
        q.codes, plan.radius, plan.candidates, plan.at_least, n, index.bits,
        lambda c, r: index._hamming_range(c, r, scope), lambda c, m: index._hamming_knn(c, m, scope),
    )  # fmt: skip
    if plan.radius is not None and not index._range_scans(plan.radius, scope):
        return cands, cands.counts.copy()  # hash tables probe buckets: what they found
    passes = 1 if plan.at_least is None else multiprobe_scans(plan.at_least, n)
    return cands, np.full(nq, passes * n, np.int64)


def widen(index: Any, plan: Plan, q: Queries, scope: Scope, cands: Candidates, scanned: np.ndarray) -> Candidates:
    """group_by: widen each query's candidates to k labels through the flat ranking (never the
    lists, which may hold fewer labels; a radius ball is the rule and is not widened).
    ``scanned`` grows by one pass per round a query is widened."""

    def refetch(qi: np.ndarray, c: int) -> Candidates:
        scanned[qi] += scope.count
        if plan.asymmetric:
            return index._asymmetric_knn(q.x[qi], q.z[qi], c, None, scope)[0]
        return index._hamming_knn(q.codes[qi], c, scope)

    def labels_of(keys: np.ndarray) -> np.ndarray:
        rows = index._rows(keys, labels=True)
        return rows.labels[rows.at]

    return widen_for_labels(cands, plan.k, scope.count, labels_of, None if plan.radius is not None else refetch,
                            index._max_candidates)


def group(index: Any, plan: Plan, x: np.ndarray, cands: Candidates):
    """Score every candidate, keep the k best labels with ``group_size`` items each:
    ``(keys, scores, hamming, labels)``, each ``[nq, k * group_size]``, and whether the scores
    are exact. On a compact rerank store the ``COMPACT_RESCORE * k`` best labels with
    ``COMPACT_RESCORE * group_size`` items each are kept on its scores, then those rows are
    scored exactly (``_exact_features``) and grouped again."""
    rows = index._rows(cands.keys, features=True, labels=True)
    k, size = plan.k, plan.options.group_size
    wide = (k, size) if rows.exact else (COMPACT_RESCORE * k, COMPACT_RESCORE * size)
    scores = csr_scores(x, rows.features, cands.lims, rows.at, index.metric)
    pos, scores, ham, labels = group_top(
        cands.lims, rows.at, cands.hamming, scores, rows.labels[rows.at], *wide, index.metric
    )
    keys = rows.key_of(pos)
    if rows.exact:
        return keys, scores, ham, labels, True
    # the compact store's order blurs near the k-th label: group the kept rows again on exact scores
    kept = from_knn(keys, ham)
    exact = csr_scores(x, index._exact_features(kept.keys), kept.lims, np.arange(kept.keys.size), index.metric)
    keys, scores, ham, labels = group_top(*kept, exact, labels[keys >= 0], k, size, index.metric)
    return keys, scores, ham, labels, True


def rerank_rows(index: Any, x: np.ndarray, cands: Candidates, k: int):
    """The exact top-k of each query's candidates on their stored features: ``(keys, scores,
    hamming)`` ``[nq, k]``; equal scores in table-row order (HashIndex: storage; Milvus: id).
    On a compact rerank store the top ``COMPACT_RESCORE * k`` are ranked on it, then rescored
    exactly (:func:`rescore`) and the k best kept."""
    rows = index._rows(cands.keys, features=True)
    if not rows.exact:
        # the compact store's order blurs near the k-th score: rescore a few more rows exactly
        slots, _ = rows.features.top(x, cands.lims, rows.at, COMPACT_RESCORE * k, index.metric, distinct=True)
        valid = slots >= 0
        pos, ham = np.full(slots.shape, -1, np.int64), np.full(slots.shape, -1, np.int32)
        pos[valid], ham[valid] = rows.at[slots[valid]], cands.hamming[slots[valid]]
        keys, scores, ham = rescore(index, x, rows.key_of(pos), ham)
        return keys[:, :k], scores[:, :k], ham[:, :k]
    pos, scores, ham = rerank(x, rows.features, cands.lims, rows.at, cands.hamming, k, index.metric)
    return rows.key_of(pos), scores, ham


def rescore(index: Any, x: np.ndarray, keys: np.ndarray, ham: np.ndarray):
    """The returned ``keys [nq, k]`` (-1 padded) scored exactly on their float rows
    (``_exact_features``: only these rows are read) and re-sorted best first (ties by key)."""
    valid = keys >= 0
    return rescore_exact(x, index._exact_features(keys[valid]), keys, ham, index.metric)


def fill_rows(index: Any, q: Queries, keys: np.ndarray, ham: np.ndarray, labels, labelled: bool, asymmetric: bool):
    """Result keys -> ``(ids, labels, hamming)``: ids and (labelled index) labels of the rows;
    after an asymmetric ranking, the Hamming distances of the results (only theirs: the
    candidate stage did not compute any)."""
    valid = keys >= 0
    ids = np.full(keys.shape, -1, np.int64)
    want_labels = labelled and labels is None
    if want_labels:
        labels = np.full(keys.shape, -1, np.int64)
    if valid.any():
        rows = index._rows(keys[valid], labels=want_labels, codes=asymmetric)
        ids[valid] = rows.ids[rows.at]
        if want_labels:
            labels[valid] = rows.labels[rows.at]
        if asymmetric:
            r, _ = np.nonzero(valid)
            ham[valid] = hamming_pairs(q.codes[r], rows.codes[rows.at])
    return ids, labels, ham


def threshold(res: SearchResult, min_score: float | None, metric: str) -> SearchResult:
    """The open-set threshold: results below ``min_score`` (l2: above) become padding."""
    if min_score is None:
        return res
    drop = below_threshold(res.scores, min_score, metric) & (res.ids >= 0)
    res.ids[drop] = -1
    res.scores[drop] = -np.inf if higher_is_better(metric) else np.inf
    res.hamming[drop] = -1
    if res.labels is not None:
        res.labels[drop] = -1
    return res


def rankable_projection(z: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Query projections ``z [nq, bits]`` every asymmetric scan can rank by (a copy where changed).

    A row with an infinite entry keeps only the signs of those (they dominate every finite
    term); NaN counts as 0; a row whose largest entry exceeds ``_MAX_PROJECTION`` is scaled
    down (ranking by ``<z, 2b - 1>`` ignores a positive scale; the scan's float32 sums do not);
    an all-zero row (a query at the hasher's centre, or a gallery of identical rows) becomes
    the query's own code as {-1, +1}, so it ranks by Hamming distance instead of not at all.
    """
    z = np.asarray(z, dtype=np.float32)
    big = np.abs(z).max(axis=1, initial=0) if z.size else np.zeros(z.shape[0], np.float32)
    bad = ~np.isfinite(big) | (big > _MAX_PROJECTION) | (big == 0)
    if not bad.any():
        return z
    z = z.copy()
    inf = np.isinf(z[bad])
    rows = np.where(inf.any(axis=1, keepdims=True), np.where(inf, np.sign(z[bad]), 0), np.nan_to_num(z[bad], nan=0.0))
    scale = np.abs(rows).max(axis=1, keepdims=True, initial=0)
    signs = unpack_bits(codes[bad])[:, : z.shape[1]].astype(np.float32) * 2 - 1
    z[bad] = np.where(scale > 0, rows / np.where(scale > 0, scale, 1), signs)
    return z
