"""What every training run shares (needs torch): the optimiser, the learning-rate schedule, and
model selection on validation data.

Both trainers (:func:`hashindex.training.loop.train_hasher` over embeddings,
:func:`hashindex.training.image_training.train_images` over image folders) and the judgement on
held-out identities (:mod:`hashindex.training.judge`) take these from here.

Model selection. The index shortlists Hamming neighbours and reranks them with exact float
similarity, so a code must put each query's exact float nearest neighbour early in the Hamming
ranking. The default criterion is ``p95_candidates``: the 95th percentile over validation
queries of the fraction of the validation set that must be reranked to reach the exact cosine
nearest neighbour (:func:`hashindex.evaluation.recall.candidate_fraction_needed`, leave-one-out,
expected tie order) -- lower is better, and it bounds the rerank cost for 95% of queries.
``map_at_r`` (Musgrave et al. 2020, identity relevance; higher is better) is the alternative for
identity retrieval. :data:`~hashindex.training.config.SELECTION` gives each criterion's direction.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hashindex.evaluation.ranking import map_at_r
from hashindex.evaluation.recall import candidate_fraction_needed
from hashindex.training.config import SELECTION, TrainConfig


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or SGD with momentum, over ``params`` with the config's lr and weight decay."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, config: TrainConfig):
    """The per-epoch schedule (cosine to 0 at ``config.epochs``, or step), or None."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=config.step_size, gamma=config.gamma)
    return None


def selection_metrics(codes: np.ndarray, features: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Validation metrics of packed ``codes uint8 [N, K/8]`` (leave-one-out over the set).

    Returns ``p50_candidates`` / ``p95_candidates`` (fraction of the set to rerank to reach each
    query's exact cosine NN), and with labels ``map_at_r``.
    """
    frac = candidate_fraction_needed(codes, None, features, None, metric="cosine")
    p50, p95 = np.quantile(frac, [0.5, 0.95])
    out = {"p50_candidates": float(p50), "p95_candidates": float(p95)}
    if labels is not None:
        out["map_at_r"] = map_at_r(codes, labels)
    return out


def better(new: dict, best: dict, criterion: str) -> bool:
    """Whether metrics ``new`` beat ``best`` on ``criterion`` (strictly; NaN never wins and
    always loses)."""
    a, b = new[criterion], best[criterion]
    if math.isnan(a):
        return False
    return math.isnan(b) or SELECTION[criterion] * (a - b) > 0


@dataclass
class Selection:
    """The best epoch so far (by ``criterion``) and the early-stopping count.

    Epoch 0 (the model before any step) competes: a start that training cannot beat is kept.
    Without validation data every epoch counts as an improvement (the last one is kept).
    """

    criterion: str
    patience: int | None
    validated: bool
    best: dict
    state: dict
    epoch: int = 0
    stale: int = 0

    def update(self, metrics: dict, epoch: int, model: nn.Module) -> bool:
        """Record an epoch; True when it becomes the best (its weights are kept)."""
        if not self.validated or better(metrics, self.best, self.criterion):
            self.best, self.epoch, self.stale = metrics, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience


def epoch_line(h: dict) -> str:
    """One history record as a progress line: epoch, loss, the selection metrics, seconds."""
    parts = [f"epoch {h['epoch']:3d}"]
    if h.get("loss") is not None:
        parts.append(f"loss {h['loss']:.4f}")
    for key in ("p95_candidates", "p50_candidates", "map_at_r", "seconds"):
        if key in h:
            parts.append(f"{key} {h[key]:.4f}")
    return "  ".join(parts)


__all__ = ["Selection", "better", "epoch_line", "make_optimizer", "make_scheduler", "selection_metrics"]
