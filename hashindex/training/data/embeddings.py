"""Embedding datasets stored as ``.npz`` (numpy only, no pickle).

File layout (the same keys as the LFW development split ``lfw_mfn128_dev.npz``):

==============  =====================================================================
``embeddings``  float ``[N, D]`` feature vectors (required)
``labels``      ``[N]`` identity per row: integers, or strings (mapped to 0..C-1)
``names``       ``[N]`` identity name per row (optional; names the integer labels)
``ids``         ``[N]`` integer id per row (optional, unique)
``paths``       ``[N]`` source file per row (optional)
==============  =====================================================================
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

from hashindex.core.errors import IndexFormatError, InputError
from hashindex.core.validation import check_features, check_ids, check_int_vector


@dataclass(frozen=True)
class EmbeddingSet:
    """Features with their identities.

    Attributes:
        features: ``float32 [N, D]``.
        labels: ``int64 [N]`` identity index in ``0..C-1``, or None when the file has none.
        label_names: ``str [C]``: ``label_names[c]`` names identity ``c`` (None when unknown).
        ids: ``int64 [N]`` unique row ids, or None.
        paths: ``str [N]`` source file of each row, or None.
    """

    features: np.ndarray
    labels: np.ndarray | None = None
    label_names: np.ndarray | None = None
    ids: np.ndarray | None = None
    paths: np.ndarray | None = None

    def __post_init__(self) -> None:
        x = check_features(self.features, name="embeddings")
        object.__setattr__(self, "features", x)
        n = x.shape[0]
        if self.labels is not None:
            object.__setattr__(self, "labels", _check_int_labels(self.labels, n))
        if self.ids is not None:
            ids = check_ids(self.ids, n)
            if np.unique(ids).size != n:
                raise InputError("ids must be unique")
            object.__setattr__(self, "ids", ids)
        for name in ("label_names", "paths"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value).astype(str))
        if self.paths is not None and self.paths.shape != (n,):
            raise InputError(f"paths must have shape ({n},), got {self.paths.shape}")
        if self.label_names is not None and self.labels is not None and n:
            if self.label_names.ndim != 1 or self.label_names.shape[0] <= self.labels.max():
                raise InputError("label_names must be 1-D with one name per label value")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def num_classes(self) -> int:
        """Number of label values ``C`` (max label + 1; 0 without labels)."""
        if self.labels is None or not self.labels.size:
            return 0
        return int(self.labels.max()) + 1

    def subset(self, index: np.ndarray) -> "EmbeddingSet":
        """Rows ``index`` (labels keep their values, so names stay valid)."""
        index = np.asarray(index, dtype=np.int64)
        take = lambda a: None if a is None else a[index]  # noqa: E731
        return EmbeddingSet(
            self.features[index], take(self.labels), self.label_names, take(self.ids), take(self.paths)
        )


def _check_int_labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = check_int_vector(labels, n, "labels")
    if labels.size and labels.min() < 0:
        raise InputError(f"labels must be non-negative, got minimum {labels.min()}")
    return labels


def encode_labels(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary labels ``[N]`` to ``(int64 [N] in 0..C-1, sorted unique values [C])``."""
    names, labels = np.unique(np.asarray(values), return_inverse=True)
    return labels.astype(np.int64).reshape(-1), names


def _names_for_labels(labels: np.ndarray, names: np.ndarray, path: str) -> np.ndarray:
    """``label_names [C]`` from per-row names, checking each label has exactly one name."""
    c = int(labels.max()) + 1 if labels.size else 0
    out = np.full(c, "", dtype=names.dtype)
    out[labels] = names
    if not np.array_equal(out[labels], names):
        raise IndexFormatError(f"{path}: 'names' disagree with 'labels' (a label has two names)")
    return out


def _check_magic(path: str) -> None:
    """IndexFormatError unless the file starts as a zip (.npz) or a .npy array does."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return  # np.load reports it
    if not (head.startswith(b"PK") or head == b"\x93NUMPY"):
        raise IndexFormatError(
            f"{path}: not an .npz (or .npy) file of features; expected an .npz holding an 'embeddings' "
            "array [N, D] (np.savez(path, embeddings=x))"
        )


def load_embeddings(path: str | os.PathLike) -> EmbeddingSet:
    """Read an embedding ``.npz`` (see module docstring); raise clear errors on bad files.

    Raises:
        FileNotFoundError: no such file.
        IndexFormatError: not an npz, needs pickle, missing ``embeddings``, or inconsistent arrays.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such embeddings file")
    _check_magic(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise IndexFormatError(f"{path}: a single .npy array, expected an .npz with 'embeddings'")
        with z:
            arrays = {key: z[key] for key in z.files}
    except IndexFormatError:
        raise
    except ValueError as e:
        if "pickle" in str(e):  # numpy's advice to load it unsafely is not ours to repeat
            raise IndexFormatError(
                f"{path}: holds object (pickled) arrays, which hashindex never loads; save the features "
                "as a numeric array (np.savez(path, embeddings=x.astype(np.float32)))"
            ) from e
        raise IndexFormatError(f"{path}: not a readable .npz of features ({e})") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise IndexFormatError(f"{path}: not a readable .npz of features ({e})") from e

    if "embeddings" not in arrays:
        raise IndexFormatError(f"{path}: no 'embeddings' array (found: {', '.join(sorted(arrays)) or 'none'})")
    try:
        features = check_features(arrays["embeddings"], name=f"{path}: embeddings")
        n = features.shape[0]
        for key in ("labels", "names", "ids", "paths"):
            if key in arrays and arrays[key].shape != (n,):
                raise InputError(f"{path}: '{key}' has shape {arrays[key].shape}, expected ({n},)")

        label_names = None
        labels = arrays.get("labels")
        if labels is not None and not np.issubdtype(labels.dtype, np.integer):
            if not (np.issubdtype(labels.dtype, np.str_) or np.issubdtype(labels.dtype, np.bytes_)):
                raise InputError(f"{path}: labels must be integers or strings, got dtype {labels.dtype}")
            labels, label_names = encode_labels(labels.astype(str))
        elif labels is None and "names" in arrays:
            labels, label_names = encode_labels(arrays["names"].astype(str))
        elif labels is not None:
            labels = _check_int_labels(labels, n)
            if "names" in arrays:
                label_names = _names_for_labels(labels, arrays["names"].astype(str), path)
        return EmbeddingSet(features, labels, label_names, arrays.get("ids"), arrays.get("paths"))
    except InputError as e:
        raise IndexFormatError(f"{path}: {e}" if not str(e).startswith(path) else str(e)) from e


def save_embeddings(path: str | os.PathLike, data: EmbeddingSet) -> None:
    """Write ``data`` in the layout :func:`load_embeddings` reads (no pickle)."""
    arrays: dict[str, np.ndarray] = {"embeddings": data.features}
    if data.labels is not None:
        arrays["labels"] = data.labels
        if data.label_names is not None:
            arrays["names"] = data.label_names[data.labels]
    if data.ids is not None:
        arrays["ids"] = data.ids
    if data.paths is not None:
        arrays["paths"] = data.paths
    with open(path, "wb") as f:
        np.savez(f, **arrays)
