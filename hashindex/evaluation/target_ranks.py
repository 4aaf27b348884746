"""Where a target lands in a ranking by any score (numpy only: usable at serving time).

:mod:`hashindex.evaluation.hamming` ranks by Hamming distance through per-distance histograms. A ranking
by a *real-valued* score -- the asymmetric score of a float query against a gallery's
``{-1, +1}`` codes (Gordo et al., "Asymmetric distances for binary embeddings", TPAMI 2014) --
has no such histogram, so this module works on score matrices instead; for symmetric codes the
score ``<b_q, b_g> = K - 2 d_H`` reproduces the Hamming ranking exactly.

For one query, let the *targets* be a set of gallery items (the exact float nearest neighbour,
or every other image of the same person) and let the best-scored target have score ``s*``.
With ``a`` items scored strictly above ``s*`` and ``n`` items at exactly ``s*``, ``m`` of them
targets, and the order inside the tied group uniformly random (McSherry & Najork, ECIR 2008;
the formulas are :mod:`hashindex.evaluation.ties`, shared with the Hamming metrics):

* the expected rank of the first target is ``a + (n + 1) / (m + 1)`` (the expected minimum
  of ``m`` positions drawn without replacement from ``1..n`` is ``(n + 1) / (m + 1)``);
* the probability that a target is among the first ``t`` is 1 when ``t - a >= n - m + 1``,
  0 when ``t <= a``, else ``1 - C(n - m, t - a) / C(n, t - a)``.

``candidate fraction needed`` is the expected rank over the gallery size, and recall@1 after
exactly reranking the first ``t`` candidates is the probability above with the exact nearest
neighbour as the single target (the reranker finds it iff it is a candidate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from hashindex.core.errors import InputError
from hashindex.evaluation.ties import first_target_rank, group_hit_probability

# Score rows materialised per block (float32 [rows, Nb]): ~32 MB.
_BLOCK_ELEMS = 1 << 23

Scorer = Callable[[int, int], np.ndarray]
"""``scorer(start, stop) -> float [stop - start, Nb]``: scores of queries ``start:stop``."""


@dataclass(frozen=True)
class TargetRanks:
    """Per query, the tied group that holds the best-scored target.

    Attributes:
        above: ``int64 [Nq]`` items scored strictly higher than the best target (``a``).
        tied: ``int64 [Nq]`` items at the best target's score, targets included (``n``).
        targets_tied: ``int64 [Nq]`` targets among them (``m``; 0 when a query has no target).
        gallery: ``int64 [Nq]`` items the query can retrieve (the excluded one not counted).
    """

    above: np.ndarray
    tied: np.ndarray
    targets_tied: np.ndarray
    gallery: np.ndarray

    @property
    def has_target(self) -> np.ndarray:
        return self.targets_tied > 0

    def expected_rank(self) -> np.ndarray:
        """``float64 [Nq]``: 1-based expected rank of the first target (NaN without one)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            r = first_target_rank(self.above, self.tied, self.targets_tied)
        return np.where(self.has_target, r, np.nan)

    def fraction_needed(self) -> np.ndarray:
        """``float64 [Nq]``: expected share of the gallery to rerank to reach a target."""
        return self.expected_rank() / self.gallery

    def hit_probability(self, depth: np.ndarray | int) -> np.ndarray:
        """``float64 [Nq]``: probability that a target is among the first ``depth`` items."""
        t = np.broadcast_to(np.asarray(depth, dtype=np.int64), self.above.shape) - self.above
        return group_hit_probability(self.tied, self.targets_tied, t)


def _blocks(nq: int, nb: int) -> Iterator[tuple[int, int]]:
    rows = max(1, _BLOCK_ELEMS // max(nb, 1))
    for start in range(0, nq, rows):
        yield start, min(nq, start + rows)


def target_ranks(
    scorer: Scorer,
    nq: int,
    nb: int,
    targets: Callable[[int, int, np.ndarray], np.ndarray],
    exclude: np.ndarray | None = None,
) -> TargetRanks:
    """Rank statistics of the best-scored target of every query.

    Args:
        scorer: ``(start, stop) -> float [stop - start, Nb]``, higher = closer.
        nq, nb: numbers of queries and gallery items.
        targets: ``(start, stop, scores) -> bool [stop - start, Nb]`` target mask of the block.
        exclude: ``int [Nq]`` gallery row each query must never retrieve (-1: none).
    """
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (nq,) or (exclude.size and (exclude.min() < -1 or exclude.max() >= nb)):
            raise InputError(f"exclude must be int [{nq}] with rows in [-1, {nb})")
    above = np.zeros(nq, np.int64)
    tied = np.zeros(nq, np.int64)
    m = np.zeros(nq, np.int64)
    for start, stop in _blocks(nq, nb):
        s = np.asarray(scorer(start, stop), dtype=np.float64)
        if s.shape != (stop - start, nb):
            raise InputError(f"scorer returned shape {s.shape}, expected {(stop - start, nb)}")
        tgt = np.asarray(targets(start, stop, s), dtype=bool)
        rows = np.arange(stop - start)
        if exclude is not None:
            ex = exclude[start:stop]
            keep = ex >= 0
            s[rows[keep], ex[keep]] = -np.inf
            tgt = tgt.copy()
            tgt[rows[keep], ex[keep]] = False
        best = np.where(tgt, s, -np.inf).max(axis=1, initial=-np.inf)
        above[start:stop] = (s > best[:, None]).sum(axis=1)
        eq = s == best[:, None]
        tied[start:stop] = eq.sum(axis=1)
        m[start:stop] = (eq & tgt).sum(axis=1)
    sizes = np.full(nq, nb, np.int64)
    if exclude is not None:
        sizes -= exclude >= 0
    return TargetRanks(above, tied, m, sizes)


def sign_matrix(codes_or_h: np.ndarray) -> np.ndarray:
    """``float32 [N, K]`` of ``+-1``: bit i is +1 exactly when ``h_i > 0`` (ARCHITECTURE §1)."""
    h = np.asarray(codes_or_h)
    return np.where(h > 0, 1.0, -1.0).astype(np.float32)
