"""Facility-location clustering loss (Song, Jegelka, Rathod & Murphy, CVPR 2017)."""

from __future__ import annotations

import numpy as np
import torch

from hashindex.training.losses.distances import (
    DISTANCE_KINDS,
    DistanceKind,
    check_batch,
    check_choice,
    check_non_negative,
    pairwise_distances,
)
from hashindex.evaluation.clustering import nmi_batch


def oracle_medoids(dist: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each class (in sorted label order), the member minimising the summed distance to its
    class-mates, i.e. maximising ``F(X_k, {j})``: the oracle clustering score ``F~(X, y*)``."""
    medoids = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        medoids.append(members[dist[np.ix_(members, members)].sum(axis=0).argmin()])
    return np.asarray(medoids, dtype=np.int64)


def greedy_loss_augmented_medoids(dist: np.ndarray, labels: np.ndarray, gamma: float) -> np.ndarray:
    """Greedy ``argmax_{|S| = #classes} F(X, S) + gamma * (1 - NMI(g(S), y*))``; returns S in pick order.

    ``F(X, S) = -(1/N) sum_i min_{j in S} D_ij`` and ``g(S)`` assigns each point to its nearest
    medoid (earliest pick on ties). Each step scores every unpicked point as the next medoid, all
    candidates at once (the paper's greedy step, without its later swap refinement).
    ``dist``: ``[N, N]`` symmetric, ``labels``: ``[N]``.
    """
    n = dist.shape[0]
    k = np.unique(labels).size
    picked: list[int] = []
    nearest = np.full(n, np.inf)
    assign = np.zeros(n, dtype=np.int64)
    for step in range(k):
        cand = np.setdiff1d(np.arange(n), picked)
        d_c = dist[cand]  # [M, N]: distance of every point to candidate medoid
        closer = d_c < nearest[None, :]
        f = -np.where(closer, d_c, nearest[None, :]).mean(axis=1)
        cand_assign = np.where(closer, step, assign[None, :])
        score = f + gamma * (1.0 - nmi_batch(cand_assign, labels))
        best = int(np.argmax(score))
        picked.append(int(cand[best]))
        nearest = np.where(closer[best], d_c[best], nearest)
        assign = cand_assign[best]
    return np.asarray(picked, dtype=np.int64)


def facility_location_loss(dist: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """``relu( max_S [F(X, S) + gamma * Delta(g(S), y*)] - F~(X, y*) )``, Song et al. 2017, Eq. 6.

    ``F(X, S) = -(1/N) sum_i min_{j in S} ||f(x_i) - f(x_j)||`` (the paper's facility-location
    score divided by the batch size N, so ``gamma`` does not depend on N: the paper's gamma is
    ``gamma * N``), ``Delta = 1 - NMI``, ``F~`` the score of the ground-truth clustering with the
    oracle medoid of each class, the max over S approximated greedily. The medoids are chosen
    without gradient; the gradient flows through the distance terms with them fixed (the paper's
    subgradient).
    """
    with torch.no_grad():
        d = dist.detach().cpu().double().numpy()
        y = labels.detach().cpu().numpy()
        medoids = oracle_medoids(d, y)
        picked = greedy_loss_augmented_medoids(d, y, gamma)
        assign = d[picked].argmin(axis=0)
        delta = 1.0 - float(nmi_batch(assign[None, :], y)[0])
    dev = dist.device
    _, inverse = torch.unique(labels, return_inverse=True)  # sorted, like oracle_medoids
    true_medoid = torch.as_tensor(medoids, device=dev)[inverse]
    idx = torch.arange(dist.shape[0], device=dev)
    f_true = -dist[idx, true_medoid].mean()
    f_aug = -dist[:, torch.as_tensor(picked, device=dev)].min(dim=1).values.mean()
    return torch.relu(f_aug + gamma * delta - f_true)


class FacilityLocationLoss(torch.nn.Module):
    """Deep metric learning via facility location (see :func:`facility_location_loss`).

    Args:
        gamma: weight of the structured margin ``1 - NMI`` (relative to a mean distance).
        distance, normalize: see :func:`hashindex.training.losses.distances.pairwise_distances`
            (the paper uses the Euclidean distance).
    """

    def __init__(self, gamma: float = 1.0, distance: DistanceKind = "euclidean", normalize: bool = True) -> None:
        super().__init__()
        self.gamma = check_non_negative(gamma, "gamma")
        self.distance = check_choice(distance, DISTANCE_KINDS, "distance")
        self.normalize = bool(normalize)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(codes, labels)
        dist = pairwise_distances(codes, self.distance, self.normalize)
        return facility_location_loss(dist, labels, self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, distance={self.distance!r}, normalize={self.normalize}"
