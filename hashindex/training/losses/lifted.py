"""Lifted structured loss, smooth form (Song, Xiang, Jegelka & Savarese, CVPR 2016)."""

from __future__ import annotations

import torch

from hashindex.training.losses.distances import (
    DISTANCE_KINDS,
    DistanceKind,
    check_batch,
    check_choice,
    check_non_negative,
    masked_logsumexp,
    negative_mask,
    pairwise_distances,
    positive_mask,
    zero_loss,
)


def lifted_structured_loss(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Song et al. 2016, Eq. 4 (the smooth upper bound of Eq. 3)::

        J_ij = log( sum_{k in N(i)} exp(m - D_ik) + sum_{l in N(j)} exp(m - D_jl) ) + D_ij
        J    = 1 / (2 |P|) * sum_{(i,j) in P} relu(J_ij)^2

    ``P``: unordered positive pairs, ``N(i)``: negatives of ``i``. Computed over ordered pairs
    (``J_ij`` is symmetric), i.e. ``0.5 * mean_{ordered (i,j)} relu(J_ij)^2``; identical to
    pytorch-metric-learning's ``LiftedStructureLoss(neg_margin=m, pos_margin=0)``. A batch with a
    single class, or no positive pair, gives 0.

    With normalised codes (``D <= 2``) the loss has a positive floor: ``J_ij >= log(2 |N(i)|) + m - 2``,
    which grows with the batch; only the gradient (a softmax weighting of the hardest negatives)
    matters for training.
    """
    pos = positive_mask(labels)
    neg = negative_mask(labels)
    if not pos.any() or not neg.any():
        return zero_loss(dist)
    # Same-class i, j share N(i) = N(j), so with >= 2 classes every row has a negative: lse is finite.
    lse = masked_logsumexp(margin - dist, neg)
    j = torch.logaddexp(lse[:, None], lse[None, :]) + dist
    return 0.5 * torch.relu(j[pos]).pow(2).mean()


class LiftedStructuredLoss(torch.nn.Module):
    """Lifted structured embedding loss (see :func:`lifted_structured_loss`).

    Args:
        margin: ``m``, the desired gap between negative and positive distances.
        distance, normalize: see :func:`hashindex.training.losses.distances.pairwise_distances` (the paper
            uses the plain Euclidean distance; normalising keeps ``m`` meaningful at any bit width).
    """

    def __init__(self, margin: float = 1.0, distance: DistanceKind = "euclidean", normalize: bool = True) -> None:
        super().__init__()
        self.margin = check_non_negative(margin, "margin")
        self.distance = check_choice(distance, DISTANCE_KINDS, "distance")
        self.normalize = bool(normalize)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(codes, labels)
        dist = pairwise_distances(codes, self.distance, self.normalize)
        return lifted_structured_loss(dist, labels, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}, normalize={self.normalize}"
