"""Datasets for training and evaluation.

This package stays importable without torch (the serving path imports it): the npz loader,
the identity split and the P x K sampler are numpy only. The image-folder dataset needs torch
and Pillow and is imported from :mod:`hashindex.training.data.images` on first use.
"""

from __future__ import annotations

from hashindex.training.data.embeddings import EmbeddingSet, encode_labels, load_embeddings, save_embeddings
from hashindex.training.data.sampler import PKSampler
from hashindex.training.data.split import identity_folds, identity_split, sampled_identities, training_rows

__all__ = [
    "EmbeddingSet",
    "ImageFolderDataset",
    "Augment",
    "PKSampler",
    "encode_labels",
    "identity_folds",
    "identity_split",
    "load_embeddings",
    "sampled_identities",
    "save_embeddings",
    "training_rows",
]

_LAZY = {"ImageFolderDataset", "Augment"}


def __getattr__(name: str):
    # torch is imported only when an image dataset is actually asked for
    if name in _LAZY:
        from hashindex.training.data import images

        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
