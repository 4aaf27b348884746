"""What the command groups share: argument types, output-path checks, loading rows, baselines.

Argument types turn a bad value into one argparse error line (exit 2) instead of a traceback
deep inside the library.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from hashindex.core.errors import InputError
from hashindex.evaluation.exact import unit_rows

INT32_MAX = 2**31 - 1
"""Largest -k / --radius / count FAISS takes (its ids and distances are 32-bit here)."""


def _int(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    if value > INT32_MAX:
        raise argparse.ArgumentTypeError(f"{value} is too large (at most {INT32_MAX:,})")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer in ``1 .. 2**31 - 1``."""
    return _int(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer in ``0 .. 2**31 - 1``."""
    return _int(text, 0, "a non-negative integer")


def int_list(text: str) -> tuple[int, ...]:
    """"256,128" -> (256, 128); "" or "none" -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def radius_list(text: str) -> tuple[int, ...]:
    """Comma-separated Hamming radii, each non-negative and within int32."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(non_negative_int(v) for v in text.split(","))


def float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def loss_param(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, true/false), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def out_dir(path: str | os.PathLike) -> Path:
    """An output directory: InputError when ``path`` names an existing file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"--out {p}: is a file, expected a directory")
    return p


def out_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output file, checked before any work: InputError when ``path`` names an existing
    directory or its folder does not exist (or is not a folder)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {p}: is a directory, expected a file")
    parent = p.parent
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise InputError(f"{flag} {p}: the folder {parent} {why}")
    return p


PLOT_FORMATS = (".png", ".pdf", ".svg")


def plot_file(path: str | os.PathLike, flag: str = "--plot") -> Path:
    """A figure to write: ``.png`` added when ``path`` has no suffix (the name printed is the
    file written), InputError for another format, a directory, or a parent that is a file
    (a missing folder is made when the figure is written)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {p}: is a directory, expected a file such as {p / 'curve.png'}")
    if not p.suffix:
        p = p.with_name(p.name + ".png")
    elif p.suffix.lower() not in PLOT_FORMATS:
        raise InputError(f"{flag} {p}: cannot write a {p.suffix!r} figure (use {', '.join(PLOT_FORMATS)})")
    if p.is_dir():
        raise InputError(f"{flag} {p}: is a directory, expected a file")
    blocker = next((a for a in p.parents if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(f"{flag} {p}: {blocker} is not a directory")
    return p


def load_rows(path: str | os.PathLike, what: str = "embeddings"):
    """:func:`~hashindex.training.data.load_embeddings`, InputError for a file with no rows."""
    from hashindex.training.data.embeddings import load_embeddings

    data = load_embeddings(path)
    if not len(data):
        raise InputError(f"{path}: the {what} file has no rows")
    return data


NPY_MAGIC = b"\x93NUMPY"
NPY_DTYPES = (np.float32, np.float16, np.float64)


def is_npy(path: str | os.PathLike) -> bool:
    """True when ``path`` starts as a ``.npy`` array does (whatever its name); False for
    anything else, or a file that cannot be read (the .npz loader then names the problem)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(NPY_MAGIC)) == NPY_MAGIC
    except OSError:
        return False


def map_rows(path: str | os.PathLike, what: str = "features") -> np.memmap:
    """A ``.npy`` of float rows ``[N, D]`` opened with ``np.load(path, mmap_mode="r")``: its
    header is read and checked, its rows are left on disk (read a chunk at a time by whoever
    indexes the map). Never unpickles.

    Raises:
        InputError: naming ``path``: object (pickled) or non-float dtype, not 2-D, no rows, no
            columns, a truncated file or an unreadable header.
    """
    path = os.fspath(path)
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # the header is parsed before anything is mapped
        if "Python objects" in str(e) or "pickle" in str(e):
            raise InputError(
                f"{path}: holds an object (pickled) array, which hashindex never loads; save the {what} "
                "as float32 rows [N, D] (np.save(path, x.astype(np.float32)))"
            ) from None
        if "mmap length" in str(e):
            raise InputError(f"{path}: truncated .npy (the file is shorter than its header says)") from None
        raise InputError(f"{path}: not a readable .npy of {what} ({e})") from None
    if rows.dtype.fields is not None or rows.dtype.type not in NPY_DTYPES:
        raise InputError(f"{path}: {what} must be float32, float16 or float64 rows [N, D], got dtype {rows.dtype}")
    if rows.ndim != 2:
        raise InputError(f"{path}: {what} must be a 2-D array [N, D], got shape {rows.shape}")
    if not rows.shape[0]:
        raise InputError(f"{path}: the {what} file has no rows")
    if not rows.shape[1]:
        raise InputError(f"{path}: the {what} rows have no columns (shape {rows.shape})")
    return rows


def read_npy_labels(path: str | os.PathLike, n: int, features: str) -> np.ndarray:
    """``int64 [n]`` labels from the ``.npy`` at ``path`` (``build --labels``): integers >= 0, or
    strings mapped to 0..C-1; one per row of ``features``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such labels file")
    if not is_npy(path):
        raise InputError(f"{path}: --labels takes a .npy array of labels (np.save(path, labels))")
    try:
        labels = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise InputError(f"{path}: holds an object (pickled) array, which hashindex never loads; "
                             "save the labels as integers or strings") from None  # fmt: skip
        raise InputError(f"{path}: not a readable .npy of labels ({e})") from None
    if labels.ndim == 1 and (np.issubdtype(labels.dtype, np.str_) or np.issubdtype(labels.dtype, np.bytes_)):
        labels = np.unique(labels.astype(str), return_inverse=True)[1].reshape(-1)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: --labels must be 1-D integers or strings, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != n:
        raise InputError(f"{path}: {labels.shape[0]:,} labels for the {n:,} rows of {features}")
    labels = labels.astype(np.int64)  # unsigned values beyond int64 turn negative and are refused
    if labels.size and labels.min() < 0:
        raise InputError(f"{path}: labels must be non-negative, got minimum {labels.min()}")
    return labels


_ROWS = re.compile(r"\brows \[([\d, ]+)\]")


def in_rows(e: Exception, what: str, lo: int, hi: int, n: int) -> Exception:
    """``e`` naming the user's rows: row numbers inside the chunk ``lo:hi`` are shifted to the
    file's, and a message without any names the chunk's range of the ``n`` rows."""
    text = str(e)
    shifted = _ROWS.sub(lambda m: "rows [" + ", ".join(str(lo + int(v)) for v in m.group(1).split(",")) + "]", text)
    if shifted != text or n == hi - lo:
        return type(e)(f"{what}: {shifted}")
    return type(e)(f"{what} rows {lo:,}..{hi - 1:,} of {n:,}: {text}")


def fit_baseline(kind: str, features: np.ndarray, bits: int | None):
    """An untrained hasher fitted as the (cosine) index fits one: on L2-normalised features.

    ``sign`` keeps the feature dimension as its code length (``bits`` ignored). ``eval`` and
    ``export`` both fit their baselines here, so a baseline is measured as it is exported.
    """
    from hashindex.serving.hashers import make_hasher

    dim = features.shape[1]
    return make_hasher(kind, dim, bits if kind != "sign" else dim).fit(unit_rows(features))
