"""Open-set threshold: pick ``min_score`` for a target false-accept rate from labelled pairs.

Pairs of a labelled set: *genuine* (same label) and *impostor* (different labels). For a
threshold t a pair is accepted when its score is >= t (similarity: cosine / ip) or its squared
distance is <= t (l2) -- the rule of ``search(..., min_score=t)``. FAR(t) is the share of impostor
pairs accepted, TAR(t) the share of genuine pairs accepted.

:func:`calibrate` returns the most permissive threshold whose FAR is at most the target, with
the TAR there. Every pair of the set is used while there are at most ``max_pairs`` impostor
pairs (9201 LFW dev images: 42M pairs, about 2 s on one core); beyond that ``max_pairs``
impostor pairs are drawn uniformly at random (``sampled=True``). Either way memory stays
bounded: impostor scores stream through in blocks, and only the ``tail`` highest (exact, enough
for the threshold) plus a uniform sample of ``body`` (for the curve above the tail) are kept.

``Calibration.plot(path)`` draws the verification curve (TAR against FAR, log FAR) as a PNG;
matplotlib is imported only there.

numpy only (matplotlib lazily).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.validation import check_features
from hashindex.serving.filters import check_labels
from hashindex.serving.rerank import METRICS, higher_is_better

DEFAULT_MAX_PAIRS = 50_000_000
_BLOCK = 1024  # rows per block of the pair score matrix
_BODY = 200_000  # impostor scores sampled for the curve above the exact tail


@dataclass
class PairScores:
    """Pair scores as "higher accepts first" keys (l2 distances negated).

    genuine: every genuine pair's key (or a sample), ascending. tail: the highest impostor keys,
    exact, ascending. body: a uniform sample of all impostor keys, ascending. n_impostor: the
    impostor pairs these stand for; n_genuine likewise. sampled: whether pairs were drawn at
    random rather than all enumerated.
    """

    genuine: np.ndarray
    tail: np.ndarray
    body: np.ndarray
    n_genuine: int
    n_impostor: int
    sampled: bool

    def far(self, key: np.ndarray) -> np.ndarray:
        """Share of impostor pairs with key >= ``key`` (exact within the tail)."""
        key = np.asarray(key, dtype=np.float64)
        in_tail = np.searchsorted(self.tail, key, side="left")
        exact = (self.tail.size - in_tail) / max(self.n_impostor, 1)
        if self.tail.size == self.n_impostor or self.body.size == 0:
            return exact
        est = (self.body.size - np.searchsorted(self.body, key, side="left")) / self.body.size
        return np.where(key >= (self.tail[0] if self.tail.size else np.inf), exact, np.maximum(est, exact))

    def tar(self, key: np.ndarray) -> np.ndarray:
        key = np.asarray(key, dtype=np.float64)
        return (self.genuine.size - np.searchsorted(self.genuine, key, side="left")) / max(self.genuine.size, 1)


@dataclass
class Calibration:
    """A threshold for ``search(..., min_score=threshold)`` and what it gives on the pairs.

    threshold: accept a score >= threshold (l2: a distance <= threshold). far_target: the FAR
    asked. far / tar: the rates at the threshold on these pairs. metric: the score's metric.
    """

    threshold: float
    far_target: float
    far: float
    tar: float
    metric: str
    pairs: PairScores

    def rates(self, threshold: float) -> tuple[float, float]:
        """(FAR, TAR) of these pairs at another threshold."""
        key = _to_key(np.float64(threshold), self.metric)
        return float(self.pairs.far(key)), float(self.pairs.tar(key))

    def curve(self, points: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(far, tar, threshold)`` along the verification curve, FAR ascending."""
        p = self.pairs
        keys = np.unique(np.concatenate([p.tail, np.quantile(p.body, np.linspace(0, 1, points)) if p.body.size else []]))
        keys = np.concatenate([keys, [np.inf]])
        far, tar = p.far(keys), p.tar(keys)
        order = np.argsort(far, kind="stable")
        return far[order], tar[order], _from_key(keys[order], self.metric)

    def plot(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """The verification curve (TAR against log FAR) with the chosen operating point, as PNG."""
        from matplotlib.figure import Figure  # lazy: only figures need matplotlib

        far, tar, _ = self.curve()
        keep = far > 0
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(far[keep], tar[keep], lw=1.5, label="verification curve")
        if self.far > 0:
            ax.scatter([self.far], [self.tar], color="C3", zorder=3,
                       label=f"t = {self.threshold:.4f}: FAR {self.far:.2g}, TAR {self.tar:.3f}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("false-accept rate (impostor pairs)")
        ax.set_ylabel("true-accept rate (genuine pairs)")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        note = " (sampled pairs)" if self.pairs.sampled else ""
        ax.set_title(title or f"{self.pairs.n_genuine:,} genuine / {self.pairs.n_impostor:,} impostor pairs{note}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
        return path


def _to_key(scores, metric: str):
    return scores if higher_is_better(metric) else -scores


_from_key = _to_key  # negation is its own inverse


def _prepare(features, labels, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    x = check_features(features).astype(np.float64)
    labels = check_labels(labels, x.shape[0])
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InputError("features contain zero vectors, which have no cosine similarity")
        x = x / norms
    return x, labels


def _keys(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Pairwise keys ``[len(a), len(b)]`` (higher accepts first)."""
    ip = a @ b.T
    if metric == "l2":
        return -((a * a).sum(1)[:, None] - 2 * ip + (b * b).sum(1)[None, :])
    return ip


def _row_keys(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        d = a - b
        return -np.einsum("ij,ij->i", d, d)
    return np.einsum("ij,ij->i", a, b)


class _Tail:
    """The ``size`` largest values seen, and a Bernoulli(p) sample of all of them."""

    def __init__(self, size: int, p: float, rng: np.random.Generator):
        self.size, self.p, self.rng = size, p, rng
        self.top = np.empty(0)
        self.sample: list[np.ndarray] = []

    def push(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        merged = np.concatenate([self.top, values])
        if merged.size > self.size:
            merged = np.partition(merged, merged.size - self.size)[merged.size - self.size :]
        self.top = merged
        if self.p >= 1:
            self.sample.append(values.copy())
        else:
            self.sample.append(values[self.rng.random(values.size) < self.p])


def pair_scores(
    features: np.ndarray,
    labels: np.ndarray,
    metric: str = "cosine",
    *,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    tail: int = 100_000,
    seed: int = 0,
) -> PairScores:
    """Genuine and impostor pair scores of a labelled set (all pairs, or sampled beyond ``max_pairs``)."""
    x, labels = _prepare(features, labels, metric)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    _, counts = np.unique(labels, return_counts=True)
    n_gen = int((counts * (counts - 1) // 2).sum())
    n_imp = n * (n - 1) // 2 - n_gen
    if n_gen == 0 or n_imp == 0:
        raise InputError(f"need genuine and impostor pairs, got {n_gen} genuine and {n_imp} impostor pairs")

    # genuine pairs: per label (few), all unless there are more than max_pairs
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    if n_gen <= max_pairs:
        parts = []
        for s, c in zip(starts[:-1], counts):
            if c > 1:
                idx = order[s : s + c]
                iu = np.triu_indices(c, 1)
                parts.append(_keys(x[idx], x[idx], metric)[iu])
        genuine = np.sort(np.concatenate(parts))
    else:
        g = rng.choice(counts.size, size=max_pairs, p=(counts * (counts - 1) / 2) / n_gen)
        i = rng.integers(0, counts[g])
        j = (i + rng.integers(1, counts[g])) % counts[g]
        genuine = np.sort(_row_keys(x[order[starts[g] + i]], x[order[starts[g] + j]], metric))

    sampled = n_imp > max_pairs or n_gen > max_pairs
    n_imp_used = min(n_imp, max_pairs)
    keep = _Tail(min(tail, n_imp_used), min(1.0, _BODY / n_imp_used), rng)
    if n_imp <= max_pairs:  # every pair, in blocks of rows against the rows after them
        for a in range(0, n, _BLOCK):
            b = min(a + _BLOCK, n)
            k = _keys(x[a:b], x[a:], metric)
            rows, cols = np.nonzero(
                (np.arange(a, n)[None, :] > np.arange(a, b)[:, None]) & (labels[a:b, None] != labels[None, a:])
            )
            keep.push(k[rows, cols])
    else:  # uniform impostor pairs (i != j, labels differ), drawn in chunks
        left = max_pairs
        while left:
            m = min(left, 1 << 20)
            i, j = rng.integers(0, n, m), rng.integers(0, n, m)
            ok = labels[i] != labels[j]
            i, j = i[ok], j[ok]
            keep.push(_row_keys(x[i], x[j], metric))
            left -= i.size
    body = np.sort(np.concatenate(keep.sample)) if keep.sample else np.empty(0)
    return PairScores(genuine, np.sort(keep.top), body, int(genuine.size if n_gen > max_pairs else n_gen),
                      int(n_imp_used), sampled)  # fmt: skip


def threshold_at_far(pairs: PairScores, far: float, metric: str) -> float:
    """The most permissive threshold whose FAR on ``pairs`` is at most ``far``."""
    m = int(math.floor(far * pairs.n_impostor + 1e-9))  # impostor pairs that may be accepted
    if m >= pairs.tail.size:
        raise InputError(
            f"FAR {far:g} would accept {m:,} impostor pairs, more than the {pairs.tail.size:,} kept exactly: "
            "raise tail="
        )
    kth = pairs.tail[pairs.tail.size - 1 - m]  # the (m+1)-th highest impostor key: must be rejected
    key = np.nextafter(np.float32(kth), np.float32(np.inf))  # float32: the precision of search scores
    if key <= kth:
        key = np.nextafter(np.float64(kth), np.inf)
    return float(_from_key(np.float64(key), metric))


def calibrate(
    features: np.ndarray,
    labels: np.ndarray,
    far: float = 1e-4,
    metric: str = "cosine",
    *,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
) -> Calibration:
    """Threshold for a target false-accept rate, from every genuine / impostor pair of a
    labelled set (``features float [N, D]``, ``labels int [N]``), sampled when there are more
    than ``max_pairs``. Returns the threshold, the FAR and TAR there, and the pairs (for the
    curve and :meth:`Calibration.plot`)."""
    if isinstance(far, bool) or not isinstance(far, (int, float, np.floating)) or not 0 < far < 1:
        raise InputError(f"far must be a number in (0, 1), got {far!r}")
    n = np.shape(features)[0] if np.ndim(features) == 2 else 0
    tail = max(100_000, int(far * min(n * (n - 1) // 2, max_pairs)) + 2)  # the threshold lies in the exact tail
    pairs = pair_scores(features, labels, metric, max_pairs=max_pairs, tail=tail, seed=seed)
    t = threshold_at_far(pairs, float(far), metric)
    got_far, got_tar = float(pairs.far(_to_key(t, metric))), float(pairs.tar(_to_key(t, metric)))
    return Calibration(t, float(far), got_far, got_tar, metric, pairs)
