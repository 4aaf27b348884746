"""Image preprocessing for image-input models (numpy; Pillow imported only when loading files).

An exported image model records its :class:`ImagePreprocessing` in the ``hashindex.input``
metadata, so any consumer can rebuild the exact input tensor:

    decode as RGB -> resize to ``size`` (bilinear, only when needed) -> reorder channels
    (``channel_order``) -> ``(x - mean) / std`` per channel on the 0..255 scale -> NCHW float32.

:data:`FACE_PREPROCESSING` is the MobileFaceNet recipe of the LFW development split
(112x112, BGR, ``(x - 127.5) / 127.5``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from hashindex.core.errors import InputError


@dataclass(frozen=True)
class ImagePreprocessing:
    """How raw 8-bit images become the model's ``float32 [N, 3, H, W]`` input.

    Attributes:
        size: (height, width) of the model input.
        channel_order: "RGB" or "BGR", the order of the 3 channels fed to the model.
        mean: per-channel value subtracted (in ``channel_order``, 0..255 scale).
        std: per-channel divisor applied after subtracting ``mean``.
        layout: memory layout of the tensor; only "NCHW" is produced.
    """

    size: tuple[int, int]
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise InputError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.layout != "NCHW":
            raise InputError(f"only the NCHW layout is supported, got {self.layout!r}")
        if len(self.size) != 2 or min(self.size) <= 0:
            raise InputError(f"size must be (height, width) > 0, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError("mean and std need 3 values each, std > 0")

    def to_dict(self) -> dict:
        return {"type": "image", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "ImagePreprocessing":
        """Inverse of :meth:`to_dict`; raises InputError on unknown or missing fields."""
        fields = {k: v for k, v in d.items() if k != "type"}
        try:
            return cls(
                size=tuple(int(v) for v in fields.pop("size")),
                channel_order=str(fields.pop("channel_order")),
                mean=tuple(float(v) for v in fields.pop("mean")),
                std=tuple(float(v) for v in fields.pop("std")),
                layout=str(fields.pop("layout", "NCHW")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"bad image preprocessing description {d!r}: {e}") from e


FACE_PREPROCESSING = ImagePreprocessing(
    size=(112, 112), channel_order="BGR", mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)
)


def normalize_images(rgb: np.ndarray, prep: ImagePreprocessing) -> np.ndarray:
    """``uint8 [N, H, W, 3]`` RGB -> model input ``float32 [N, 3, H, W]`` per ``prep``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise InputError(f"images must be [N, H, W, 3] RGB, got shape {rgb.shape}")
    if tuple(rgb.shape[1:3]) != tuple(prep.size):
        raise InputError(f"images are {rgb.shape[1:3]}, the model expects {tuple(prep.size)}")
    x = rgb.astype(np.float32)
    if prep.channel_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_images(paths: Sequence[str | os.PathLike], prep: ImagePreprocessing, progress: bool = False) -> np.ndarray:
    """Decode image files and preprocess them: ``float32 [N, 3, H, W]``.

    Images of another size are resized with bilinear filtering (as the LFW crops were made).
    ``progress``: a tqdm bar counting the images decoded.
    """
    try:
        from PIL import Image
    except ImportError as e:  # Pillow is only in the train extra
        raise ImportError("loading images needs Pillow: pip install pillow") from e
    height, width = prep.size
    batch = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    items = enumerate(paths)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(paths), desc="loading images", unit="image")
    for i, path in items:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (width, height):
                    img = img.resize((width, height), Image.BILINEAR)
                batch[i] = np.asarray(img)
        except OSError as e:
            raise InputError(f"cannot read image {path}: {e}") from e
    return normalize_images(batch, prep)


def load_face_images(paths: Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
    """Face crops -> MobileFaceNet input ``float32 [N, 3, 112, 112]`` (:data:`FACE_PREPROCESSING`)."""
    return load_images(paths, FACE_PREPROCESSING, progress)
