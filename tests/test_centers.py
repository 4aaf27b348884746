"""Hash-center generation (hashindex.training.losses.centers) against brute-force oracles."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from hashindex.core.codes import hamming_distances, pack_bits
from hashindex.core.errors import InputError
from hashindex.training.losses import CSQLoss
from hashindex.training.losses.centers import (
    CenterCollisionWarning,
    bernoulli_centers,
    hadamard_centers,
    hadamard_matrix,
    make_centers,
    min_pairwise_hamming,
    multilabel_centers,
    nearest_center_distances,
    random_tie_bits,
)

torch.set_num_threads(1)


def brute_pairwise(centers: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances by the numpy popcount oracle of hashindex.core.codes."""
    k = centers.shape[1]
    padded = np.zeros((centers.shape[0], -(-k // 8) * 8), dtype=np.uint8)
    padded[:, :k] = centers
    packed = pack_bits(padded)
    return hamming_distances(packed, packed)


def brute_min(centers: np.ndarray) -> int:
    d = brute_pairwise(centers).astype(np.int64)
    np.fill_diagonal(d, centers.shape[1])
    return int(d.min())


@pytest.mark.parametrize("bits", [8, 16, 32, 64, 128, 256])
def test_hadamard_centers_are_half_the_bits_apart(bits):
    h = hadamard_matrix(bits).astype(np.int64)
    np.testing.assert_array_equal(h @ h.T, bits * np.eye(bits, dtype=np.int64))
    c = hadamard_centers(bits, 2 * bits)
    assert c.shape == (2 * bits, bits) and c.dtype == np.uint8
    d = brute_pairwise(c)
    first = d[:bits, :bits][~np.eye(bits, dtype=bool)]
    assert (first == bits // 2).all()
    # across H and -H: K/2 except a row and its own negation, which are K apart
    off = ~np.eye(2 * bits, dtype=bool)
    antipodal = np.zeros((2 * bits, 2 * bits), dtype=bool)
    idx = np.arange(bits)
    antipodal[idx, idx + bits] = antipodal[idx + bits, idx] = True
    assert (d[antipodal] == bits).all()
    assert (d[off & ~antipodal] == bits // 2).all()
    assert min_pairwise_hamming(c) == bits // 2


def test_hadamard_rejects_impossible_sizes():
    with pytest.raises(InputError, match="power of two"):
        hadamard_centers(24, 10)
    with pytest.raises(InputError, match="2 \\* bits"):
        hadamard_centers(16, 33)


def test_make_centers_follows_the_csq_rule():
    assert make_centers(64, 128).kind == "hadamard"
    assert make_centers(64, 129).kind == "bernoulli"
    assert make_centers(48, 10).kind == "bernoulli"
    with pytest.raises(InputError):
        make_centers(48, 10, kind="hadamard")
    with pytest.raises(InputError):
        make_centers(16, 10, kind="nope")


@pytest.mark.parametrize("seed", range(6))
def test_min_pairwise_hamming_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(2, 60)), int(rng.choice([5, 8, 13, 16, 40]))
    c = rng.integers(0, 2, size=(n, k), dtype=np.uint8)
    if seed % 2:
        c[n - 1] = c[0]  # a duplicate
    assert min_pairwise_hamming(c) == brute_min(c)
    d = brute_pairwise(c).astype(np.int64)
    np.fill_diagonal(d, k + 1)
    np.testing.assert_array_equal(nearest_center_distances(c), d.min(axis=1))
    # +-1 input means the same centers
    assert min_pairwise_hamming(1 - 2 * c.astype(np.int8)) == brute_min(c)


def test_min_pairwise_hamming_single_center_is_bits():
    assert min_pairwise_hamming(np.zeros((1, 24), dtype=np.uint8)) == 24


@pytest.mark.parametrize("bits,classes", [(16, 100), (24, 300), (48, 500), (8, 256)])
def test_bernoulli_centers_report_and_improve(bits, classes):
    made = make_centers(bits, classes, kind="bernoulli", seed=3)
    assert made.centers.shape == (classes, bits)
    assert made.min_distance == brute_min(made.centers)
    assert made.min_distance >= 1  # 2^bits >= classes: the greedy step removes every duplicate
    plain = np.random.default_rng(3).integers(0, 2, size=(classes, bits), dtype=np.uint8)
    assert made.min_distance >= brute_min(plain)
    bits_set = made.centers.mean()
    assert 0.35 < bits_set < 0.65  # still Bernoulli(0.5)-like


def test_bernoulli_centers_are_seeded():
    a = bernoulli_centers(32, 200, seed=1)
    np.testing.assert_array_equal(a, bernoulli_centers(32, 200, seed=1))
    assert not np.array_equal(a, bernoulli_centers(32, 200, seed=2))


def test_duplicates_raise_or_warn():
    with pytest.raises(InputError, match="2\\^8 < 300 classes.*minimum pairwise Hamming distance 0"):
        make_centers(8, 300)
    with pytest.warns(CenterCollisionWarning, match="minimum pairwise Hamming distance 0"):
        made = make_centers(8, 300, allow_duplicates=True)
    assert made.min_distance == 0 == brute_min(made.centers)
    given = np.array([[0, 1, 1, 0, 1, 0, 0, 1]] * 2 + [[1] * 8], dtype=np.uint8)
    with pytest.raises(InputError, match="share"):
        CSQLoss(8, 3, centers=given)
    with pytest.warns(CenterCollisionWarning):
        loss = CSQLoss(8, 3, centers=given, allow_duplicates=True)
    assert loss.min_distance == 0 and loss.center_kind == "given"


def test_ten_thousand_centers_at_64_bits():
    t0 = time.perf_counter()
    made = make_centers(64, 10_000, seed=0)
    seconds = time.perf_counter() - t0
    print(f"\n10,000 x 64-bit Bernoulli centers: {seconds:.2f} s, min pairwise Hamming {made.min_distance}")
    assert made.kind == "bernoulli" and made.centers.shape == (10_000, 64)
    assert made.min_distance == min_pairwise_hamming(made.centers) > 0


def majority_oracle(labels: np.ndarray, centers: np.ndarray, tie_bits: np.ndarray) -> np.ndarray:
    out = np.zeros((labels.shape[0], centers.shape[1]), dtype=np.uint8)
    for b in range(labels.shape[0]):
        members = [c for c in range(labels.shape[1]) if labels[b, c]]
        for k in range(centers.shape[1]):
            ones = sum(int(centers[c, k]) for c in members)
            if 2 * ones > len(members):
                out[b, k] = 1
            elif 2 * ones == len(members):
                parity = 0
                for c in members:
                    parity ^= int(tie_bits[c, k])
                out[b, k] = parity
    return out


def test_multilabel_majority_and_tie_breaks():
    rng = np.random.default_rng(0)
    centers = rng.integers(0, 2, size=(6, 32), dtype=np.uint8)
    labels = rng.integers(0, 2, size=(40, 6), dtype=np.uint8)
    labels[labels.sum(axis=1) == 0, 0] = 1
    labels[0] = [1, 1, 0, 0, 0, 0]  # two labels: ties wherever their centers differ
    labels[1] = labels[0]
    tie = random_tie_bits(6, 32, seed=5)
    got = multilabel_centers(labels, centers, tie)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, majority_oracle(labels, centers, tie))
    np.testing.assert_array_equal(got[0], got[1])  # same label set -> same center
    # single label -> its own center
    single = np.eye(6, dtype=np.uint8)
    np.testing.assert_array_equal(multilabel_centers(single, centers, tie), centers)
    # torch in -> torch out, same values
    got_t = multilabel_centers(torch.as_tensor(labels), torch.as_tensor(centers), torch.as_tensor(tie))
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_array_equal(got_t.numpy(), got)
    # tie breaks are seeded: same seed same bits, other seed other bits somewhere, about half ones
    np.testing.assert_array_equal(tie, random_tie_bits(6, 32, seed=5))
    other = multilabel_centers(labels, centers, random_tie_bits(6, 32, seed=6))
    ties = centers[0] != centers[1]
    assert ties.any() and not np.array_equal(other[0][ties], got[0][ties])
    many = random_tie_bits(100, 64, seed=1)
    assert 0.45 < many.mean() < 0.55


def test_multilabel_rejects_empty_label_sets():
    centers = np.zeros((3, 8), dtype=np.uint8)
    with pytest.raises(InputError, match="without any label"):
        multilabel_centers(np.array([[1, 0, 0], [0, 0, 0]]), centers, centers)
    with pytest.raises(InputError, match="only 0 and 1"):
        multilabel_centers(np.array([[2, 0, 0]]), centers, centers)
