"""Hash head over embeddings: MLP + tanh (the continuous relaxation of the sign).

``h = tanh(f(x))`` with ``f`` an MLP (or one linear layer); bit i = ``h_i > 0``
(ARCHITECTURE.md §1). ``tanh`` is the standard relaxation in deep hashing (e.g. HashNet,
Cao et al. 2017; CSQ, Yuan et al. 2020) and keeps codes in ``[-1, 1]^K``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from hashindex.core.bits import check_bits
from hashindex.core.errors import InputError
from hashindex.core.io import json_safe
from hashindex.core.onnx_contract import InputSpec


@dataclass(frozen=True)
class HashHeadConfig:
    """Args:
    in_dim: embedding dimension D.
    bits: code length K (multiple of 8).
    hidden: hidden layer widths; ``()`` is a single linear layer (a learned LinearHasher).
    dropout: dropout before each hidden layer's activation output (0 disables).
    batch_norm: BatchNorm1d after each hidden linear layer.
    """

    in_dim: int
    bits: int
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.in_dim, bool) or int(self.in_dim) <= 0:
            raise InputError(f"in_dim must be positive, got {self.in_dim!r}")
        check_bits(self.bits)
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h <= 0 for h in self.hidden):
            raise InputError(f"hidden sizes must be positive, got {self.hidden}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return json_safe(asdict(self))  # tuples as JSON lists

    @classmethod
    def from_dict(cls, d: dict) -> "HashHeadConfig":
        return cls(**{**d, "hidden": tuple(d.get("hidden", ()))})


class HashHead(nn.Module):
    """``features float32 [N, D]`` -> continuous code ``float32 [N, K]`` in ``[-1, 1]``."""

    kind = "hash_head"

    def __init__(self, config: HashHeadConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_dim
        for h in config.hidden:
            layers.append(nn.Linear(width, h))
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = h
        layers.append(nn.Linear(width, config.bits))
        self.mlp = nn.Sequential(*layers)

    @classmethod
    def create(cls, in_dim: int, bits: int, hidden: tuple[int, ...] = (), **kwargs) -> "HashHead":
        return cls(HashHeadConfig(in_dim, bits, tuple(hidden), **kwargs))

    @classmethod
    def from_linear(cls, weight, bias, scale: float = 1.0) -> "HashHead":
        """Linear head ``tanh(scale * (x @ W.T + b))`` with the same bits as a LinearHasher.

        ``scale > 0`` never changes a sign, so codes equal ``LinearHasher(W, b)``'s exactly;
        it sets how saturated tanh starts (useful when fine-tuning from ITQ / PCA).

        Args:
            weight: ``[K, D]`` (e.g. ``LinearHasher.weight``).
            bias: ``[K]``.
        """
        if scale <= 0:
            raise InputError(f"scale must be positive (a negative one flips bits), got {scale}")
        w = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(bias), dtype=torch.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise InputError(f"weight must be [K, D] and bias [K], got {tuple(w.shape)} and {tuple(b.shape)}")
        head = cls(HashHeadConfig(in_dim=w.shape[1], bits=w.shape[0]))
        with torch.no_grad():
            head.mlp[-1].weight.copy_(w * scale)
            head.mlp[-1].bias.copy_(b * scale)
        return head

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.features(self.config.in_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mlp(features))
