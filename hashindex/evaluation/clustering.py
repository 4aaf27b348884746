"""Clustering quality: normalised mutual information, of one labeling or many at once (numpy + FAISS).

``NMI(U, V) = I(U; V) / ((H(U) + H(V)) / 2)``: arithmetic-mean normalisation, natural log, and
the same limit cases as scikit-learn's ``normalized_mutual_info_score`` default (1.0 when both
labelings are a single cluster, 0.0 when the mutual information is 0). :func:`nmi_batch` scores
many clusterings against one labeling in one call (the facility-location loss scores every
candidate medoid of a greedy step that way); :func:`nmi` is its single-labeling case.
:func:`nmi_kmeans` is the Song et al. (2017) protocol: NMI of a k-means clustering.
"""

from __future__ import annotations

import faiss
import numpy as np

from hashindex.core.codes import unpack_bits
from hashindex.core.errors import InputError
from hashindex.core.validation import check_features, check_positive_int
from hashindex.evaluation.hamming import check_labels


def _entropy(counts: np.ndarray, n: int) -> np.ndarray:
    p = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def nmi_batch(assignments: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """NMI of each row of ``assignments`` ``[M, N]`` against ``labels`` ``[N]``: ``float64 [M]``.

    The contingency tables are kept sparse (unique label pairs), so thousands of classes cost
    nothing. Labels may be of any comparable dtype.
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
    _, v = np.unique(labels, return_inverse=True)
    v = v.reshape(-1)
    nu, nv = int(u.max()) + 1, int(v.max()) + 1
    cell = np.arange(m, dtype=np.int64)[:, None] * nu + u.reshape(m, n)  # (row, cluster)
    cu = np.bincount(cell.ravel(), minlength=m * nu).reshape(m, nu).astype(np.float64)
    cv = np.bincount(v, minlength=nv).astype(np.float64)
    pair, nij = np.unique(cell * nv + v[None, :], return_counts=True)
    row, cluster, label = pair // (nu * nv), pair // nv, pair % nv
    terms = nij / n * np.log(nij * n / (cu.ravel()[cluster] * cv[label]))
    mi = np.bincount(row, weights=terms, minlength=m)
    denom = _entropy(cu, n) + _entropy(cv, n)
    single_both = (np.count_nonzero(cu, axis=1) <= 1) & (np.count_nonzero(cv) <= 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, 2.0 * mi / denom, 0.0)
    return np.clip(np.where(single_both, 1.0, out), 0.0, 1.0)


def nmi(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Normalised mutual information of two labelings ``[N]`` (1.0 for two empty ones)."""
    a = np.asarray(labels_a)
    b = np.asarray(labels_b)
    if a.ndim != 1 or b.shape != a.shape:
        raise InputError(f"labelings must be 1-D of equal length, got shapes {a.shape} and {b.shape}")
    if not a.size:
        return 1.0
    return float(nmi_batch(a[None, :], b)[0])


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
    labels = check_labels(labels, data.shape[0], "labels")
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
