"""Asymmetric ranking: a float query against the gallery's bits, scanned by FAISS's fast-scan PQ.

The score of a gallery code ``b`` (bits in {0, 1}) for a query's continuous projection ``z``
(the value whose sign gives the query's own bits) is

    s(z, b) = <z, 2b - 1> = sum_i z_i * (2 b_i - 1)

(Gordo et al., "Asymmetric distances for binary embeddings", TPAMI 2014). It keeps what the
sign throws away on the query side -- how far each projection is from its threshold -- while
the gallery stays the same packed bits. On unseen LFW identities it needs ~1/3 of the
candidates a Hamming ranking needs for the same recall (benchmarks/QUALITY.md).

Why a product quantizer: a K-bit code is exactly a PQ code with ``M = K/4`` sub-quantizers of
4 dimensions and 16 centroids each, when centroid ``c`` of every sub-quantizer is the {-1, +1}
pattern of the 4-bit value ``c`` (least significant bit = first dimension). FAISS's standard
4-bit PQ code of a {-1, +1} vector is then byte for byte the packed code of ARCHITECTURE.md §1
(checked in tests), and ``IndexPQFastScan`` scores it with in-register lookup tables: on 100k
128-bit codes it scans as fast as the Hamming scan of IndexBinaryFlat (benchmarks/README.md).
Fast-scan quantizes each query's tables to 8 bits, so scores carry an error of at most about
``M * max_table_range / 510``; that only decides which items are candidates -- they are then
reranked exactly on the float features.
"""

from __future__ import annotations

import faiss
import numpy as np

SUB_BITS = 4  # bits per sub-quantizer: fast-scan's 16-entry tables
_ADD_CHUNK = 8192  # codes expanded to float32 {-1, +1} per add call (4 MB at 128 bits: glibc hands it back)


def sign_patterns(bits: int = SUB_BITS) -> np.ndarray:
    """``float32 [2**bits, bits]``: row c is the value c as {-1, +1}, least significant bit first."""
    values = np.arange(2**bits, dtype=np.uint8)[:, None]
    return np.unpackbits(values, axis=1, bitorder="little")[:, :bits].astype(np.float32) * 2 - 1


def code_signs(codes: np.ndarray) -> np.ndarray:
    """Packed codes ``uint8 [N, K/8]`` -> ``float32 {-1, +1} [N, K]`` (FAISS bit order)."""
    return np.unpackbits(codes, axis=1, bitorder="little").astype(np.float32) * 2 - 1


class AsymmetricCandidates:
    """Top-c gallery positions by asymmetric score (higher first); positions are row order."""

    name = "asymmetric"

    def __init__(self, bits: int):
        if bits % SUB_BITS:
            raise ValueError(f"bits must be a multiple of {SUB_BITS}, got {bits}")
        self.bits = bits
        m = bits // SUB_BITS
        self.index = faiss.IndexPQFastScan(bits, m, SUB_BITS, faiss.METRIC_INNER_PRODUCT)
        centroids = np.broadcast_to(sign_patterns(), (m, 2**SUB_BITS, SUB_BITS))
        faiss.copy_array_to_vector(np.ascontiguousarray(centroids).ravel(), self.index.pq.centroids)
        self.index.is_trained = True

    def add(self, codes: np.ndarray) -> None:
        # fast-scan has no add_sa_codes: hand it the {-1, +1} vectors, which its PQ encodes to
        # exactly these codes (every vector is one of the centroids)
        for start in range(0, len(codes), _ADD_CHUNK):
            self.index.add(code_signs(codes[start : start + _ADD_CHUNK]))

    def rebuild(self, codes: np.ndarray) -> None:
        self.index.reset()
        self.add(codes)

    @property
    def nbytes(self) -> int:
        """Bytes of its code table in use. FAISS's AlignedTable allocates a power of two, but a
        table this large is its own memory map whose untouched tail never becomes resident
        (measured at 10M: 160 MB resident of a 268 MB allocation)."""
        return int(self.index.codes.size())

    def knn(self, z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best positions ``int64 [nq, k]`` (-1 padded) and their approximate scores."""
        scores, pos = self.index.search(np.ascontiguousarray(z, dtype=np.float32), k)
        return pos, scores
