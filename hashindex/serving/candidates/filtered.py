"""Candidate generation restricted to an allow-list of row positions (HashIndex filters).

FAISS 1.15 takes an ``IDSelector`` in ``SearchParameters`` for ``IndexBinaryFlat`` k-NN and range
searches (checked: the counting k-NN used by FlatCandidates honours it too); the selector here is
an ``IDSelectorBitmap`` over row positions, which are the flat index's sequential ids. A small
allow-list is cheaper scanned on its own: its codes are copied into a flat index of their own
(``SUBSET_MAX_FRACTION``), exact the same way. The
hash / multi-hash indexes and fast-scan PQ refuse search parameters ("search params not
supported for this index"), so a filtered Hamming search always runs on the flat index, and a
filtered asymmetric search scores the allowed rows' bits exactly in numpy
(:func:`asymmetric_knn_rows`) instead of fast-scan's 8-bit tables.
"""

from __future__ import annotations

from typing import Callable

import faiss
import numpy as np

from hashindex.serving.candidates.asymmetric import code_signs
from hashindex.serving.candidates.binary import FlatCandidates
from hashindex.serving.candidates.csr import Candidates, from_csr

_CHUNK = 65_536  # rows expanded to {-1, +1} floats at a time


# When to scan a copy of the allowed codes (a flat index of their own) rather than every row
# through the selector: the selector still visits every row and a random mask costs branch
# mispredictions, while the copy costs one gather per search call (both measured in
# benchmarks/README.md). So: always for
# a list of at most SUBSET_MAX_FRACTION of the rows, and up to SUBSET_BATCH_FRACTION for a batch
# of at least SUBSET_BATCH_QUERIES queries, over which the gather is shared.
SUBSET_MAX_FRACTION = 0.25
SUBSET_BATCH_FRACTION = 0.9
SUBSET_BATCH_QUERIES = 8


class AllowedRows:
    """The row positions a filtered search may return: a boolean mask, scanned either as a
    FAISS selector over the full flat index or as a flat index of the allowed codes alone.
    ``flat()``: the full index's flat scan (HashIndex builds it on first use: asked for only when
    the selector is used)."""

    def __init__(self, mask: np.ndarray, flat: Callable[[], FlatCandidates], codes: np.ndarray, bits: int, nq: int = 1):
        self.flat = flat
        self.mask = np.asarray(mask, dtype=bool)
        self.count = int(self.mask.sum())
        self.positions = np.flatnonzero(self.mask)
        self.subset: faiss.IndexBinaryFlat | None = None
        self.params: faiss.SearchParameters | None = None
        n = self.mask.size
        if self.count <= SUBSET_MAX_FRACTION * n or (nq >= SUBSET_BATCH_QUERIES and self.count <= SUBSET_BATCH_FRACTION * n):
            self.subset = faiss.IndexBinaryFlat(bits)
            self.subset.use_heap = False  # as FlatCandidates
            if self.count:
                self.subset.add(np.ascontiguousarray(codes[self.positions]))
        else:
            self._bitmap = np.packbits(self.mask, bitorder="little")  # bit i of byte j: position 8j + i
            self._selector = faiss.IDSelectorBitmap(self.mask.size, faiss.swig_ptr(self._bitmap))
            self.params = faiss.SearchParameters(sel=self._selector)

    def range(self, queries: np.ndarray, radius: int) -> Candidates:
        """Exact range search (Hamming <= radius) among the allowed rows."""
        if self.subset is None:
            return self.flat().range(queries, radius, self.params)
        lims, dist, pos = self.subset.range_search(queries, radius + 1)
        return from_csr(lims, self.positions[pos], dist)

    def knn(self, queries: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        """The c Hamming-nearest allowed positions ``[nq, c]`` (-1 padded) and distances."""
        if self.subset is None:
            return self.flat().knn(queries, c, self.params)
        dist, pos = self.subset.search(queries, c)
        return np.where(pos >= 0, self.positions[np.maximum(pos, 0)], -1), dist.astype(np.int32)


def asymmetric_knn_rows(z: np.ndarray, codes: np.ndarray, positions: np.ndarray, c: int) -> np.ndarray:
    """The ``c`` best of ``positions`` by exact asymmetric score ``<z, 2b - 1>`` (best first, ties
    by position): ``int64 [nq, c]``, -1 padded."""
    nq = z.shape[0]
    c = min(c, positions.size)
    if c <= 0:
        return np.full((nq, 0), -1, np.int64)
    best_pos = np.full((nq, 0), -1, np.int64)
    best_key = np.empty((nq, 0), np.float32)
    for s in range(0, positions.size, _CHUNK):
        chunk = positions[s : s + _CHUNK]
        key = -(z @ code_signs(codes[chunk]).T)  # lower is better
        key = np.concatenate([best_key, key.astype(np.float32)], axis=1)
        pos = np.concatenate([best_pos, np.broadcast_to(chunk, (nq, chunk.size))], axis=1)
        if key.shape[1] > c:
            keep = np.argpartition(key, c - 1, axis=1)[:, :c]
            key, pos = np.take_along_axis(key, keep, 1), np.take_along_axis(pos, keep, 1)
        best_key, best_pos = key, pos
    order = np.lexsort((best_pos, best_key), axis=1)
    out = np.full((nq, max(c, 0)), -1, np.int64)
    out[:, : best_pos.shape[1]] = np.take_along_axis(best_pos, order, 1)
    return out
