"""Exceptions raised by hashindex.

Every error derives from :class:`HashIndexError`, and the concrete classes also derive from
the builtin a caller would naturally catch (``ValueError``, ``KeyError``, ``IOError``), so
``except ValueError`` keeps working in code that does not know hashindex.
"""

from __future__ import annotations


class HashIndexError(Exception):
    """Base class of every hashindex error."""


class InputError(HashIndexError, ValueError):
    """Bad array input: wrong shape, dimension, dtype, NaN/inf, bad k or radius."""


class DuplicateIdError(HashIndexError, ValueError):
    """An id being added is already in the index, or repeats within the batch."""


class UnknownIdError(HashIndexError, KeyError):
    """An id asked for (get_features / remove) is not in the index."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class NotFittedError(HashIndexError, RuntimeError):
    """A hasher was used before ``fit``."""


class IndexFormatError(HashIndexError, IOError):
    """An index or model file is corrupt, truncated, foreign, or from a newer format."""


class SavePathError(IndexFormatError):
    """A save cannot use its target path: not a path, an invalid or too long name, a parent that
    is not a directory, or a path holding something save does not own (it replaces nothing)."""


class ModelMismatchError(IndexFormatError):
    """A model's SHA-256 or bit count differs from what the index was built with."""


class UnsupportedError(HashIndexError, NotImplementedError):
    """An option or method this index backend cannot honour (the message names the backend)."""

