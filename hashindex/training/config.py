"""What determines a training run (:class:`TrainConfig`) and what it returns (:class:`TrainResult`).

Plain dataclasses: a config round-trips through JSON (checkpoints store it) and importing this
module needs no torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hashindex.core.bits import check_bits
from hashindex.core.errors import InputError
from hashindex.core.io import json_safe

if TYPE_CHECKING:
    from torch import nn

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", None)
# criterion -> +1 when higher is better, -1 when lower is better
SELECTION = {"p95_candidates": -1, "map_at_r": +1}


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in checkpoints as JSON).

    Attributes:
        bits: code length K (multiple of 8).
        loss: name for :func:`hashindex.training.losses.make_loss`.
        loss_params: keyword arguments of that loss (its hyper-parameters).
        hidden: hidden widths of the head's MLP (``()``: linear head).
        epochs: maximum number of epochs.
        p, k: identities per batch and rows per identity.
        optimizer: "adam" or "sgd" (momentum ``momentum``).
        lr, weight_decay, momentum: optimiser settings.
        schedule: per-epoch learning-rate schedule: "cosine" (to 0 at ``epochs``), "step"
            (``gamma`` every ``step_size`` epochs) or None.
        seed: seeds torch (initialisation) and the batch sampler.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        val_fraction: identities held out for validation when no ``val_data`` is given.
        patience: stop after this many epochs without improvement (None: never).
        select: model-selection criterion, "p95_candidates" or "map_at_r" (module docstring).
        num_threads: torch CPU threads during training (None: leave torch's setting).
        min_samples: identities with fewer training rows are dropped (no positive pair).
        small: P x K policy for identities with fewer than K rows: "replace" or "skip".
        eval_batch_size: rows per forward pass when encoding validation data.
        extra_rows: rows drawn uniformly from *all* training rows (single-image identities
            included) and appended to every P x K batch with label -1. Only losses that take
            features (``uses_features``, e.g. :class:`~hashindex.training.losses.distill.DistilledLoss`)
            can use them: they widen the neighbourhoods a distillation term sees beyond the
            batch's identities. 0 disables.
        extra_neighbours: when > 0, the extra rows come in groups: a uniformly drawn row and
            its ``extra_neighbours`` nearest training rows by cosine, so that a distillation
            term sees each group's true near neighbours (the ones a shortlist must rank
            correctly) instead of a sparse random sample. 0: extras are independent draws.
    """

    bits: int = 64
    loss: str = "csq"
    loss_params: dict[str, Any] = field(default_factory=dict)
    hidden: tuple[int, ...] = ()
    epochs: int = 30
    p: int = 32
    k: int = 4
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str | None = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.3
    patience: int | None = 5
    select: str = "p95_candidates"
    num_threads: int | None = None
    min_samples: int = 2
    small: str = "replace"
    eval_batch_size: int = 4096
    extra_rows: int = 0
    extra_neighbours: int = 0

    def __post_init__(self) -> None:
        check_bits(self.bits)
        self.hidden = tuple(int(h) for h in self.hidden)
        for name in ("epochs", "p", "k", "step_size", "min_samples", "eval_batch_size"):
            setattr(self, name, check_count(getattr(self, name), name, 1))
        for name in ("extra_rows", "extra_neighbours"):
            setattr(self, name, check_count(getattr(self, name), name, 0))
        if self.patience is not None:
            self.patience = check_count(self.patience, "patience", 1)
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.select not in SELECTION:
            raise InputError(f"select must be one of {tuple(SELECTION)}, got {self.select!r}")
        self.lr = check_number(self.lr, "lr", 0.0, strict=True)
        self.gamma = check_number(self.gamma, "gamma", 0.0, strict=True)
        self.weight_decay = check_number(self.weight_decay, "weight_decay", 0.0)
        self.momentum = check_number(self.momentum, "momentum", 0.0)
        if not 0 <= self.val_fraction < 1:  # False for NaN too
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict:
        return json_safe(asdict(self))  # tuples as JSON lists

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**d)


def check_count(value: Any, name: str, low: int = 1) -> int:
    """A whole number >= ``low`` as an int (NaN, inf, 2.5 and bools raise :class:`InputError`)."""
    ok = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and value == int(value))
    if isinstance(value, bool) or not ok or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_number(value: Any, name: str, low: float = 0.0, strict: bool = False) -> float:
    """A finite number > ``low`` (``strict``) or >= ``low`` as a float, else :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < low or (strict and value == low):
        raise InputError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


@dataclass
class TrainResult:
    """Outcome of :func:`train_hasher`.

    Attributes:
        model: the head with the best epoch's weights, in eval mode, on the CPU.
        config: the configuration used.
        history: one dict per epoch (epoch 0 = before training): loss, lr, validation metrics.
        best_metrics: validation metrics of the kept epoch (empty without validation data).
        best_epoch: the kept epoch.
        checkpoint_path: ``out_dir/model.pt`` when ``out_dir`` was given.
    """

    model: "nn.Module"
    config: TrainConfig
    history: list[dict]
    best_metrics: dict
    best_epoch: int
    checkpoint_path: Path | None = None
