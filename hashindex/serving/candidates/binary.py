"""FAISS binary indexes as candidate generators, with the exactness rules of ARCHITECTURE.md §2.

Positions are FAISS sequential ids, aligned with the index's row stores. ``FlatCandidates``
(IndexBinaryFlat) is the source of truth and answers everything exactly. ``HashCandidates``
(IndexBinaryHash) and ``MultiHashCandidates`` (IndexBinaryMultiHash) only accelerate range
queries at small radii; they are built from the flat codes and rebuilt after removals, since
FAISS gives them no ``remove_ids``.

``radius`` here is inclusive (Hamming <= r); FAISS's ``range_search`` is exclusive, so every
call passes ``r + 1``. ``nflip`` is a field of the FAISS index, so setting it and searching
happen under one lock: concurrent searches with different radii would otherwise race.
"""

from __future__ import annotations

import math
import threading

import faiss
import numpy as np

from hashindex.serving.candidates.csr import Candidates, from_csr

MAX_NFLIP = 3


class _BinaryCandidates:
    """What every FAISS-backed generator shares: its codes are the index's rows, in order."""

    name: str
    index: faiss.IndexBinary

    def add(self, codes: np.ndarray) -> None:
        self.index.add(codes)

    def rebuild(self, codes: np.ndarray) -> None:
        self.index.reset()
        if len(codes):
            self.index.add(np.ascontiguousarray(codes))

    def handles(self, radius: int) -> bool:
        """Whether ``range`` at this radius is worth running here rather than on the flat index."""
        return True


class FlatCandidates(_BinaryCandidates):
    """Exhaustive Hamming search (IndexBinaryFlat): exact for every radius and k."""

    name = "flat"

    def __init__(self, bits: int):
        self.bits = bits
        self.index = faiss.IndexBinaryFlat(bits)
        # counting-based k-NN (hammings_knn_mc): faster than the heap at large k, on par at
        # small k (benchmarks/README.md); results are sorted by distance either way
        self.index.use_heap = False

    def range(self, queries: np.ndarray, radius: int, params: faiss.SearchParameters | None = None) -> Candidates:
        """``params``: a selector restricting the positions (candidates/filtered.py)."""
        lims, dist, pos = self.index.range_search(queries, radius + 1, params=params)
        return from_csr(lims, pos, dist)

    def knn(self, queries: np.ndarray, k: int, params: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k Hamming-nearest positions ``int64 [nq, k]`` (-1 padded) and distances."""
        dist, pos = self.index.search(queries, k, params=params)
        return pos, dist.astype(np.int32)


class HashCandidates(_BinaryCandidates):
    """IndexBinaryHash on the first ``hash_bits`` bits; exact for radius r when nflip = r.

    Cost per query grows as sum_{i<=r} C(hash_bits, i) bucket probes, so this wins only at
    very small radii; ``hash_bits`` defaults to about log2(N) so buckets hold a few items.
    """

    name = "hash"

    def __init__(self, bits: int, hash_bits: int):
        if hash_bits > min(bits, 64):
            raise ValueError(f"hash_bits must be <= min(bits, 64), got {hash_bits}")
        self.bits, self.hash_bits = bits, hash_bits
        self.index = faiss.IndexBinaryHash(bits, hash_bits)
        self._lock = threading.Lock()

    @staticmethod
    def default_hash_bits(bits: int, n: int) -> int:
        return int(min(bits, 64, max(8, round(math.log2(max(n, 2))))))

    def handles(self, radius: int) -> bool:
        # probes grow as sum_{i<=nflip} C(hash_bits, i); past nflip 3 a scan is cheaper
        return radius <= MAX_NFLIP

    def range(self, queries: np.ndarray, radius: int) -> Candidates:
        with self._lock:
            # FAISS loops forever when nflip exceeds the key width; hash_bits flips probe every bucket
            self.index.nflip = min(radius, self.hash_bits)
            lims, dist, pos = self.index.range_search(queries, radius + 1)
        return from_csr(lims, pos, dist)


class MultiHashCandidates(_BinaryCandidates):
    """IndexBinaryMultiHash: ``nhash`` tables on disjoint ``hash_bits`` slices.

    Pigeonhole: if d(q, x) <= r, some slice differs in at most floor(r / nhash) bits, so
    probing every table with ``nflip`` flips is exact when ``nhash * (nflip + 1) > r``.
    """

    name = "multihash"

    def __init__(self, bits: int, nhash: int, hash_bits: int):
        if nhash * hash_bits > bits:
            raise ValueError(f"nhash * hash_bits must be <= bits ({nhash} * {hash_bits} > {bits})")
        self.bits, self.nhash, self.hash_bits = bits, nhash, hash_bits
        self.index = faiss.IndexBinaryMultiHash(bits, nhash, hash_bits)
        self._lock = threading.Lock()

    @staticmethod
    def default_params(bits: int, n: int) -> tuple[int, int]:
        """(nhash, hash_bits): 2-4 tables of 16+ bit slices, about log2(N) bits each; narrower
        slices leave buckets so full that a scan is faster (benchmarks/backends.py, results in
        benchmarks/README.md).
        """
        nhash = max(2, min(4, bits // 16))
        hash_bits = int(min(bits // nhash, 64, max(8, round(math.log2(max(n, 2))))))
        return nhash, hash_bits

    def handles(self, radius: int) -> bool:
        return self.nflip_for(radius) <= 1

    def nflip_for(self, radius: int) -> int:
        return min(-(-(radius + 1) // self.nhash) - 1, self.hash_bits)  # smallest nflip with nhash*(nflip+1) > radius

    def range(self, queries: np.ndarray, radius: int) -> Candidates:
        with self._lock:
            self.index.nflip = self.nflip_for(radius)
            lims, dist, pos = self.index.range_search(queries, radius + 1)
        return from_csr(lims, pos, dist)
