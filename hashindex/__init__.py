"""hashindex: learned binary hash codes, FAISS binary indexes and exact reranking.

Layers, each importing only from those above it in this list (tests/test_layers.py checks it):

- ``core``: codes and bit order, errors, input checks, the ONNX model contract;
- ``serving``: the index front, the FAISS and Milvus indexes, candidate stages, rerank, stores,
  persistence, hashers and the ONNX encoder (numpy + faiss + onnxruntime, never torch);
- ``evaluation``: metrics, reports and plots;
- ``training``: config, loop, checkpoints, recipes, losses, models, datasets (torch);
- ``export``: torch models and hashers to ONNX;
- ``cli``: the ``hashindex`` command and the demo.
"""

from __future__ import annotations

from hashindex.core.codes import binarize, hamming_distances, pack_bits, unpack_bits
from hashindex.core.errors import (
    DuplicateIdError,
    HashIndexError,
    IndexFormatError,
    InputError,
    ModelMismatchError,
    NotFittedError,
    SavePathError,
    UnknownIdError,
)
from hashindex.serving.hashers import ITQHasher, LinearHasher, PCASignHasher, ResidualHasher, SignHasher, make_hasher
from hashindex.serving.index import HashIndex, SearchResult
from hashindex import _moved

_moved.install()

__version__ = "0.2.0"  # the one place the version is written: pyproject.toml reads it, CHANGELOG.md lists it

__all__ = [
    "HashIndex",
    "SearchResult",
    "OnnxEncoder",
    "LinearHasher",
    "SignHasher",
    "PCASignHasher",
    "ITQHasher",
    "ResidualHasher",
    "make_hasher",
    "pack_bits",
    "unpack_bits",
    "binarize",
    "hamming_distances",
    "HashIndexError",
    "InputError",
    "DuplicateIdError",
    "UnknownIdError",
    "NotFittedError",
    "IndexFormatError",
    "ModelMismatchError",
    "SavePathError",
]


# imported on first use: onnxruntime only with an ONNX encoder, torch only with training
_LAZY = {
    "OnnxEncoder": ("hashindex.serving.encoder", "OnnxEncoder"),
    "MilvusHashIndex": ("hashindex.serving.milvus", "MilvusHashIndex"),
    "hashers": ("hashindex.serving.hashers", None),
    "losses": ("hashindex.training.losses", None),
    "models": ("hashindex.training.models", None),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
