"""Contrastive (pair) loss with positive and negative margins."""

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
    negative_mask,
    pairwise_distances,
    positive_mask,
    reduce_losses,
)


def contrastive_loss(
    dist: torch.Tensor,
    labels: torch.Tensor,
    pos_margin: float,
    neg_margin: float,
    reduction: Reduction = "nonzero_mean",
) -> torch.Tensor:
    """``R_pos[ relu(d_ij - m_pos) ] + R_neg[ relu(m_neg - d_ij) ]`` over all ordered pairs ``i != j``.

    The margin form of Hadsell, Chopra & LeCun (CVPR 2006) as in pytorch-metric-learning's
    ``ContrastiveLoss``: positives are pulled within ``pos_margin``, negatives pushed beyond
    ``neg_margin``; each part is reduced separately (``reduction``) and the two are added, so a
    batch with many more negatives than positives does not drown the positive term.
    """
    pos = positive_mask(labels)
    neg = negative_mask(labels)
    pos_losses = torch.relu(dist[pos] - pos_margin)
    neg_losses = torch.relu(neg_margin - dist[neg])
    return reduce_losses(pos_losses, reduction, dist) + reduce_losses(neg_losses, reduction, dist)


class ContrastiveLoss(torch.nn.Module):
    """Contrastive loss (see :func:`contrastive_loss`) on :func:`pairwise_distances` of the codes.

    Args:
        pos_margin: positive pairs closer than this cost nothing.
        neg_margin: negative pairs farther than this cost nothing.
        distance, normalize: see :func:`hashindex.training.losses.distances.pairwise_distances`
            (default: Euclidean distance of L2-normalised codes, range [0, 2]).
        reduction: ``"nonzero_mean"`` (mean over violating pairs) or ``"mean"``.
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        distance: DistanceKind = "euclidean",
        normalize: bool = True,
        reduction: Reduction = "nonzero_mean",
    ) -> None:
        super().__init__()
        self.pos_margin = check_non_negative(pos_margin, "pos_margin")
        self.neg_margin = check_non_negative(neg_margin, "neg_margin")
        self.distance = check_choice(distance, DISTANCE_KINDS, "distance")
        self.normalize = bool(normalize)
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(codes, labels)
        dist = pairwise_distances(codes, self.distance, self.normalize)
        return contrastive_loss(dist, labels, self.pos_margin, self.neg_margin, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, distance={self.distance!r}, "
            f"normalize={self.normalize}, reduction={self.reduction!r}"
        )
