"""Functional core shared by the losses: batch checks, pairwise distances, label masks, reductions.

Every function is pure (no state, no hyper-parameters hidden in objects) and works on a whole
batch at once. Shapes: ``codes`` float ``[B, K]`` (the tanh output, in [-1, 1]), ``labels`` int64
``[B]``, matrices ``[B, B]`` indexed ``[anchor, other]``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from hashindex.core.errors import InputError

DistanceKind = Literal["euclidean", "squared_euclidean", "cosine"]
Reduction = Literal["mean", "nonzero_mean"]

DISTANCE_KINDS: tuple[str, ...] = get_args(DistanceKind)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def check_batch(codes: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise :class:`InputError` unless ``codes`` is float ``[B, K]`` and ``labels`` integer ``[B]``."""
    if not isinstance(codes, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise InputError("codes and labels must be torch tensors")
    if codes.ndim != 2:
        raise InputError(f"codes must be 2-D [B, K], got shape {tuple(codes.shape)}")
    if not codes.is_floating_point():
        raise InputError(f"codes must be floating point, got dtype {codes.dtype}")
    if labels.ndim != 1 or labels.shape[0] != codes.shape[0]:
        raise InputError(
            f"labels must be 1-D of length {codes.shape[0]} (one per code), got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integer class ids, got dtype {labels.dtype}")


def check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_non_negative(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InputError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def zero_loss(codes: torch.Tensor) -> torch.Tensor:
    """A scalar 0 still attached to the graph, so ``backward()`` works on degenerate batches."""
    return (codes * 0).sum()


def pairwise_cosine_similarity(x: torch.Tensor) -> torch.Tensor:
    """``[B, K] -> [B, B]``: ``cos(x_i, x_j)``; rows are L2-normalised first (eps 1e-12)."""
    x = F.normalize(x, dim=1)
    return x @ x.T


def pairwise_squared_euclidean(x: torch.Tensor) -> torch.Tensor:
    """``[B, K] -> [B, B]``: ``||x_i - x_j||^2`` via the Gram matrix, clamped at 0, zero diagonal."""
    sq = (x * x).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


def safe_sqrt(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``sqrt`` with a zero (not infinite/NaN) gradient where ``x <= eps``."""
    ok = x > eps
    return torch.where(ok, torch.sqrt(torch.where(ok, x, torch.ones_like(x))), torch.zeros_like(x))


def pairwise_distances(x: torch.Tensor, kind: DistanceKind = "euclidean", normalize: bool = True) -> torch.Tensor:
    """Distance matrix ``[B, B]`` of the rows of ``x`` ``[B, K]``.

    ``kind``: ``"euclidean"`` ``||x_i - x_j||``, ``"squared_euclidean"`` ``||x_i - x_j||^2`` or
    ``"cosine"`` ``1 - cos(x_i, x_j)``. With ``normalize`` the rows are L2-normalised first (as
    pytorch-metric-learning's distances do by default), which makes margins independent of the
    number of bits: for +-1 codes ``||x_i - x_j||^2 = 4 d_H / K``.
    """
    check_choice(kind, DISTANCE_KINDS, "distance")
    if normalize:
        x = F.normalize(x, dim=1)
    if kind == "cosine":
        return 1.0 - pairwise_cosine_similarity(x)
    sq = pairwise_squared_euclidean(x)
    return sq if kind == "squared_euclidean" else safe_sqrt(sq)


def same_label_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[B] -> bool [B, B]``: ``labels[i] == labels[j]`` (diagonal included)."""
    return labels[:, None] == labels[None, :]


def positive_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[B] -> bool [B, B]``: same label and ``i != j`` (ordered positive pairs)."""
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same_label_mask(labels) & ~eye


def negative_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[B] -> bool [B, B]``: different labels (ordered negative pairs)."""
    return ~same_label_mask(labels)


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``log sum_{mask} exp(x)`` along ``dim``; ``-inf`` (with zero gradient) where the mask is empty."""
    any_kept = mask.any(dim=dim, keepdim=True)
    # Empty rows are filled with zeros before the reduction: an all -inf row would give NaN gradients.
    filled = torch.where(mask, x, torch.where(any_kept, torch.full_like(x, float("-inf")), torch.zeros_like(x)))
    out = torch.logsumexp(filled, dim=dim, keepdim=True)
    out = torch.where(any_kept, out, torch.full_like(out, float("-inf")))
    return out.squeeze(dim)


def reduce_losses(losses: torch.Tensor, reduction: Reduction, like: torch.Tensor) -> torch.Tensor:
    """Reduce per-pair / per-triplet losses to a scalar.

    ``"mean"``: plain mean. ``"nonzero_mean"``: mean over the strictly positive entries
    (pytorch-metric-learning's ``AvgNonZeroReducer``), so easy pairs do not dilute the gradient
    as training progresses. Empty input gives a graph-attached 0 built from ``like``.
    """
    check_choice(reduction, REDUCTIONS, "reduction")
    if reduction == "nonzero_mean":
        losses = losses[losses > 0]
    if losses.numel() == 0:
        return zero_loss(like)
    return losses.mean()
