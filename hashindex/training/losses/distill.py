"""Similarity distillation: codes that rank neighbours as the float features do (needs torch).

An index that shortlists Hamming neighbours and reranks them exactly only needs each query's
float nearest neighbours to come early in the Hamming ranking: a *ranking-preservation*
objective, which labels do not express (the float nearest neighbour of a face is often, but
not always, the same person). Following DistillHash (Yang et al., CVPR 2019) and relational
knowledge distillation (Park et al., CVPR 2019), the float cosine similarities of a batch are
the teacher and the codes' cosine similarities the student, compared row by row as listwise
distributions (ListNet, Cao et al. ICML 2007):

    P_ij = softmax_{j != i}( cos(x_i, x_j) / tau ),   Q_ij = softmax_{j != i}( cos(h_i, h_j) / tau )
    L = mean_i KL(P_i || Q_i)

The softmax puts the weight on each row's near neighbours (the ones the shortlist must keep)
and is invariant to a per-row shift, so the codes need only preserve the *order*-relevant
differences of cosine, not its absolute value. For ``{-1, +1}`` codes ``cos(h_i, h_j) =
1 - 2 d_H / K``, so the student score is the Hamming ranking once the codes saturate.

Losses here take ``forward(codes, labels, features)`` and say so with ``uses_features = True``
(:func:`hashindex.training.loop.train_hasher` then passes the batch's input features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashindex.core.errors import InputError
from hashindex.training.losses.distances import check_non_negative, check_positive, pairwise_cosine_similarity


def similarity_distillation_loss(codes: torch.Tensor, features: torch.Tensor, tau: float) -> torch.Tensor:
    """``mean_i KL(P_i || Q_i)`` of the module docstring.

    Args:
        codes: ``float [B, K]`` continuous codes.
        features: ``float [B, D]`` the float features they were computed from (the teacher;
            no gradient flows into them).
        tau: temperature of both distributions (cosines live in ``[-1, 1]``).
    """
    if codes.ndim != 2 or features.ndim != 2 or codes.shape[0] != features.shape[0]:
        raise InputError(f"codes [B, K] and features [B, D] must share B, got {tuple(codes.shape)} and {tuple(features.shape)}")
    b = codes.shape[0]
    if b < 3:
        return codes.sum() * 0.0
    eye = torch.eye(b, dtype=torch.bool, device=codes.device)
    with torch.no_grad():
        log_p = F.log_softmax((pairwise_cosine_similarity(features.float()) / tau).masked_fill(eye, float("-inf")), dim=1)
    log_q = F.log_softmax((pairwise_cosine_similarity(codes) / tau).masked_fill(eye, float("-inf")), dim=1)
    # the diagonal is -inf in both: drop it rather than compute 0 * (-inf - -inf)
    p = log_p.exp()
    kl = torch.where(eye, torch.zeros_like(log_q), p * (log_p - log_q))
    return kl.sum(dim=1).mean()


class SimilarityDistillLoss(torch.nn.Module):
    """:func:`similarity_distillation_loss` as a module; labels are ignored (any rows work)."""

    uses_features = True

    def __init__(self, tau: float = 0.05) -> None:
        super().__init__()
        self.tau = check_positive(tau, "tau")

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return similarity_distillation_loss(codes, features, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class DistilledLoss(torch.nn.Module):
    """``identity(codes[labelled], labels[labelled]) + weight * distill(codes, features)``.

    Rows with ``label < 0`` are unlabelled extras (e.g. drawn at random from all training
    features, single-image identities included): they join the distillation term only, so any
    identity loss -- class-centre ones too -- sees only its P x K rows.

    Args:
        identity: a loss ``(codes, labels) -> scalar`` (e.g. from :func:`make_loss`), or None
            for pure distillation.
        weight: weight of the distillation term.
        tau: its temperature.
    """

    uses_features = True

    def __init__(self, identity: torch.nn.Module | None, weight: float = 1.0, tau: float = 0.05) -> None:
        super().__init__()
        self.identity = identity
        self.weight = check_non_negative(weight, "weight")
        self.distill = SimilarityDistillLoss(tau)
        if identity is None and self.weight == 0:
            raise InputError("DistilledLoss needs an identity loss or a positive distillation weight")

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        value = codes.sum() * 0.0
        if self.identity is not None:
            keep = labels >= 0
            value = value + self.identity(codes[keep], labels[keep])
        if self.weight:
            value = value + self.weight * self.distill(codes, labels, features)
        return value

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
