"""hashindex.core.codes: packing in FAISS bit order, binarize threshold, Hamming helpers.

Oracles: FAISS itself (``pack_bitstrings`` with 1-bit fields, ``real_to_binary``,
IndexBinaryFlat distances, IndexBinaryHash bucket keys), a hand-built table, and an
``np.bitwise_count`` popcount.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from hashindex.core.codes import (
    binarize,
    check_codes,
    hamming_distances,
    hamming_pairs,
    pack_bits,
    popcount,
    unpack_bits,
)
from hashindex.core.errors import InputError


@pytest.mark.parametrize("bits", [8, 16, 24, 64, 128, 256])
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    b = rng.integers(0, 2, size=(37, bits), dtype=np.uint8)
    codes = pack_bits(b)
    assert codes.dtype == np.uint8 and codes.shape == (37, bits // 8)
    np.testing.assert_array_equal(unpack_bits(codes), b)
    # every byte value survives the other way round too
    all_bytes = np.arange(256, dtype=np.uint8).reshape(-1, 1)
    np.testing.assert_array_equal(pack_bits(unpack_bits(all_bytes)), all_bytes)


def test_bit_order_hand_built():
    """Bit i is bit (i % 8), from the LSB, of byte i // 8 (ARCHITECTURE.md §1)."""
    table = {0: [0x01, 0x00], 3: [0x08, 0x00], 7: [0x80, 0x00], 8: [0x00, 0x01], 13: [0x00, 0x20], 15: [0x00, 0x80]}
    for i, expected in table.items():
        b = np.zeros((1, 16), dtype=np.uint8)
        b[0, i] = 1
        assert pack_bits(b).tolist() == [expected], f"bit {i}"
    b = np.zeros((1, 16), dtype=np.uint8)
    b[0, [0, 1, 9, 15]] = 1
    assert pack_bits(b).tolist() == [[0b00000011, 0b10000010]]


def test_bit_order_matches_faiss_bitstrings():
    """FAISS's own BitstringWriter with 1-bit fields lays bits out exactly like pack_bits."""
    rng = np.random.default_rng(1)
    b = rng.integers(0, 2, size=(50, 64)).astype(np.int32)
    np.testing.assert_array_equal(pack_bits(b), faiss.pack_bitstrings(b, 1))
    np.testing.assert_array_equal(unpack_bits(pack_bits(b)), faiss.unpack_bitstrings(pack_bits(b), 64, 1))


def test_bit_order_is_what_index_binary_hash_keys_on():
    """IndexBinaryHash hashes the *first* b bits: with pack_bits, those are bits 0..b-1.

    All items are at Hamming distance 1 from the query; with nflip=0 only those whose flipped
    bit lies outside the hashed prefix share the query's bucket. With numpy's default (big)
    bit order the prefix would be a different set of bits and this fails.
    """
    bits, hash_bits = 32, 12  # not a whole byte, so bit order inside a byte matters
    items = np.zeros((bits, bits), dtype=np.uint8)
    items[np.arange(bits), np.arange(bits)] = 1  # item i differs from the query in bit i only
    index = faiss.IndexBinaryHash(bits, hash_bits)
    index.add(pack_bits(items))
    index.nflip = 0
    lims, dist, found = index.range_search(pack_bits(np.zeros((1, bits), np.uint8)), bits + 1)
    assert sorted(found.tolist()) == list(range(hash_bits, bits))
    assert set(dist.tolist()) == {1}


@pytest.mark.parametrize("bits", [8, 32, 64, 96])
def test_binarize_matches_faiss_real_to_binary(bits):
    rng = np.random.default_rng(bits)
    h = rng.standard_normal((40, bits)).astype(np.float32)
    h[rng.random(h.shape) < 0.1] = 0.0  # exact zeros must give bit 0
    expected = np.zeros((40, bits // 8), dtype=np.uint8)
    faiss.real_to_binary(h.size, faiss.swig_ptr(np.ascontiguousarray(h)), faiss.swig_ptr(expected))
    np.testing.assert_array_equal(binarize(h), expected)


def test_binarize_threshold():
    """h > 0 gives 1; h == 0 (and -0.0) and h < 0 give 0."""
    h = np.array([[1e-30, 0.0, -0.0, -1e-30, 5.0, -5.0, np.float32(1e-45), 0.0]], dtype=np.float32)
    assert unpack_bits(binarize(h)).tolist() == [[1, 0, 0, 0, 1, 0, 1, 0]]
    # float64 and integer inputs follow the same rule
    assert unpack_bits(binarize(np.array([[2, 0, -1, 0, 0, 0, 0, 1]]))).tolist() == [[1, 0, 0, 0, 0, 0, 0, 1]]


@pytest.mark.parametrize("bits", [16, 64, 128])
def test_hamming_distances_match_faiss_and_popcount(bits, oracle):
    rng = np.random.default_rng(bits)
    a = rng.integers(0, 256, size=(23, bits // 8), dtype=np.uint8)
    b = rng.integers(0, 256, size=(41, bits // 8), dtype=np.uint8)
    d = hamming_distances(a, b, block=7)  # a block size that does not divide 23
    np.testing.assert_array_equal(d, oracle.hamming(a, b))

    flat = faiss.IndexBinaryFlat(bits)
    flat.add(b)
    fd, fi = flat.search(a, b.shape[0])
    np.testing.assert_array_equal(np.take_along_axis(d, fi, axis=1), fd)

    np.testing.assert_array_equal(popcount(a), np.bitwise_count(a).sum(1))
    np.testing.assert_array_equal(hamming_pairs(a, b[:23]), oracle.hamming(a, b[:23]).diagonal())


def test_code_checks_reject_bad_input():
    with pytest.raises(InputError, match="multiple of 8"):
        pack_bits(np.zeros((2, 12)))
    with pytest.raises(InputError, match="2-D"):
        pack_bits(np.zeros(16))
    with pytest.raises(InputError, match="2-D"):
        binarize(np.zeros(16))
    with pytest.raises(InputError, match="uint8"):
        check_codes(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(InputError, match="2-D"):
        check_codes(np.zeros(4, dtype=np.uint8))
    with pytest.raises(InputError, match="expected 8 bytes"):
        check_codes(np.zeros((2, 4), dtype=np.uint8), nbytes=8)
    with pytest.raises(InputError):
        hamming_distances(np.zeros((2, 4), np.uint8), np.zeros((2, 8), np.uint8))
    with pytest.raises(InputError, match="row counts"):
        hamming_pairs(np.zeros((2, 4), np.uint8), np.zeros((3, 4), np.uint8))
    out = check_codes(np.zeros((4, 8), dtype=np.uint8)[:, ::2])
    assert out.flags.c_contiguous
