"""Row storage that grows by appending and shrinks by compaction (numpy only).

The index keeps three aligned row arrays (codes, ids, features); row position is the
FAISS sequential id. ``RowStore`` gives them amortised O(1) appends (capacity doubling) and
lets a loaded, memory-mapped array be used in place until the first mutation.
"""

from __future__ import annotations

import numpy as np


class RowStore:
    """An ``[n, *row_shape]`` array with append / take / keep.

    ``data`` may be a read-only memory map (from ``np.load(mmap_mode="r")``): it is used as is
    for reads and copied into memory on the first append or compaction.
    """

    def __init__(self, row_shape: tuple[int, ...], dtype: np.dtype, data: np.ndarray | None = None):
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        if data is None:
            data = np.empty((0, *self.row_shape), dtype=self.dtype)
        self._buf = data
        self._n = data.shape[0]

    def __len__(self) -> int:
        return self._n

    @property
    def array(self) -> np.ndarray:
        """A view of the ``n`` live rows (no copy)."""
        return self._buf[: self._n]

    @property
    def is_mmap(self) -> bool:
        return isinstance(self._buf, np.memmap) or isinstance(getattr(self._buf, "base", None), np.memmap)

    @property
    def nbytes(self) -> int:
        return self._n * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=self.dtype)
        need = self._n + rows.shape[0]
        if need > self._buf.shape[0] or not self._buf.flags.writeable or self.is_mmap:
            capacity = max(need, 2 * self._n, 1024)
            grown = np.empty((capacity, *self.row_shape), dtype=self.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : need] = rows
        self._n = need

    def take(self, positions: np.ndarray) -> np.ndarray:
        return self._buf[: self._n][positions]

    def keep(self, mask: np.ndarray) -> None:
        """Keep only rows where ``mask`` is true, preserving order."""
        kept = np.ascontiguousarray(self.array[mask])
        self._buf = kept
        self._n = kept.shape[0]
