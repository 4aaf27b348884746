"""Six-bit blocks: the partition stage's codes laid out for the library's six-bit scan.

FAISS's fast-scan reads a K-bit code as K/4 nibbles, each looked up in a 16-entry table with
``pshufb``. On a CPU with AVX-512 VBMI, ``vpermb`` looks 64 bytes up in a 64-entry table in one
instruction, so the same code read as K/6 six-bit indices needs 2/3 of the lookups and adds,
and a block of 64 codes holds one code per byte lane, so nothing is added across lanes at the
end (the scan: fastscan.c, ``scan_six_n``; benchmarks/README.md, "Six-bit lists"). The scores
are the same asymmetric ones, ``<z, 2b - 1>``: index ``j`` is bits ``6j .. 6j + 5`` of the code
(least significant first; the last index padded with zero bits, whose table ignores them), and
its table entry ``v`` is ``sum_t z[6j + t] * (2 bit_t(v) - 1)``.

Layout of a block of :data:`BLOCK` codes, ``48 m`` bytes for ``m`` indices (a multiple of 4,
:func:`index_count`): per group of four indices, three rows of 64 bytes; row ``t`` holds index
``4g + t`` of each code in a byte's low six bits and bits ``2t, 2t + 1`` of index ``4g + 3`` in
its top two, so 24 bits of a code take 3 bytes, as packed. Code ``v`` of the block sits at byte
``2v`` (``v < 32``) or ``2(v - 32) + 1`` of each row (:data:`SLOT`): the scan's 16-bit sums then
hold codes 0..31 in their low bytes and 32..63 in their high ones.

numpy only: pure functions on arrays (shapes in the docstrings).
"""

from __future__ import annotations

import numpy as np

INDEX_BITS = 6
BLOCK = 64  # codes per block
GROUP = 4  # indices packed in three bytes
# byte of each code v = 0 .. 63 within a row
SLOT = np.concatenate([np.arange(32) * 2, np.arange(32) * 2 + 1])


def index_count(bits: int) -> int:
    """Six-bit indices (tables) a ``bits``-bit code is read as: whole groups of four."""
    return GROUP * -(-int(bits) // (GROUP * INDEX_BITS))


def block_bytes(m: int) -> int:
    """Bytes of one block of :data:`BLOCK` codes read as ``m`` indices."""
    return BLOCK * m * 3 // GROUP


def nbytes_for(n: int, m: int) -> int:
    """Bytes of the blocks holding ``n`` codes (the last block zero padded)."""
    return -(-int(n) // BLOCK) * block_bytes(m)


def _groups(codes: np.ndarray, m: int) -> np.ndarray:
    """Codes ``uint8 [n, K/8]`` -> ``uint8 [3, n, m/4]``: the three bytes of each group of four
    indices (zero past K). Index 0 is byte 0's low six bits, 1 its top two and byte 1's low four,
    2 byte 1's top four and byte 2's low two, 3 byte 2's top six (bits least significant first)."""
    n, groups = codes.shape[0], m // GROUP
    flat = np.zeros((n, groups * 3), dtype=np.uint8)
    flat[:, : codes.shape[1]] = codes
    return np.ascontiguousarray(flat.reshape(n, groups, 3).transpose(2, 0, 1))


def indices(codes: np.ndarray, m: int) -> np.ndarray:
    """Packed codes ``uint8 [n, K/8]`` -> their six-bit indices ``uint8 [n, m]`` (``m >= K/6``;
    the bits past K are zero)."""
    b0, b1, b2 = _groups(codes, m)
    four = (b0 & 63, (b0 >> 6) | ((b1 & 15) << 2), (b1 >> 4) | ((b2 & 3) << 4), b2 >> 2)
    return np.stack(four, axis=2).reshape(codes.shape[0], m)


# the code each byte of a row holds (SLOT's inverse)
_CODE_AT = np.argsort(SLOT)


def pack(codes: np.ndarray, m: int) -> np.ndarray:
    """Codes ``uint8 [n, K/8]`` -> blocks ``uint8 [nbytes_for(n, m)]`` (zero padded)."""
    n, groups = codes.shape[0], m // GROUP
    nb = -(-n // BLOCK)
    b0, b1, b2 = _groups(codes, m)
    rows = np.zeros((3, nb * BLOCK, groups), dtype=np.uint8)  # [row, code, group]
    rows[0, :n] = (b0 & 63) | ((b2 << 4) & 0xC0)  # index 3's bits 0, 1 (byte 2's bits 2, 3) on top
    rows[1, :n] = (b0 >> 6) | ((b1 & 15) << 2) | ((b2 << 2) & 0xC0)
    rows[2, :n] = (b1 >> 4) | ((b2 & 3) << 4) | (b2 & 0xC0)
    blocks = rows.reshape(3, nb, BLOCK, groups)[:, :, _CODE_AT]  # bytes in row order
    return np.ascontiguousarray(blocks.transpose(1, 3, 0, 2)).reshape(-1)


def unpack(blocks: np.ndarray, n: int, m: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``n`` codes, ``uint8 [n, bits/8]``."""
    groups = m // GROUP
    rows = blocks.reshape(-1, groups, 3, BLOCK)[..., SLOT].transpose(0, 3, 1, 2).reshape(-1, groups, 3)[:n]
    r0, r1, r2 = rows[:, :, 0], rows[:, :, 1], rows[:, :, 2]
    i0, i1, i2 = r0 & 63, r1 & 63, r2 & 63
    i3 = (r0 >> 6) | ((r1 >> 6) << 2) | ((r2 >> 6) << 4)
    out = np.stack([i0 | (i1 << 6), (i1 >> 2) | (i2 << 4), (i2 >> 4) | (i3 << 2)], axis=2)
    return np.ascontiguousarray(out.reshape(n, 3 * groups)[:, : bits // 8])
