"""Tied groups in a ranking: the one closed-form tie rule every ranking metric uses (numpy only).

A ranking by Hamming distance (``K + 1`` values) or by any coarse score has large tied groups,
and a fixed tie order (e.g. by gallery index) would bias a metric with the storage order. The
metrics therefore average over a uniformly random order inside each tied group (McSherry &
Najork, "Computing information retrieval performance measures efficiently in the presence of
tied scores", ECIR 2008), in closed form, not sampled. ``ties="pessimistic"`` puts targets last
in their group, ``"optimistic"`` first.

For one query, let the group that holds the first target have ``n`` items, ``m`` of them targets,
with ``a`` items ranked strictly before it:

* :func:`group_hit_probability`: probability that the first ``t`` items taken from the group
  include a target, ``1 - C(n - m, t) / C(n, t)`` under a random order;
* :func:`first_target_rank`: 1-based rank of the first target, ``a + (n + 1) / (m + 1)`` under a
  random order (the expected minimum of ``m`` positions drawn from ``1..n``).
"""

from __future__ import annotations

import numpy as np

from hashindex.core.errors import InputError

TIE_RULES = ("expected", "pessimistic", "optimistic")


def check_ties(ties: str) -> str:
    if ties not in TIE_RULES:
        raise InputError(f"unknown tie rule {ties!r}; choose one of {', '.join(TIE_RULES)}")
    return ties


def _log_factorials(n: int) -> np.ndarray:
    """``float64 [n+1]``: ``log(k!)`` for ``k = 0..n``."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def group_hit_probability(n: np.ndarray, m: np.ndarray, t: np.ndarray, ties: str = "expected") -> np.ndarray:
    """``float64``: probability that the first ``t`` of a tied group of ``n`` (``m`` targets) hold a target.

    ``t`` is clipped to ``[0, n]``; a group without targets (``m = 0``) never hits.
    """
    n = np.asarray(n, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    t = np.clip(np.asarray(t, dtype=np.int64), 0, n)
    if ties == "pessimistic":
        return np.where(t > n - m, 1.0, 0.0)
    if ties == "optimistic":
        return np.where((m > 0) & (t >= 1), 1.0, 0.0)
    check_ties(ties)
    lf = _log_factorials(int(n.max(initial=0)))
    possible = n - m >= t  # else every way of taking t items takes a target
    k = np.where(possible, n - m - t, 0)
    miss = np.where(possible, np.exp(lf[n - m] - lf[k] - lf[n] + lf[np.maximum(n - t, 0)]), 0.0)
    return 1.0 - miss


def first_target_rank(above: np.ndarray, n: np.ndarray, m: np.ndarray | int = 1, ties: str = "expected") -> np.ndarray:
    """``float64``: 1-based rank of the first target (``a + 1``, ``a + n - m + 1`` or the expectation)."""
    above = np.asarray(above)
    if ties == "optimistic":
        return above + 1.0
    if ties == "pessimistic":
        return (above + n - m + 1).astype(np.float64)
    check_ties(ties)
    return above + (n + 1.0) / (np.asarray(m) + 1.0)
