"""Multi-class N-pair loss (Sohn, NeurIPS 2016) with an L2 penalty on the embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashindex.training.losses.distances import check_batch, check_non_negative, zero_loss


def npair_tuples(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a (P x K) batch into N-pair tuples: ``(anchor [N], positive [N], tuple_id [N])``.

    Within each class, samples are taken in batch order and paired ``(1st, 2nd)``, ``(3rd, 4th)``,
    ...; the r-th pair of every class goes to tuple r, so each tuple holds at most one pair per
    class, as the N-pair construction requires. An odd sample out is unused. With K = 2 there is
    a single tuple: exactly Sohn's batch of N pairs from N classes (and pytorch-metric-learning's
    ``NPairsLoss``, which keeps only the first pair of each class). Pairs are ordered by tuple,
    then class.
    """
    b = labels.shape[0]
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    idx = torch.arange(b, device=labels.device)
    starts = torch.ones(b, dtype=torch.bool, device=labels.device)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group_start = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=0).values
    rank = idx - group_start
    nxt = torch.cat([sorted_labels[1:], sorted_labels[:1]])
    is_anchor = (rank % 2 == 0) & (idx + 1 < b) & (nxt == sorted_labels)
    pos_in_sorted = torch.where(is_anchor)[0]
    tuple_id = rank[pos_in_sorted] // 2
    # stable sort by tuple keeps class order inside each tuple
    by_tuple = torch.argsort(tuple_id, stable=True)
    pos_in_sorted, tuple_id = pos_in_sorted[by_tuple], tuple_id[by_tuple]
    return order[pos_in_sorted], order[pos_in_sorted + 1], tuple_id


def npair_mc_loss(codes: torch.Tensor, labels: torch.Tensor, l2_reg: float) -> torch.Tensor:
    """Sohn 2016, Eq. 6, averaged over the anchors of all tuples, plus the L2 penalty::

        L = mean_i log(1 + sum_{j != i, same tuple} exp(f_i . f_j+ - f_i . f_i+))
            + l2_reg * mean_{b in batch} ||f_b||^2

    The first term is the cross-entropy of the row ``f_i . f_j+`` with target ``i``. Inner products
    of the raw codes (no normalisation) as in the paper; the penalty, over every code of the batch
    (pytorch-metric-learning's ``LpRegularizer(power=2)`` semantics), keeps their norms in check.
    """
    a, p, t = npair_tuples(labels)
    loss = zero_loss(codes)
    if a.numel():
        logits = codes[a] @ codes[p].T
        logits = logits.masked_fill(t[:, None] != t[None, :], float("-inf"))
        target = torch.arange(a.numel(), device=codes.device)
        loss = loss + F.cross_entropy(logits, target)
    if l2_reg:
        loss = loss + l2_reg * codes.pow(2).sum(dim=1).mean()
    return loss


class NPairMCLoss(torch.nn.Module):
    """Multi-class N-pair loss (see :func:`npair_mc_loss`; pairs from :func:`npair_tuples`).

    Args:
        l2_reg: weight of the mean squared L2 norm of the codes (Sohn uses 0.002).
    """

    def __init__(self, l2_reg: float = 0.002) -> None:
        super().__init__()
        self.l2_reg = check_non_negative(l2_reg, "l2_reg")

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(codes, labels)
        return npair_mc_loss(codes, labels, self.l2_reg)

    def extra_repr(self) -> str:
        return f"l2_reg={self.l2_reg}"
