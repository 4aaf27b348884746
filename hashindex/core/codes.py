"""Binary codes: packing in FAISS bit order and Hamming distances (numpy only).

Contract (ARCHITECTURE.md §1): a K-bit code is K/8 uint8 bytes; bit i of the code is bit
``i % 8`` (from the least significant bit) of byte ``i // 8``, i.e.
``np.packbits(bits, axis=-1, bitorder="little")``. Bit i is 1 exactly when the continuous
output ``h_i > 0``.

These helpers are deliberately simple so they can serve as the brute-force oracle in tests.
"""

from __future__ import annotations

import numpy as np

from hashindex.core.errors import InputError

# popcount of every byte value, used for table-lookup Hamming distances.
_POPCOUNT8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a {0,1} matrix ``[N, K]`` into codes ``uint8 [N, K/8]`` in FAISS bit order."""
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise InputError(f"bits must be 2-D [N, K], got shape {bits.shape}")
    if bits.shape[1] % 8:
        raise InputError(f"number of bits must be a multiple of 8, got {bits.shape[1]}")
    return np.packbits(bits.astype(bool), axis=-1, bitorder="little")


def unpack_bits(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``uint8 [N, K/8]`` -> ``uint8 {0,1} [N, K]``."""
    codes = check_codes(codes)
    return np.unpackbits(codes, axis=-1, bitorder="little")


def binarize(h: np.ndarray) -> np.ndarray:
    """Continuous outputs ``float [N, K]`` -> packed codes ``uint8 [N, K/8]`` (bit = h > 0)."""
    h = np.asarray(h)
    if h.ndim != 2:
        raise InputError(f"continuous codes must be 2-D [N, K], got shape {h.shape}")
    return pack_bits(h > 0)


def pre_tanh(embedding: np.ndarray) -> np.ndarray:
    """``atanh`` of a tanh ``embedding`` output: the head's linear output, which ranks better
    asymmetrically than the bounded tanh (benchmarks/QUALITY.md). float32 tanh rounds to +-1
    beyond |z| ~ 9, so values are clipped just inside; signs (the bits) never change."""
    edge = np.nextafter(np.float32(1), np.float32(0))
    return np.arctanh(np.clip(embedding, -edge, edge)).astype(np.float32)


def check_codes(codes: np.ndarray, nbytes: int | None = None) -> np.ndarray:
    """Validate packed codes (uint8, 2-D, ``nbytes`` wide when given); return them contiguous."""
    try:
        codes = np.asarray(codes)
    except (ValueError, TypeError) as e:
        raise InputError(f"codes are not a rectangular array ({e})") from None
    if codes.dtype != np.uint8:
        raise InputError(f"codes must be uint8 packed bits, got dtype {codes.dtype}")
    if codes.ndim != 2:
        raise InputError(f"codes must be 2-D [N, bits/8], got shape {codes.shape}")
    if nbytes is not None and codes.shape[1] != nbytes:
        raise InputError(
            f"codes are {codes.shape[1]} bytes ({codes.shape[1] * 8} bits) wide, "
            f"expected {nbytes} bytes ({nbytes * 8} bits)"
        )
    return np.ascontiguousarray(codes)


def popcount(codes: np.ndarray) -> np.ndarray:
    """Number of set bits per row: ``uint8 [N, B]`` -> ``int32 [N]``."""
    return _POPCOUNT8[np.asarray(codes)].sum(axis=-1, dtype=np.int32)


def hamming_distances(a: np.ndarray, b: np.ndarray, block: int = 1024) -> np.ndarray:
    """All pairwise Hamming distances ``int32 [Na, Nb]`` between two code sets.

    Byte-table popcount of XOR, blocked over ``a`` so memory stays at ``block * Nb * B``.
    """
    a = check_codes(a)
    b = check_codes(b, a.shape[1])
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    for start in range(0, a.shape[0], block):
        x = np.bitwise_xor(a[start : start + block, None, :], b[None, :, :])
        out[start : start + block] = _POPCOUNT8[x].sum(axis=-1, dtype=np.int32)
    return out


def hamming_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance between ``a[i]`` and ``b[i]``: ``int32 [N]``."""
    a = check_codes(a)
    b = check_codes(b, a.shape[1])
    if a.shape[0] != b.shape[0]:
        raise InputError(f"row counts differ: {a.shape[0]} vs {b.shape[0]}")
    return popcount(np.bitwise_xor(a, b))
