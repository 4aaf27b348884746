"""Image folders for ``hashindex build --images DIR`` and ``hashindex search --images DIR``.

Serving-side (never imports torch): the folder is listed once, then decoded and run through the
index's fused image model a chunk at a time (:data:`CHUNK_IMAGES`), so memory stays bounded by one
chunk however large the folder is (all of LFW at once is 1.4 GB of float32 pixels), and one
progress bar counts images.

Layout: image files (``.jpg .jpeg .png .bmp .webp``) directly in ``DIR``, or one sub-folder per
identity (``DIR/<person>/<image>``, the layout ``hashindex train --images`` reads). In the second
layout, and only there, each image's label is its sub-folder's position among the sorted
sub-folders (as in training). Images are taken in sorted path order; an item's id is its
position in that order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hashindex.cli.common import in_rows
from hashindex.core.errors import HashIndexError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CHUNK_IMAGES = 256
"""Images decoded and encoded at a time."""


@dataclass(frozen=True)
class ImageFolder:
    """The images of a folder, in sorted order.

    Attributes:
        root: the folder.
        paths: image files, sorted (top-level files, or sub-folder by sub-folder).
        labels: ``int64 [N]`` sub-folder position of each image (per-identity layout), else None.
        names: the sub-folder names (per-identity layout), else None.
    """

    root: Path
    paths: list[Path]
    labels: np.ndarray | None = None
    names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)


def _images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())


def list_images(root: str | os.PathLike, flag: str = "--images") -> ImageFolder:
    """The images of ``root`` (see the module docstring); InputError when there are none."""
    root = Path(root)
    if not root.is_dir():
        why = "is not a folder" if root.exists() else "does not exist"
        raise InputError(f"{flag} {root}: {why} (expected a folder of images, or one sub-folder per person)")
    top = _images_in(root)
    subs = sorted(d for d in root.iterdir() if d.is_dir())
    nested = [(label, f) for label, d in enumerate(subs) for f in _images_in(d)]
    if top and nested:
        # a mixed folder: every image counts, none is labelled (an index labels all items or none)
        return ImageFolder(root, sorted(top + [f for _, f in nested]))
    if top:
        return ImageFolder(root, top)
    if not nested:
        raise InputError(f"{flag} {root}: no images ({' '.join(IMAGE_EXTENSIONS)}) in it or its sub-folders")
    return ImageFolder(root, [f for _, f in nested], np.array([lab for lab, _ in nested], np.int64), [d.name for d in subs])


def takes_images(hasher) -> bool:
    """Whether an index's hasher is an image model (its queries are images, not feature rows)."""
    return getattr(hasher, "kind", "features") == "images"


def check_image_model(encoder, flag: str) -> None:
    """An image model a HashIndex can hold: it must output reranking ``features`` (a fused model)."""
    if not takes_images(encoder):
        raise InputError(f"{flag} {encoder.path}: the model takes feature rows, not images (use --features / --queries)")
    if not getattr(encoder, "has_features", False):
        raise InputError(
            f"{flag} {encoder.path}: an image model without a 'features' output cannot rerank; export a fused "
            "model (hashindex export --backbone FACE.onnx --head MODEL --out face_hasher.onnx)"
        )


def stream_images(
    encoder, folder: ImageFolder, each: Callable[[np.ndarray, int, int], None], *, quiet: bool, desc: str
) -> None:
    """Decode ``folder`` a chunk at a time with ``encoder``'s preprocessing and call
    ``each(images float32 [n, 3, H, W], lo, hi)`` for rows ``lo:hi`` of the sorted list.

    A library error in a chunk names the images it was about (``rows lo..hi-1 of N``).
    """
    n = len(folder)
    with tqdm(total=n, desc=desc, unit="image", disable=quiet) as bar:
        for lo in range(0, n, CHUNK_IMAGES):
            hi = min(lo + CHUNK_IMAGES, n)
            images = encoder.load_images(folder.paths[lo:hi])
            try:
                each(images, lo, hi)
            except HashIndexError as e:
                raise in_rows(e, f"--images {folder.root}", lo, hi, n) from e
            bar.update(hi - lo)


__all__ = ["CHUNK_IMAGES", "ImageFolder", "check_image_model", "list_images", "stream_images", "takes_images"]
