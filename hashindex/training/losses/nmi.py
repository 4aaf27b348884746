"""Normalised mutual information of many clusterings against one labeling at once (numpy).

:mod:`hashindex.training.losses.facility` scores every candidate medoid of a greedy step in one call; a
single NMI is :func:`hashindex.evaluation.metrics.nmi` (same definition, used as an oracle in the tests).
"""

from __future__ import annotations

import numpy as np

from hashindex.core.errors import InputError


def _entropy(counts: np.ndarray, n: int) -> np.ndarray:
    p = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def nmi_batch(assignments: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """NMI of each row of ``assignments`` ``int [M, N]`` against ``labels`` ``[N]``: ``float64 [M]``.

    ``NMI(U, V) = 2 I(U; V) / (H(U) + H(V))`` (arithmetic normalisation, as in Song et al. 2016 and
    scikit-learn's default). Two single-cluster labelings are a perfect match (1.0).
    """
    assignments = np.asarray(assignments)
    labels = np.asarray(labels)
    if assignments.ndim != 2 or labels.ndim != 1 or assignments.shape[1] != labels.shape[0]:
        raise InputError(
            f"assignments must be [M, N] and labels [N], got {assignments.shape} and {labels.shape}"
        )
    m, n = assignments.shape
    if n == 0:
        raise InputError("NMI of empty labelings is undefined")
    _, u = np.unique(assignments, return_inverse=True)
    u = u.reshape(m, n)
    _, v = np.unique(labels, return_inverse=True)
    nu, nv = int(u.max()) + 1, int(v.max()) + 1
    flat = (np.arange(m)[:, None] * nu + u) * nv + v[None, :]
    joint = np.bincount(flat.ravel(), minlength=m * nu * nv).reshape(m, nu, nv).astype(np.float64)
    cu = joint.sum(axis=2)
    cv = joint.sum(axis=1)
    h_u, h_v = _entropy(cu, n), _entropy(cv, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = joint * n / (cu[:, :, None] * cv[:, None, :])
        mi = np.where(joint > 0, joint / n * np.log(ratio), 0.0).sum(axis=(1, 2))
    denom = h_u + h_v
    single_both = (np.count_nonzero(cu, axis=1) <= 1) & (np.count_nonzero(cv, axis=1) <= 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, 2.0 * mi / denom, 0.0)
    return np.clip(np.where(single_both, 1.0, out), 0.0, 1.0)
