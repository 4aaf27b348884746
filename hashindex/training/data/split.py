"""Identity-level row selection (numpy only): the train / validation split, identity folds, and the
trainable rows.

Retrieval is evaluated on people the model has never seen, so the split is over identities,
not rows: every row of an identity lands on the same side.
"""

from __future__ import annotations

import numpy as np

from hashindex.core.errors import InputError


def identity_split(
    labels: np.ndarray, val_fraction: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows by identity.

    ``round(val_fraction * C)`` of the ``C`` distinct identities, drawn with
    ``np.random.default_rng(seed)``, go to validation (at least one and at most ``C - 1``
    when ``0 < val_fraction < 1``).

    Args:
        labels: ``int [N]`` identity of each row.
        val_fraction: fraction of identities (not rows) held out, in ``[0, 1)``.
        seed: the split depends only on ``(labels, val_fraction, seed)``.

    Returns:
        ``(train_idx, val_idx)``: sorted ``int64`` row indices, disjoint, covering ``0..N-1``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError(f"labels must be 1-D, got shape {labels.shape}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    classes = np.unique(labels)
    n_val = int(round(val_fraction * classes.size))
    if val_fraction > 0:
        if classes.size < 2:
            raise InputError(f"need at least 2 identities to split, got {classes.size}")
        n_val = min(max(n_val, 1), classes.size - 1)
    val_classes = np.random.default_rng(seed).permutation(classes)[:n_val]
    is_val = np.isin(labels, val_classes)
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def training_rows(labels: np.ndarray, min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of identities with >= ``min_samples`` rows, and their labels remapped to ``0..C-1``.

    Returns ``(rows int64 [M], labels int64 [M])``; ``labels.max() + 1`` is the number of
    classes an identity loss over these rows needs.
    """
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    rows = np.flatnonzero(counts[inverse.reshape(-1)] >= min_samples)
    _, y = np.unique(labels[rows], return_inverse=True)
    return rows, y.reshape(-1).astype(np.int64)


def identity_folds(labels: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Rows of each of ``folds`` identity-disjoint folds (identities shuffled with ``seed``,
    dealt round-robin so fold sizes differ by at most one identity).

    Returns ``folds`` sorted ``int64`` row arrays covering ``0..N-1``.
    """
    labels = np.asarray(labels)
    classes = np.random.default_rng([seed, 7]).permutation(np.unique(labels))
    if folds < 2 or folds > classes.size:
        raise InputError(f"need 2 <= folds <= identities ({classes.size}), got {folds}")
    return [np.flatnonzero(np.isin(labels, classes[f::folds])).astype(np.int64) for f in range(folds)]


def sampled_identities(labels: np.ndarray, folds: int, val_fraction: float, min_samples: int, seed: int = 0) -> int:
    """The fewest identities a P x K sampler gets in any training run of a judged procedure.

    The runs: one per held-out fold (:func:`identity_folds` with ``seed``; the other folds'
    rows) when ``folds >= 2``, and the run on all rows. Each first holds out ``val_fraction`` of
    its identities (:func:`identity_split` with ``seed``), then keeps those with at least
    ``min_samples`` rows (:func:`training_rows`). ``P`` identities per batch must not exceed
    this number.
    """
    labels = np.asarray(labels)
    runs = [np.arange(labels.size)]
    if folds >= 2:
        runs += [np.setdiff1d(runs[0], held) for held in identity_folds(labels, folds, seed)]
    counts = []
    for rows in runs:
        y = labels[rows]
        if val_fraction > 0 and np.unique(y).size >= 2:
            y = y[identity_split(y, val_fraction, seed)[0]]
        counts.append(int(np.unique(y[training_rows(y, min_samples)[0]]).size))
    return min(counts)
