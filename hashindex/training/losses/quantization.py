"""Quantization penalties pulling continuous codes towards the binary corners {-1, +1}^K.

Any loss can be combined with one: ``CombinedLoss(base, quantization_weight, kind)`` or simply
``base(h, y) + w * QuantizationLoss(kind)(h)``.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from hashindex.core.errors import InputError
from hashindex.training.losses.distances import check_choice, check_non_negative, safe_sqrt

QuantizationKind = Literal["logcosh", "l2"]
QUANTIZATION_KINDS: tuple[str, ...] = get_args(QuantizationKind)


def log_cosh(x: torch.Tensor) -> torch.Tensor:
    """``log cosh(x)`` without overflow: ``|x| + softplus(-2|x|) - log 2``."""
    ax = x.abs()
    return ax + F.softplus(-2.0 * ax) - math.log(2.0)


def quantization_penalty(codes: torch.Tensor, kind: QuantizationKind = "logcosh") -> torch.Tensor:
    """Scalar distance of ``codes`` ``[B, K]`` from {-1, +1}^K.

    ``"logcosh"``: ``mean_{i,k} log cosh(|h_ik| - 1)`` (CSQ, Yuan et al. CVPR 2020, Eq. 7; mean
    over bits and samples, so the weight does not depend on K).
    ``"l2"``: ``mean_i || 1 - |h_i| ||_2`` (per-sample L2 norm of the gap, averaged over the batch,
    the Hamming-space term of softmax-loss hashing). Its gradient per sample has unit norm
    whatever K, like the gradient of a cosine similarity, so a single weight suits 8..256 bits.
    """
    check_choice(kind, QUANTIZATION_KINDS, "quantization kind")
    if codes.ndim != 2:
        raise InputError(f"codes must be 2-D [B, K], got shape {tuple(codes.shape)}")
    gap = codes.abs() - 1.0
    if kind == "logcosh":
        return log_cosh(gap).mean()
    # safe norm: zero gradient (not NaN) for a code already exactly at a corner
    return safe_sqrt((gap * gap).sum(dim=1), eps=0.0).mean()


class QuantizationLoss(torch.nn.Module):
    """``forward(codes, labels=None)`` -> :func:`quantization_penalty` (labels are ignored)."""

    def __init__(self, kind: QuantizationKind = "logcosh") -> None:
        super().__init__()
        self.kind = check_choice(kind, QUANTIZATION_KINDS, "quantization kind")

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return quantization_penalty(codes, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class CombinedLoss(torch.nn.Module):
    """``base(codes, labels) + quantization_weight * quantization_penalty(codes, kind)``."""

    def __init__(self, base: torch.nn.Module, quantization_weight: float, kind: QuantizationKind = "logcosh") -> None:
        super().__init__()
        self.base = base
        self.quantization_weight = check_non_negative(quantization_weight, "quantization_weight")
        self.quantization = QuantizationLoss(kind)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.base(codes, labels) + self.quantization_weight * self.quantization(codes)

    def extra_repr(self) -> str:
        return f"quantization_weight={self.quantization_weight}"
