"""Checkpoints and model directories of trained hash models (needs torch).

A checkpoint is one ``torch.save`` file holding only tensors and plain JSON-like values (model
spec, training config, metrics), so it loads with ``torch.load(weights_only=True)``. A model
directory (``hashindex train --out DIR``) holds ``model.pt`` plus readable ``config.json`` and
``metrics.json``. Every file is written atomically (:func:`hashindex.core.io.atomic_write`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from hashindex.core.errors import IndexFormatError
from hashindex.core.io import atomic_write, atomic_write_json, json_safe
from hashindex.training.config import TrainConfig
from hashindex.training.models import build_model, model_spec

CHECKPOINT_FORMAT = 1
MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.pt", "config.json", "metrics.json"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: TrainConfig | None, metrics: dict) -> Path:
    """``torch.save`` of the state_dict plus plain-JSON model spec, config and metrics.

    Everything in the file is tensors, str, numbers, lists and dicts, so it loads with
    ``torch.load(weights_only=True)``.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model_spec(model),
        "train_config": None if config is None else config.to_dict(),
        "metrics": json_safe(metrics),  # plain types only
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, TrainConfig | None, dict]:
    """Inverse of :func:`save_checkpoint`; ``path`` may be the file or a model directory.

    Returns ``(model in eval mode on the CPU, training config or None, metrics)``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / torch errors all mean "not our checkpoint"
        raise IndexFormatError(f"{path}: not a loadable hashindex checkpoint ({e})") from e
    if not isinstance(payload, dict) or not {"format", "model", "state_dict"} <= set(payload):
        raise IndexFormatError(f"{path}: not a hashindex checkpoint (missing format/model/state_dict)")
    if payload["format"] > CHECKPOINT_FORMAT:
        raise IndexFormatError(
            f"{path}: checkpoint format {payload['format']} is newer than this hashindex "
            f"understands ({CHECKPOINT_FORMAT}); upgrade hashindex"
        )
    model = build_model(payload["model"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise IndexFormatError(f"{path}: weights do not match the model spec ({e})") from e
    cfg = payload.get("train_config")
    return model.eval(), (None if cfg is None else TrainConfig.from_dict(cfg)), payload.get("metrics") or {}


def save_model_dir(out_dir: str | os.PathLike, model: nn.Module, config: TrainConfig | None, metrics: dict) -> Path:
    """Write ``model.pt``, ``config.json`` (model spec + training config), ``metrics.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(out / MODEL_FILE, model, config, metrics)
    atomic_write_json(out / CONFIG_FILE, {"model": model_spec(model), "train": None if config is None else config.to_dict()})
    atomic_write_json(out / METRICS_FILE, metrics)
    return ckpt
