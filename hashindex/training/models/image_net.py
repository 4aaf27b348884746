"""ResNet-18 + FC + tanh image hashing network.

The architecture of softmax-loss deep hashing for retrieval (a pretrained ResNet-18 whose
classifier is replaced by a K-unit FC layer and tanh; bit i = ``h_i > 0``). torchvision's
``resnet18`` is used when torchvision imports; otherwise the in-package copy in
:mod:`hashindex.training.models.resnet`, which has the same ``state_dict`` keys and shapes, so the same
pretrained weight files load into either.

Two options make it trainable on a CPU budget: ``width`` (the first stage's channels; 64 is
torchvision's ResNet-18, whose weight files only load at 64) and ``work_size``: the images
arrive at the preprocessing's size (e.g. 112x112 face crops, the same input a teacher model
takes) and are resized (bilinear) inside the network to ``work_size`` before the backbone, so
the exported graph keeps the dataset's input contract while the convolutions run small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from hashindex.core.preprocess import FACE_PREPROCESSING, ImagePreprocessing
from hashindex.core.errors import InputError
from hashindex.core.onnx_contract import InputSpec
from hashindex.core.bits import check_bits

BACKBONES = ("resnet18",)
FEATURE_DIMS = {"resnet18": 512}


def resnet18_backbone(width: int = 64) -> nn.Module:
    """A ResNet-18 (torchvision's at width 64 when it imports, else the in-package copy), random weights."""
    if width == 64:
        try:  # torchvision can be present yet broken (ABI mismatch with torch), hence the broad except
            from torchvision.models import resnet18

            return resnet18(weights=None)
        except Exception:
            pass
    from hashindex.training.models.resnet import resnet18

    return resnet18(width=width)


@dataclass(frozen=True)
class ImageHashNetConfig:
    bits: int
    backbone: str = "resnet18"
    preprocess: ImagePreprocessing = FACE_PREPROCESSING
    width: int = 64
    work_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.backbone not in BACKBONES:
            raise InputError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if isinstance(self.width, bool) or int(self.width) < 1:
            raise InputError(f"width must be a positive integer, got {self.width!r}")
        if self.work_size is not None:
            size = tuple(int(v) for v in self.work_size)
            if len(size) != 2 or min(size) < 8:
                raise InputError(f"work_size must be (height, width) >= 8, got {self.work_size!r}")
            object.__setattr__(self, "work_size", None if size == tuple(self.preprocess.size) else size)

    @property
    def feature_dim(self) -> int:
        return 8 * int(self.width)

    def to_dict(self) -> dict:
        return {"bits": self.bits, "backbone": self.backbone, "preprocess": self.preprocess.to_dict(),
                "width": int(self.width), "work_size": None if self.work_size is None else list(self.work_size)}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageHashNetConfig":
        work = d.get("work_size")
        return cls(d["bits"], d.get("backbone", "resnet18"), ImagePreprocessing.from_dict(d["preprocess"]),
                   int(d.get("width", 64)), None if work is None else tuple(work))


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load a torchvision-format ``state_dict`` file (``fc.*`` ignored) with weights_only=True."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise InputError(f"{path}: not a ResNet-18 state_dict ({e})") from e
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise InputError(f"{path}: not a ResNet-18 state_dict (missing {missing[:3]}, unexpected {unexpected[:3]})")


def check_backbone_weights(path: str | os.PathLike, width: int = 64) -> None:
    """:class:`InputError` unless ``path`` is a file that loads into a ResNet-18 of ``width``."""
    if not os.path.isfile(path):
        raise InputError(f"backbone weights {path}: no such file")
    load_backbone_weights(resnet18_backbone(width), path)


class ImageHashNet(nn.Module):
    """``images float32 [N, 3, H, W]`` -> continuous code ``float32 [N, K]`` in ``[-1, 1]``."""

    kind = "image_hash_net"

    def __init__(self, config: ImageHashNetConfig, pretrained_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = resnet18_backbone(config.width)
        if pretrained_path is not None:
            load_backbone_weights(self.backbone, pretrained_path)
        self.backbone.fc = nn.Identity()
        self.hash_fc = nn.Linear(config.feature_dim, config.bits)

    @classmethod
    def create(
        cls,
        bits: int,
        backbone: str = "resnet18",
        pretrained_path: str | os.PathLike | None = None,
        preprocess: ImagePreprocessing = FACE_PREPROCESSING,
        width: int = 64,
        work_size: tuple[int, int] | None = None,
    ) -> "ImageHashNet":
        return cls(ImageHashNetConfig(bits, backbone, preprocess, width, work_size), pretrained_path)

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def in_dim(self) -> int:
        """Dimension of the backbone feature (the reranking feature of a fused model)."""
        return self.config.feature_dim

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.images(self.config.preprocess)

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw backbone output ``[N, 8 * width]`` (after the internal resize, if any)."""
        if self.config.work_size is not None:
            images = F.interpolate(images, size=self.config.work_size, mode="bilinear", align_corners=False)
        return self.backbone(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised backbone features ``float32 [N, 8 * width]`` (for exact reranking)."""
        return F.normalize(self.backbone_features(images), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.hash_fc(self.backbone_features(images)))
