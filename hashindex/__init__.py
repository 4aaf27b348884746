"""hashindex: learned binary hash codes, FAISS binary indexes and exact reranking.

Serving (this package's top level) needs numpy, faiss and, for ONNX models, onnxruntime;
never torch. Training lives in :mod:`hashindex.train`, :mod:`hashindex.losses` and
:mod:`hashindex.models`, which import torch.
"""

from __future__ import annotations

from .codes import binarize, hamming_distances, pack_bits, unpack_bits
from .errors import (
    DuplicateIdError,
    HashIndexError,
    IndexFormatError,
    InputError,
    ModelMismatchError,
    NotFittedError,
    UnknownIdError,
)
from .hashers import ITQHasher, LinearHasher, PCASignHasher, SignHasher, make_hasher
from .index import HashIndex, SearchResult

__version__ = "0.1.0"

__all__ = [
    "HashIndex",
    "SearchResult",
    "OnnxEncoder",
    "LinearHasher",
    "SignHasher",
    "PCASignHasher",
    "ITQHasher",
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
]


def __getattr__(name: str):
    # onnxruntime is imported only when an ONNX encoder is used
    if name == "OnnxEncoder":
        from .encoder import OnnxEncoder

        return OnnxEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
