"""Class-balanced P x K batch sampler (numpy core; usable as a torch ``batch_sampler``).

Metric-learning and hashing losses need positives in every batch, so each batch holds
``P`` distinct identities with ``K`` rows each (Hermans et al., "In Defense of the Triplet
Loss", 2017).

One epoch:

1. Every eligible identity ``c`` with ``n_c`` rows is shuffled and cut into
   ``ceil(n_c / K)`` chunks of ``K`` rows. A short last chunk is topped up with other rows of
   the same identity (distinct rows when ``n_c >= K``). Identities with ``n_c < K`` are,
   with ``small="replace"``, one chunk of all their rows plus ``K - n_c`` rows drawn with
   replacement from them, or with ``small="skip"`` left out. Identities with fewer than
   ``min_samples`` rows are always left out (a single row gives no positive pair).
2. Batches take ``P`` chunks from the identities with the most chunks left, ties broken at
   random. This never puts an identity twice in a batch and, whenever no identity holds more
   than ``1/P`` of the remaining chunks, uses every chunk exactly once.
3. There are ``ceil(total_chunks / P)`` batches. If fewer than ``P`` identities still have
   chunks (the last batch, or one identity dominating), the batch is completed with fresh
   chunks of random other identities. So every row of every eligible identity appears at
   least once per epoch, and exactly once when the data is balanced.

Epoch ``e`` draws from ``np.random.default_rng([seed, e])``; ``__iter__`` advances ``e``, and
:meth:`PKSampler.set_epoch` sets it, so a run is reproducible and resumable.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.validation import check_positive_int

SMALL_POLICIES = ("replace", "skip")


class PKSampler:
    """Yield batches (``list[int]`` of length ``P*K``: P identities x K rows, grouped).

    Args:
        labels: ``int [N]`` identity of each row.
        p: identities per batch.
        k: rows per identity per batch.
        seed: base seed.
        small: policy for identities with fewer than ``k`` rows: "replace" or "skip".
        min_samples: identities with fewer rows are never sampled (default 2).
    """

    def __init__(
        self,
        labels: np.ndarray,
        p: int,
        k: int,
        seed: int = 0,
        small: str = "replace",
        min_samples: int = 2,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
            raise InputError(f"labels must be 1-D integers, got shape {labels.shape} dtype {labels.dtype}")
        self.p = check_positive_int(p, "p")
        self.k = check_positive_int(k, "k")
        if small not in SMALL_POLICIES:
            raise InputError(f"small must be one of {SMALL_POLICIES}, got {small!r}")
        self.seed = int(seed)
        self.small = small
        self.min_samples = check_positive_int(min_samples, "min_samples")
        self.epoch = 0

        order = np.argsort(labels, kind="stable")
        classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        floor = max(self.min_samples, self.k if small == "skip" else 1)
        keep = counts >= floor
        self.classes = classes[keep]
        self._rows = [order[s : s + c] for s, c, ok in zip(starts, counts, keep) if ok]
        if len(self._rows) < self.p:
            raise InputError(
                f"P x K sampling needs at least p={self.p} identities with >= {floor} rows, "
                f"found {len(self._rows)}" + (f"; lower p (--p {len(self._rows)})" if len(self._rows) >= 2 else "")
            )
        counts = counts[keep]
        self._chunks = -(-counts // self.k)  # ceil(n_c / K), 1 for small identities
        self._len = int(-(-self._chunks.sum() // self.p))

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``__iter__`` produce epoch ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        for batch in pk_batches(self._rows, self._chunks, self.p, self.k, self._len, rng):
            yield batch.tolist()


def _identity_chunks(rows: np.ndarray, n_chunks: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_chunks, k]`` rows of one identity: a shuffled pass, the last chunk topped up."""
    if rows.size < k:
        extra = rng.choice(rows, size=k - rows.size, replace=True)
        return np.concatenate([rng.permutation(rows), extra])[None, :]
    perm = rng.permutation(rows)[: n_chunks * k]
    short = n_chunks * k - perm.size
    if short:
        # top up with rows not already in the last chunk so a chunk never repeats a row
        last = perm[(n_chunks - 1) * k :]
        pool = perm[: (n_chunks - 1) * k]
        perm = np.concatenate([pool, last, rng.choice(pool, size=short, replace=False)])
    return perm.reshape(n_chunks, k)


def pk_batches(
    rows: list[np.ndarray], n_chunks: np.ndarray, p: int, k: int, n_batches: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Core of :class:`PKSampler`: yield ``n_batches`` arrays ``int64 [p*k]``.

    Args:
        rows: per identity, its row indices.
        n_chunks: ``int [C]`` chunks per identity this epoch.
    """
    chunks = [_identity_chunks(r, int(m), k, rng) for r, m in zip(rows, n_chunks)]
    left = np.asarray(n_chunks, dtype=np.int64).copy()
    # buckets[m] = identities with m chunks left; picking from the fullest bucket first is
    # what keeps the schedule feasible (no identity left alone at the end).
    buckets: list[list[int]] = [[] for _ in range(int(left.max()) + 1)]
    for c in rng.permutation(len(rows)):
        buckets[left[c]].append(int(c))
    top = len(buckets) - 1
    for _ in range(n_batches):
        picked: list[int] = []
        level = top
        while len(picked) < p and level > 0:
            bucket = buckets[level]
            if not bucket:
                level -= 1
                continue
            j = int(rng.integers(len(bucket)))
            bucket[j], bucket[-1] = bucket[-1], bucket[j]  # O(1) random removal
            picked.append(bucket.pop())
        batch = []
        for c in picked:
            batch.append(chunks[c][n_chunks[c] - left[c]])
            left[c] -= 1
            if left[c]:
                buckets[left[c]].append(c)
        while top > 0 and not buckets[top]:
            top -= 1
        if len(picked) < p:
            # fewer than p identities have chunks left: fresh chunks of random other identities
            others = np.setdiff1d(np.arange(len(rows)), np.asarray(picked, dtype=np.int64))
            for c in rng.choice(others, size=p - len(picked), replace=False):
                batch.append(_identity_chunks(rows[c], 1, k, rng)[0])
        yield np.concatenate(batch).astype(np.int64)
