"""Triplet miners: pure functions ``(dist [B, B], labels [B]) -> (anchor, positive, negative)``.

A miner only chooses indices (under ``no_grad``); the loss then reads the distances at those
indices from the differentiable matrix, as in pytorch-metric-learning, so miners compose with any
triplet-based loss and can be tested alone. Every miner takes *all* ordered anchor-positive pairs
of the batch (FaceNet, Schroff et al. CVPR 2015, Sec. 3.2) and differs only in the negatives.
Anchors without any negative in the batch yield no triplet.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, Protocol, get_args

import torch

from hashindex.training.losses.distances import check_choice, check_non_negative, negative_mask, positive_mask

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Mining = Literal["semi-hard", "hard", "all"]
MINING_KINDS: tuple[str, ...] = get_args(Mining)


class TripletMiner(Protocol):
    def __call__(self, dist: torch.Tensor, labels: torch.Tensor) -> Triplets: ...


@torch.no_grad()
def all_triplets(dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """Every ``(a, p, n)`` with ``y_a == y_p``, ``a != p``, ``y_n != y_a`` (``dist`` is unused).

    Memory is ``B^3`` booleans (16 MB at B = 256).
    """
    pos = positive_mask(labels)
    neg = negative_mask(labels)
    a, p, n = torch.where(pos[:, :, None] & neg[:, None, :])
    return a, p, n


def _pairs_with_negatives(dist: torch.Tensor, labels: torch.Tensor):
    pos = positive_mask(labels)
    neg = negative_mask(labels)
    a, p = torch.where(pos & neg.any(dim=1, keepdim=True))
    d = dist.detach()
    return a, p, d[a, p], d[a], neg[a]


@torch.no_grad()
def hardest_negative_triplets(dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """For each anchor-positive pair, the negative closest to the anchor: ``argmin_n d(a, n)``."""
    a, p, _, d_an, neg = _pairs_with_negatives(dist, labels)
    n = d_an.masked_fill(~neg, float("inf")).argmin(dim=1)
    return a, p, n


@torch.no_grad()
def semi_hard_triplets(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """FaceNet semi-hard negatives, one per anchor-positive pair.

    Among the negatives with ``d(a, p) < d(a, n) < d(a, p) + margin`` (farther than the positive
    but still inside the margin, so the triplet has a non-zero loss) take the closest to the
    anchor. When none qualifies, fall back to the hardest negative ``argmin_n d(a, n)``.
    Both inequalities are strict; ties have probability zero for continuous codes.
    """
    a, p, d_ap, d_an, neg = _pairs_with_negatives(dist, labels)
    d_ap = d_ap[:, None]
    semi = neg & (d_an > d_ap) & (d_an < d_ap + margin)
    semi_n = d_an.masked_fill(~semi, float("inf")).argmin(dim=1)
    hard_n = d_an.masked_fill(~neg, float("inf")).argmin(dim=1)
    n = torch.where(semi.any(dim=1), semi_n, hard_n)
    return a, p, n


def make_miner(mining: Mining, margin: float) -> TripletMiner:
    """The miner named ``mining`` (``"semi-hard"`` needs the triplet ``margin``)."""
    check_choice(mining, MINING_KINDS, "mining")
    if mining == "all":
        return all_triplets
    if mining == "hard":
        return hardest_negative_triplets
    return partial(semi_hard_triplets, margin=check_non_negative(margin, "margin"))
