"""``make_loss(name, bits, num_classes, **hyper)``: build a loss by name, with per-loss defaults."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

import torch

from hashindex.core.errors import InputError
from hashindex.core.validation import check_positive_int
from hashindex.training.losses.contrastive import ContrastiveLoss
from hashindex.training.losses.csq import CSQLoss
from hashindex.training.losses.distances import check_non_negative
from hashindex.training.losses.facility import FacilityLocationLoss
from hashindex.training.losses.lifted import LiftedStructuredLoss
from hashindex.training.losses.npair import NPairMCLoss
from hashindex.training.losses.quantization import QUANTIZATION_KINDS, CombinedLoss
from hashindex.training.losses.softmax import SoftmaxCosineHashLoss
from hashindex.training.losses.triplet import TripletLoss

# Arguments make_loss supplies itself rather than taking from **hyper.
_SIZE_ARGS = ("bits", "num_classes")


@dataclass(frozen=True)
class LossSpec:
    """How :func:`make_loss` builds one loss.

    ``quantization_weight``: weight of the log-cosh quantization term added by wrapping the loss
    in :class:`CombinedLoss` (0 for losses with their own quantization term). The loss's own
    hyper-parameter defaults are its constructor's (see :attr:`defaults`), kept in one place.
    """

    name: str
    cls: type[torch.nn.Module]
    quantization_weight: float

    @property
    def defaults(self) -> dict[str, Any]:
        """Hyper-parameter defaults, read from the constructor signature (bits/num_classes excluded)."""
        params = inspect.signature(self.cls.__init__).parameters.values()
        return {p.name: p.default for p in params if p.name not in ("self", *_SIZE_ARGS)}

    @property
    def takes_sizes(self) -> bool:
        return "bits" in inspect.signature(self.cls.__init__).parameters


LOSS_SPECS: Mapping[str, LossSpec] = MappingProxyType(
    {
        "softmax": LossSpec("softmax", SoftmaxCosineHashLoss, 0.0),
        "csq": LossSpec("csq", CSQLoss, 0.0),
        "triplet": LossSpec("triplet", TripletLoss, 0.1),
        "contrastive": LossSpec("contrastive", ContrastiveLoss, 0.1),
        "lifted": LossSpec("lifted", LiftedStructuredLoss, 0.1),
        "npair": LossSpec("npair", NPairMCLoss, 0.1),
        "facility": LossSpec("facility", FacilityLocationLoss, 0.1),
    }
)
LOSS_NAMES: tuple[str, ...] = tuple(LOSS_SPECS)


def make_loss(name: str, bits: int, num_classes: int, **hyper: Any) -> torch.nn.Module:
    """Build loss ``name`` (one of :data:`LOSS_NAMES`) for ``bits``-bit codes and ``num_classes``.

    ``hyper`` overrides the loss's constructor defaults (``LOSS_SPECS[name].defaults``), plus two
    keys of its own: ``quantization_weight`` (default ``LOSS_SPECS[name].quantization_weight``;
    when > 0 the loss is wrapped in :class:`CombinedLoss`) and ``quantization`` (``"logcosh"`` or
    ``"l2"``). Unknown keys raise :class:`InputError`.
    """
    spec = LOSS_SPECS.get(name)
    if spec is None:
        raise InputError(f"unknown loss {name!r}; choose one of {list(LOSS_NAMES)}")
    bits = check_positive_int(bits, "bits")
    num_classes = check_positive_int(num_classes, "num_classes")
    weight = check_non_negative(hyper.pop("quantization_weight", spec.quantization_weight), "quantization_weight")
    kind = hyper.pop("quantization", "logcosh")
    if kind not in QUANTIZATION_KINDS:
        raise InputError(f"quantization must be one of {list(QUANTIZATION_KINDS)}, got {kind!r}")
    unknown = sorted(set(hyper) - set(spec.defaults))
    if unknown:
        raise InputError(
            f"unknown hyper-parameter(s) {unknown} for loss {name!r}; it takes {sorted(spec.defaults)} "
            "plus quantization_weight and quantization"
        )
    sizes = {"bits": bits, "num_classes": num_classes} if spec.takes_sizes else {}
    loss = spec.cls(**sizes, **hyper)
    return CombinedLoss(loss, weight, kind) if weight > 0 else loss
