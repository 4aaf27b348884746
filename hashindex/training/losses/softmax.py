"""Batch softmax over scaled cosine similarities, plus the Hamming-space (quantization) term."""

from __future__ import annotations

import torch

from hashindex.training.losses.distances import (
    check_batch,
    check_non_negative,
    check_positive,
    masked_logsumexp,
    pairwise_cosine_similarity,
    positive_mask,
    zero_loss,
)
from hashindex.training.losses.quantization import quantization_penalty


def softmax_cosine_loss(codes: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean over anchors of ``-log( sum_{j != i, y_j = y_i} e^{S_ij} / sum_{j != i} e^{S_ij} )``.

    ``S = scale * cos(x_i, x_j)`` over all codes of the (class-grouped) batch. This is the
    "sum inside the log" form: an anchor is satisfied when its positives *together* dominate, i.e.
    NCA (Goldberger et al. 2004) with cosine similarity; it equals pytorch-metric-learning's
    ``NCALoss(softmax_scale=scale, distance=CosineSimilarity())``. Anchors without a positive in
    the batch are skipped (their term is undefined); the mean is over the remaining anchors.
    """
    s = scale * pairwise_cosine_similarity(codes)
    eye = torch.eye(codes.shape[0], dtype=torch.bool, device=codes.device)
    pos = positive_mask(labels)
    has_pos = pos.any(dim=1)
    if not has_pos.any():
        return zero_loss(codes)
    log_num = masked_logsumexp(s, pos)
    log_den = masked_logsumexp(s, ~eye)
    return (log_den - log_num)[has_pos].mean()


class SoftmaxCosineHashLoss(torch.nn.Module):
    """Softmax-loss deep hashing: ``softmax_cosine_loss + alpha * mean_i || 1 - |x_i| ||_2``.

    The first term (see :func:`softmax_cosine_loss`) pulls codes of a class together in angle; the
    second, the Hamming-space term, pushes every component to +-1 so that the sign keeps the
    cosine geometry (for +-1 codes ``cos = 1 - 2 d_H / K``). The norm is per sample, averaged over
    the batch (:func:`quantization_penalty` with ``kind="l2"``).

    Args:
        scale: ``s``, the inverse temperature of the softmax (cosines live in [-1, 1]).
        alpha: weight of the quantization term.
    """

    def __init__(self, scale: float = 10.0, alpha: float = 0.1) -> None:
        super().__init__()
        self.scale = check_positive(scale, "scale")
        self.alpha = check_non_negative(alpha, "alpha")

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(codes, labels)
        loss = softmax_cosine_loss(codes, labels, self.scale)
        if self.alpha:
            loss = loss + self.alpha * quantization_penalty(codes, "l2")
        return loss

    def extra_repr(self) -> str:
        return f"scale={self.scale}, alpha={self.alpha}"
