"""Asymmetric ranking: a float query against the gallery's bits, scanned by FAISS's IndexPQ.

The score of a gallery code ``b`` (bits in {0, 1}) for a query's continuous projection ``z``
(the value whose sign gives the query's own bits) is

    s(z, b) = <z, 2b - 1> = sum_i z_i * (2 b_i - 1)

(Gordo et al., "Asymmetric distances for binary embeddings", TPAMI 2014). It keeps what the
sign throws away on the query side -- how far each projection is from its threshold -- while
the gallery stays the same packed bits. On unseen LFW identities it needs ~1/3 of the
candidates a Hamming ranking needs for the same recall (benchmarks/QUALITY.md).

Why IndexPQ: a K-bit code is exactly a product-quantizer code with ``M = K/8`` sub-quantizers
of 8 dimensions and 256 centroids each, when centroid ``c`` of every sub-quantizer is the
{-1, +1} pattern of byte value ``c`` in FAISS bit order (bit t of byte j = dimension 8j + t).
FAISS then scores inner products through per-query lookup tables (one table build, then K/8
lookups per item), exactly, with its own threading; the packed codes go in unchanged
(``add_sa_codes``).
"""

from __future__ import annotations

import faiss
import numpy as np


def sign_patterns() -> np.ndarray:
    """``float32 [256, 8]``: row c is byte value c as {-1, +1}, least significant bit first."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
    return bits.astype(np.float32) * 2 - 1


def asymmetric_scores(z: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Reference implementation: ``float32 [nq, N]`` scores of ``z float [nq, K]`` against
    ``codes uint8 [N, K/8]`` (numpy; for tests and small sets)."""
    signs = np.unpackbits(codes, axis=1, bitorder="little").astype(np.float32) * 2 - 1
    return np.asarray(z, dtype=np.float32) @ signs.T


class AsymmetricCandidates:
    """Top-c gallery positions by asymmetric score (higher first); positions are row order."""

    name = "asymmetric"

    def __init__(self, bits: int):
        self.bits = bits
        m = bits // 8
        self.index = faiss.IndexPQ(bits, m, 8, faiss.METRIC_INNER_PRODUCT)
        centroids = np.broadcast_to(sign_patterns(), (m, 256, 8))
        faiss.copy_array_to_vector(np.ascontiguousarray(centroids).ravel(), self.index.pq.centroids)
        self.index.is_trained = True

    def add(self, codes: np.ndarray) -> None:
        if len(codes):
            self.index.add_sa_codes(np.ascontiguousarray(codes))

    def rebuild(self, codes: np.ndarray) -> None:
        self.index.reset()
        self.add(codes)

    @property
    def nbytes(self) -> int:
        return self.index.ntotal * self.index.code_size

    def knn(self, z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best positions ``int64 [nq, k]`` (-1 padded) and their scores ``float32``."""
        scores, pos = self.index.search(np.ascontiguousarray(z, dtype=np.float32), k)
        return pos, scores
