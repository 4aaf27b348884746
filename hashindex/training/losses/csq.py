"""Central Similarity Quantization loss (Yuan, Wang, Feng et al., CVPR 2020)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hashindex.core.errors import InputError
from hashindex.core.validation import check_positive_int
from hashindex.training.losses.centers import (
    HashCenters,
    check_centers,
    check_distinct,
    make_centers,
    min_pairwise_hamming,
    multilabel_centers,
    random_tie_bits,
)
from hashindex.training.losses.distances import check_non_negative
from hashindex.training.losses.quantization import quantization_penalty

# (h + 1) / 2 is clamped away from {0, 1} so the BCE stays finite for saturated tanh outputs.
_EPS = 1e-6


def csq_loss(codes: torch.Tensor, targets: torch.Tensor, lambda_q: float) -> torch.Tensor:
    """CSQ, Eq. 5 + Eq. 7::

        L = -mean_{i,k} [ c_ik log h'_ik + (1 - c_ik) log(1 - h'_ik) ]
            + lambda_q * mean_{i,k} log cosh(|h_ik| - 1),     h' = (h + 1) / 2

    ``codes`` ``[B, K]`` in [-1, 1], ``targets`` {0,1} ``[B, K]`` (each sample's hash center).
    """
    p = ((codes + 1.0) * 0.5).clamp(_EPS, 1.0 - _EPS)
    loss = F.binary_cross_entropy(p, targets.to(p.dtype))
    if lambda_q:
        loss = loss + lambda_q * quantization_penalty(codes, "logcosh")
    return loss


class CSQLoss(torch.nn.Module):
    """Pull every code to its class's hash center; centers are fixed, far-apart binary codes.

    Args:
        bits, num_classes: code length K and number of classes C.
        lambda_q: weight of the log-cosh quantization term.
        centers: ``None`` (Hadamard when K is a power of two and C <= 2K, else Bernoulli),
            ``"hadamard"``, ``"bernoulli"``, or given centers {0,1} / {-1,+1} ``[C, K]``.
        seed: seeds the Bernoulli centers and the multi-label tie breaks.
        multi_label: labels are {0,1} ``[B, C]``; a sample's center is the per-bit majority vote
            of its labels' centers (:func:`~hashindex.training.losses.centers.multilabel_centers`).
        allow_duplicates: warn instead of raising when two classes share a center.

    Attributes:
        centers: {0,1} float ``[C, K]`` buffer; ``min_distance``: their minimum pairwise Hamming
        distance; ``center_kind``: ``"hadamard"``, ``"bernoulli"`` or ``"given"``.
    """

    def __init__(
        self,
        bits: int,
        num_classes: int,
        lambda_q: float = 1e-4,
        centers: str | np.ndarray | torch.Tensor | None = None,
        seed: int = 0,
        multi_label: bool = False,
        allow_duplicates: bool = False,
    ) -> None:
        super().__init__()
        self.bits = check_positive_int(bits, "bits")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.lambda_q = check_non_negative(lambda_q, "lambda_q")
        self.multi_label = bool(multi_label)
        if centers is None or isinstance(centers, str):
            made = make_centers(bits, num_classes, centers or "auto", seed=seed, allow_duplicates=allow_duplicates)
        else:
            given = check_centers(centers, bits, num_classes)
            made = HashCenters(given, "given", min_pairwise_hamming(given))
            check_distinct(made, allow_duplicates)
        self.center_kind = made.kind
        self.min_distance = made.min_distance
        self.register_buffer("centers", torch.as_tensor(made.centers, dtype=torch.float32))
        self.register_buffer("tie_bits", torch.as_tensor(random_tie_bits(num_classes, bits, seed), dtype=torch.float32))

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The {0,1} center ``[B, K]`` of each sample, as float (the dtype of ``centers``)."""
        if self.multi_label:
            if labels.ndim != 2 or labels.shape[1] != self.num_classes:
                raise InputError(
                    f"multi-label targets must be [B, {self.num_classes}], got shape {tuple(labels.shape)}"
                )
            return multilabel_centers(labels, self.centers, self.tie_bits).to(self.centers.dtype)
        if labels.ndim != 1 or labels.is_floating_point():
            raise InputError(f"labels must be integer class ids [B], got shape {tuple(labels.shape)} {labels.dtype}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise InputError(f"labels must lie in [0, {self.num_classes}), got range "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return self.centers[labels]

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if codes.ndim != 2 or codes.shape[1] != self.bits:
            raise InputError(f"codes must be [B, {self.bits}], got shape {tuple(codes.shape)}")
        if labels.shape[0] != codes.shape[0]:
            raise InputError(f"got {codes.shape[0]} codes but {labels.shape[0]} labels")
        return csq_loss(codes, self.targets(labels), self.lambda_q)

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, num_classes={self.num_classes}, lambda_q={self.lambda_q}, "
            f"centers={self.center_kind!r}, min_distance={self.min_distance}, multi_label={self.multi_label}"
        )
