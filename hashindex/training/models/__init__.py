"""Hashing networks: a head over embeddings and a ResNet-18 image network (needs torch).

Every model has ``.kind``, ``.config`` (a dataclass with ``to_dict`` / ``from_dict``),
``.bits``, ``.in_dim`` and ``.input_spec``, so :func:`model_spec` / :func:`build_model`
rebuild it from plain JSON (checkpoints store that, never pickled objects).
"""

from __future__ import annotations

from torch import nn

from hashindex.core.errors import IndexFormatError
from hashindex.core.onnx_contract import InputSpec
from hashindex.training.models.head import HashHead, HashHeadConfig
from hashindex.training.models.image_net import ImageHashNet, ImageHashNetConfig

__all__ = [
    "HashHead",
    "HashHeadConfig",
    "ImageHashNet",
    "ImageHashNetConfig",
    "InputSpec",
    "build_model",
    "model_spec",
]

_MODELS = {cls.kind: (cls, cfg) for cls, cfg in ((HashHead, HashHeadConfig), (ImageHashNet, ImageHashNetConfig))}


def model_spec(model: nn.Module) -> dict:
    """``{"kind": ..., "config": {...}}``: JSON-able description that rebuilds ``model``."""
    return {"kind": model.kind, "config": model.config.to_dict()}


def build_model(spec: dict) -> nn.Module:
    """Inverse of :func:`model_spec` (weights randomly initialised)."""
    try:
        cls, cfg = _MODELS[spec["kind"]]
    except KeyError as e:
        raise IndexFormatError(f"unknown model kind {spec.get('kind')!r}; known: {', '.join(_MODELS)}") from e
    return cls(cfg.from_dict(spec["config"]))
