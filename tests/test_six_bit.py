"""Six-bit blocks (candidates/six_bit.py): codes read as six-bit indices, packed into the rows the
six-bit scan reads, and back. The oracle reads each index from the code's bits with
``np.unpackbits`` and each block byte from the layout's description (code v at byte 2v or
2(v - 32) + 1 of a row; row t of group g: index 4g + t in the low six bits, bits 2t, 2t + 1 of
index 4g + 3 in the top two), never through the module's own byte arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from hashindex.serving.candidates import six_bit


def _indices(codes, m):
    bits = np.unpackbits(codes, axis=1, bitorder="little")
    bits = np.pad(bits, ((0, 0), (0, 6 * m - bits.shape[1])))
    return (bits.reshape(len(codes), m, 6).astype(np.int64) << np.arange(6)).sum(axis=2)


@pytest.mark.parametrize("bits", [8, 48, 64, 128, 192, 200, 256, 480])
def test_indices_are_the_codes_six_bits_at_a_time(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 256, (300, bits // 8), dtype=np.uint8)
    m = six_bit.index_count(bits)
    assert m % 4 == 0 and 6 * m >= bits > 6 * (m - 4)
    np.testing.assert_array_equal(six_bit.indices(codes, m), _indices(codes, m))


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 130])
@pytest.mark.parametrize("bits", [64, 128, 192])
def test_blocks_hold_each_index_where_the_scan_reads_it(n, bits):
    rng = np.random.default_rng(n + bits)
    codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    m = six_bit.index_count(bits)
    blocks = six_bit.pack(codes, m)
    assert blocks.size == six_bit.nbytes_for(n, m) == -(-n // 64) * 64 * 48 * m // 64
    rows = blocks.reshape(-1, m // 4, 3, 64)  # [block, group, row, byte]
    idx = _indices(codes, m)
    for v in range(n):
        b, w = divmod(v, 64)
        byte = 2 * w if w < 32 else 2 * (w - 32) + 1
        for g in range(m // 4):
            for t in range(3):
                want = idx[v, 4 * g + t] | (((idx[v, 4 * g + 3] >> (2 * t)) & 3) << 6)
                assert rows[b, g, t, byte] == want, (v, g, t)
    np.testing.assert_array_equal(six_bit.unpack(blocks, n, m, bits), codes)


def test_padding_codes_are_zero():
    codes = np.full((5, 24), 255, np.uint8)
    blocks = six_bit.pack(codes, 32).reshape(1, 8, 3, 64)
    assert (blocks[..., six_bit.SLOT[5:]] == 0).all() and (blocks[..., six_bit.SLOT[:5]] != 0).all()
