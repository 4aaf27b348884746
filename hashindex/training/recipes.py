"""Named training recipes for hash heads over face embeddings (needs torch).

A recipe is everything beyond :class:`~hashindex.training.config.TrainConfig` that a run needs: how the
head starts (fresh, or from a fitted PCA / ITQ projection so that learning starts at the
baseline's codes) and whether a similarity-distillation term
(:mod:`hashindex.training.losses.distill`) joins the identity loss. ``RECIPES["learned"]`` is the
default; the others are the ablation measured in ``benchmarks/QUALITY.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from hashindex.core.errors import InputError
from hashindex.serving.hashers import make_hasher
from hashindex.training.models import HashHead
from hashindex.training.config import TrainConfig, TrainResult
from hashindex.training.data import training_rows
from hashindex.training.loop import train_hasher

INITS = (None, "pca", "itq")


@dataclass(frozen=True)
class Recipe:
    """A training recipe.

    Attributes:
        loss, loss_params: the identity loss (:func:`hashindex.training.losses.make_loss`); ``loss=None``
            trains on the distillation term alone.
        distill_weight: weight of the similarity-distillation term (0: none).
        distill_tau: its temperature.
        extra_rows: unlabelled rows added to every batch for the distillation term
            (:attr:`TrainConfig.extra_rows`).
        init: start the (linear) head from this fitted hasher's projection, or None.
        init_scale: with ``init``, the head's pre-tanh outputs on the training data get this
            mean absolute value (how saturated tanh starts; bits never change).
        hidden, epochs, lr, p, k, weight_decay: as in :class:`TrainConfig`.
    """

    loss: str | None = "softmax"
    loss_params: dict[str, Any] = field(default_factory=dict)
    distill_weight: float = 0.0
    distill_tau: float = 0.05
    extra_rows: int = 0
    extra_neighbours: int = 0
    init: str | None = None
    init_scale: float = 1.0
    hidden: tuple[int, ...] = ()
    epochs: int = 20
    lr: float = 1e-3
    p: int = 32
    k: int = 4
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise InputError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init is not None and self.hidden:
            raise InputError("init from a linear hasher needs a linear head (hidden=())")
        if self.loss is None and self.distill_weight <= 0:
            raise InputError("a recipe needs an identity loss or a positive distill_weight")

    def train_config(self, bits: int, seed: int = 0, **overrides: Any) -> TrainConfig:
        """The :class:`TrainConfig` of this recipe (fixed epochs, no early stopping)."""
        base = dict(
            bits=bits, loss=self.loss or "softmax", loss_params=dict(self.loss_params), hidden=self.hidden,
            epochs=self.epochs, lr=self.lr, p=self.p, k=self.k, weight_decay=self.weight_decay,
            extra_rows=self.extra_rows, extra_neighbours=self.extra_neighbours, seed=seed, device="cpu", patience=None, val_fraction=0.0,
        )
        return TrainConfig(**{**base, **overrides})


# "learned" is the default; the rest is its ablation (benchmarks/QUALITY.md).
RECIPES: dict[str, Recipe] = {
    "learned": Recipe(init="itq", distill_weight=1.0, extra_rows=256, extra_neighbours=15),
    "learned_random_extras": Recipe(init="itq", distill_weight=1.0, extra_rows=256),
    "distill_itq": Recipe(loss=None, init="itq", distill_weight=1.0, extra_rows=384, extra_neighbours=15),
    "softmax_itq": Recipe(init="itq", lr=1e-4),
    "softmax_scratch": Recipe(),
}


def initial_head(recipe: Recipe, features: np.ndarray, bits: int) -> HashHead | None:
    """The head a recipe starts from: ``HashHead.from_linear`` of a fitted hasher, or None."""
    if recipe.init is None:
        return None
    hasher = make_hasher(recipe.init, features.shape[1], bits).fit(features)
    z = hasher.project(features)
    scale = recipe.init_scale / max(float(np.abs(z).mean()), 1e-12)
    return HashHead.from_linear(hasher.weight, hasher.bias, scale=scale)


def build_loss(recipe: Recipe, bits: int, num_classes: int) -> torch.nn.Module:
    from hashindex.training.losses import make_loss
    from hashindex.training.losses.distill import DistilledLoss

    identity = None if recipe.loss is None else make_loss(recipe.loss, bits=bits, num_classes=num_classes, **recipe.loss_params)
    if recipe.distill_weight > 0 or recipe.extra_rows:
        return DistilledLoss(identity, recipe.distill_weight, recipe.distill_tau)
    return identity


def fit_recipe(
    recipe: str | Recipe,
    features: np.ndarray,
    labels: np.ndarray,
    bits: int,
    seed: int = 0,
    progress: bool = False,
    out_dir: str | None = None,
    stage: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``recipe`` on ``features float32 [N, D]`` / ``labels [N]`` (all of it unless the
    overrides ask for a validation split); the :class:`TrainResult` holds the head in eval mode
    (``.model``), and the model directory is written to ``out_dir`` when given. ``overrides``
    replace TrainConfig fields, e.g. ``val_fraction=0.3, patience=5`` to validate each epoch and
    keep the best. ``stage`` labels the progress lines (:func:`train_hasher`)."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise InputError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
        recipe = RECIPES[recipe]
    cfg = recipe.train_config(bits, seed, **overrides)
    _, y = training_rows(np.asarray(labels), cfg.min_samples)
    torch.manual_seed(seed)
    model = initial_head(recipe, features, bits)
    loss = build_loss(recipe, bits, int(y.max()) + 1)
    return train_hasher((features, labels), cfg, progress=progress, model=model, loss=loss, out_dir=out_dir, stage=stage)


__all__ = ["RECIPES", "Recipe", "build_loss", "fit_recipe", "initial_head", "replace"]
