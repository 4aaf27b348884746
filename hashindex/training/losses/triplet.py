"""Triplet loss with pluggable negative mining (FaceNet)."""

from __future__ import annotations

import torch

from hashindex.training.losses.distances import (
    DISTANCE_KINDS,
    REDUCTIONS,
    DistanceKind,
    Reduction,
    check_batch,
    check_choice,
    check_non_negative,
    pairwise_distances,
    reduce_losses,
)
from hashindex.training.losses.mining import Mining, TripletMiner, Triplets, make_miner


def triplet_loss(dist: torch.Tensor, triplets: Triplets, margin: float, reduction: Reduction) -> torch.Tensor:
    """``R[ relu(d(a, p) - d(a, n) + margin) ]`` over the given index triplets (Schroff et al. 2015, Eq. 1)."""
    a, p, n = triplets
    return reduce_losses(torch.relu(dist[a, p] - dist[a, n] + margin), reduction, dist)


class TripletLoss(torch.nn.Module):
    """FaceNet triplet loss over all anchor-positive pairs of the batch.

    Defaults follow FaceNet (Schroff, Kalenichenko & Philbin, CVPR 2015): *squared* Euclidean
    distance between L2-normalised embeddings (range [0, 4]; for +-1 codes ``4 d_H / K``) and
    margin 0.2.

    Args:
        margin: alpha in ``d(a, p) + alpha < d(a, n)``.
        mining: ``"semi-hard"`` (FaceNet; falls back to the hardest negative when no negative is
            semi-hard), ``"hard"`` (hardest negative per pair), ``"all"`` (every triplet), or any
            :class:`~hashindex.training.losses.mining.TripletMiner` callable.
        distance, normalize: see :func:`hashindex.training.losses.distances.pairwise_distances`.
        reduction: ``"nonzero_mean"`` (mean over violating triplets, as pytorch-metric-learning's
            ``TripletMarginLoss``) or ``"mean"``.
    """

    def __init__(
        self,
        margin: float = 0.2,
        mining: Mining | TripletMiner = "semi-hard",
        distance: DistanceKind = "squared_euclidean",
        normalize: bool = True,
        reduction: Reduction = "nonzero_mean",
    ) -> None:
        super().__init__()
        self.margin = check_non_negative(margin, "margin")
        self.mining = mining if isinstance(mining, str) else getattr(mining, "__name__", "custom")
        self.miner: TripletMiner = make_miner(mining, self.margin) if isinstance(mining, str) else mining
        self.distance = check_choice(distance, DISTANCE_KINDS, "distance")
        self.normalize = bool(normalize)
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(codes, labels)
        dist = pairwise_distances(codes, self.distance, self.normalize)
        return triplet_loss(dist, self.miner(dist, labels), self.margin, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, mining={self.mining!r}, distance={self.distance!r}, "
            f"normalize={self.normalize}, reduction={self.reduction!r}"
        )
