"""Image-folder dataset: one sub-folder per identity, decoded with Pillow (needs torch).

Preprocessing follows the network it feeds, so it is data
(:class:`hashindex.core.preprocess.ImagePreprocessing`, the same description the exported model
records): resize to ``size``, order the channels (MobileFaceNet wants BGR), then
``(pixel - mean) / std`` with pixels in 0..255. Training-time augmentation
(:class:`Augment`) is a random square-ish crop keeping a ``crop_scale`` fraction of each side,
resized back to ``size``, and a horizontal flip; it draws from torch's RNG so
``torch.manual_seed`` and DataLoader worker seeding make it reproducible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hashindex.core.errors import InputError
from hashindex.core.preprocess import FACE_PREPROCESSING, ImagePreprocessing, normalize_images

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


#: torchvision ImageNet weights: RGB, mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) x 255.
IMAGENET_PREPROCESSING = ImagePreprocessing(
    size=(224, 224), channel_order="RGB", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)
)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation; ``Augment(crop_scale=(1, 1), hflip=0)`` is the identity."""

    crop_scale: tuple[float, float] = (0.85, 1.0)  # fraction of each side kept
    hflip: float = 0.5  # probability of a horizontal flip

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise InputError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 <= self.hflip <= 1:
            raise InputError(f"hflip must be a probability, got {self.hflip}")


def load_image(
    path: str | os.PathLike, pre: ImagePreprocessing, augment: Augment | None = None
) -> np.ndarray:
    """Decode, (augment,) resize and normalise one image: ``float32 [3, H, W]``."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if augment is not None:
                im = _augment(im, augment)
            h, w = pre.size
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            return normalize_images(np.asarray(im)[None], pre)[0]
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e}") from e


def _augment(im: Image.Image, aug: Augment) -> Image.Image:
    lo, hi = aug.crop_scale
    if lo < 1:
        w, h = im.size
        s = lo + (hi - lo) * float(torch.rand(()))
        cw, ch = max(1, round(w * s)), max(1, round(h * s))
        x0 = int(torch.randint(0, w - cw + 1, ()))
        y0 = int(torch.randint(0, h - ch + 1, ()))
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
    if aug.hflip and float(torch.rand(())) < aug.hflip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return im


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], np.ndarray, list[str]]:
    """``root/<identity>/<image>`` -> (paths, ``int64`` labels, identity names sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    names = sorted(d.name for d in root.iterdir() if d.is_dir())
    paths, labels = [], []
    for label, name in enumerate(names):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(f))
                labels.append(label)
    if not paths:
        raise InputError(f"{root}: no images found in per-identity sub-folders ({', '.join(IMAGE_EXTENSIONS)})")
    return paths, np.asarray(labels, dtype=np.int64), names


class ImageFolderDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``(image float32 [3, H, W], label int)``.

    Args:
        paths: image files.
        labels: ``int [N]`` identity per image.
        class_names: names of the label values.
        preprocess: resize / channel order / normalisation.
        augment: training-time augmentation, or None for evaluation.
    """

    def __init__(
        self,
        paths: list[str],
        labels: np.ndarray,
        class_names: list[str] | None = None,
        preprocess: ImagePreprocessing = FACE_PREPROCESSING,
        augment: Augment | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(paths),):
            raise InputError(f"labels must have shape ({len(paths)},), got {labels.shape}")
        self.paths = list(paths)
        self.labels = labels
        self.class_names = class_names
        self.preprocess = preprocess
        self.augment = augment

    @classmethod
    def from_folder(
        cls, root: str | os.PathLike, preprocess: ImagePreprocessing = FACE_PREPROCESSING, augment: Augment | None = None
    ) -> "ImageFolderDataset":
        paths, labels, names = scan_image_folder(root)
        return cls(paths, labels, names, preprocess, augment)

    def subset(self, index: np.ndarray, augment: Augment | None = None) -> "ImageFolderDataset":
        """Rows ``index`` (e.g. one side of :func:`identity_split`), with their own augmentation."""
        index = np.asarray(index, dtype=np.int64)
        return ImageFolderDataset(
            [self.paths[i] for i in index], self.labels[index], self.class_names, self.preprocess, augment
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = load_image(self.paths[i], self.preprocess, self.augment)
        return torch.from_numpy(x), int(self.labels[i])
