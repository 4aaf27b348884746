"""Asymmetric ranking (query projection against item bits) against a numpy brute force.

The oracle unpacks bits with numpy's own ``unpackbits`` and scores in float64; nothing here
goes through the FAISS fast-scan under test, whose 8-bit lookup tables make its scores
approximate: assertions allow the rounding bound of :func:`lut_error_bound` and no more.
"""

from __future__ import annotations

import numpy as np
import pytest

from hashindex import HashIndex, InputError, NotFittedError
from hashindex.serving.candidates.asymmetric import AsymmetricCandidates
from hashindex.core.codes import pre_tanh
from hashindex.serving.front import default_candidates
from hashindex.serving.hashers import ITQHasher


def score_oracle(z: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """float64 ``[nq, n]``: sum_i z_i * (+1 if bit i set else -1), bit i = bit i%8 of byte i//8."""
    bits = np.unpackbits(codes, axis=1, bitorder="little").astype(np.float64)
    return np.asarray(z, np.float64) @ (2 * bits - 1).T


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def lut_error_bound(z: np.ndarray, bits: int) -> np.ndarray:
    """Per query, a bound on fast-scan's score error: its 8-bit tables (one per 4 bits, range
    2 * |z_sub|_1 each) round by at most half a step of the widest table's range / 255."""
    ranges = 2 * np.abs(z.reshape(len(z), bits // 4, 4)).sum(axis=2)
    return (bits // 4) * ranges.max(axis=1) / 255.0


@pytest.mark.parametrize("bits", [8, 32, 64, 128, 256])
def test_fast_scan_codes_are_the_packed_codes(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 256, size=(500, bits // 8), dtype=np.uint8)
    scanner = AsymmetricCandidates(bits)
    signs = 2 * np.unpackbits(codes, axis=1, bitorder="little").astype(np.float32) - 1
    np.testing.assert_array_equal(scanner.index.sa_encode(signs), codes)


@pytest.mark.parametrize("bits", [8, 32, 64, 128])
def test_scanner_returns_the_brute_force_top_c(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 256, size=(2000, bits // 8), dtype=np.uint8)
    z = rng.standard_normal((25, bits)).astype(np.float32)
    scanner = AsymmetricCandidates(bits)
    scanner.add(codes[:1200])
    scanner.add(codes[1200:])  # incremental adds keep row order
    c = 30
    pos, scores = scanner.knn(z, c)
    ref = score_oracle(z, codes)
    tol = lut_error_bound(z, bits)[:, None]
    assert (pos >= 0).all() and all(np.unique(p).size == c for p in pos)
    got = np.take_along_axis(ref, pos, 1)
    assert (np.abs(scores - got) <= tol).all()  # approximate scores, within the LUT bound
    cth = -np.sort(-ref, axis=1)[:, c - 1 : c]
    assert (got >= cth - 2 * tol).all()  # nothing returned that misses the true top-c by more
    assert (np.diff(scores, axis=1) <= 1e-5).all()  # best first
    recall = np.mean([np.isin(np.argsort(-ref[i])[:c], pos[i]).mean() for i in range(len(z))])
    assert recall > 0.9

    scanner.rebuild(codes[:10])
    pos, _ = scanner.knn(z, 30)
    assert (pos[:, 10:] == -1).all() and set(pos[0, :10].tolist()) == set(range(10))


@pytest.fixture(scope="module")
def itq_index():
    rng = np.random.default_rng(7)
    x = _normalised(rng, 4000, 32)
    index = HashIndex(32, ITQHasher(32, 32).fit(x[:2000]))
    ids = index.add(x, ids=np.arange(4000, dtype=np.int64) * 3 + 1)
    return index, x, ids


@pytest.mark.parametrize("k,c", [(5, 40), (10, None), (7, 10_000)])
def test_search_reranks_the_asymmetric_top_c(itq_index, oracle, k, c):
    index, x, ids = itq_index
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 30, replace=False)] + 0.05 * _normalised(rng, 30, 32)
    res = index.search(q, k=k, candidates=c, ranking="asymmetric")

    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    z = qn @ index.hasher.weight.T.astype(np.float64) + index.hasher.bias
    asym = score_oracle(z, index.codes)
    exact = oracle.scores(q, x, "cosine")
    ham = oracle.hamming(index.hasher.encode(qn), index.codes)
    budget = min(c if c is not None else default_candidates(k), len(x))  # untuned default: max(50k, 500)
    np.testing.assert_array_equal(res.n_candidates, budget)
    tol = lut_error_bound(z, 32)
    for i in range(len(q)):
        # fast-scan's LUT rounding blurs the edge of the budget: every item clearly inside it
        # must be a candidate, nothing clearly outside may be; the result is then sandwiched
        # between the exact top-k of the two sets
        order = np.argsort(-asym[i], kind="stable")
        cth = asym[i, order[budget - 1]]
        sure = order[asym[i, order] > cth + 2 * tol[i]]
        maybe = order[asym[i, order] >= cth - 2 * tol[i]]
        pos = (res.ids[i] - 1) // 3
        assert (res.ids[i] >= 0).all() and np.isin(pos, maybe).all() and np.unique(pos).size == k
        np.testing.assert_allclose(res.scores[i], exact[i, pos], atol=1e-5)
        assert (np.diff(res.scores[i]) <= 1e-6).all()
        lower = np.sort(exact[i, sure])[::-1][:k]
        upper = np.sort(exact[i, maybe])[::-1][:k]
        assert (res.scores[i, : lower.size] >= lower - 1e-5).all() and (res.scores[i] <= upper + 1e-5).all()
        np.testing.assert_array_equal(res.hamming[i], ham[i, pos])


def test_asymmetric_beats_hamming_at_the_same_budget(itq_index):
    """The point of the feature: more true neighbours found for the same rerank budget."""
    index, x, _ = itq_index
    rng = np.random.default_rng(3)
    q = _normalised(rng, 200, 32)
    truth = np.argmax(q @ x.T, axis=1) * 3 + 1
    hits = {
        r: np.mean(index.search(q, k=1, candidates=40, ranking=r).ids[:, 0] == truth)
        for r in ("hamming", "asymmetric")
    }
    assert hits["asymmetric"] > hits["hamming"] + 0.05, hits


def test_asymmetric_scanner_follows_add_and_remove(oracle):
    rng = np.random.default_rng(11)
    x = _normalised(rng, 1500, 16)
    index = HashIndex(16, ITQHasher(16, 16).fit(x))
    index.add(x[:1000])
    q = x[:20]
    index.search(q, k=3, ranking="asymmetric")  # builds the scanner
    index.add(x[1000:], ids=np.arange(5000, 5500))
    removed = np.arange(0, 1000, 2)
    index.remove(removed)
    res = index.search(q, k=3, candidates=len(index), ranking="asymmetric")
    assert not np.isin(res.ids, removed).any()
    kept = np.concatenate([x[1:1000:2], x[1000:]])
    kept_ids = np.concatenate([np.arange(1, 1000, 2), np.arange(5000, 5500)])
    exact = oracle.scores(q, kept, "cosine")
    for i in range(len(q)):
        oracle.assert_topk(res.ids[i], res.scores[i], kept_ids, exact[i], 3, "cosine")


def test_bad_asymmetric_requests_are_refused(itq_index):
    index, x, _ = itq_index
    q = x[:3]
    with pytest.raises(InputError, match="ranking"):
        index.search(q, ranking="cosine")
    with pytest.raises(InputError, match="radius"):
        index.search(q, radius=2, ranking="asymmetric")
    with pytest.raises(InputError, match="codes"):
        index.search(q, ranking="asymmetric", query_codes=index.hasher.encode(q))

    class CodesOnly:
        bits = 32

        def encode(self, f):
            return np.zeros((len(f), 4), np.uint8)

    blind = HashIndex(32, CodesOnly())
    blind.add_codes(index.codes[:10], x[:10])
    with pytest.raises(InputError, match="project"):
        blind.search(q, ranking="asymmetric")
    with pytest.raises(NotFittedError):
        HashIndex(32, bits=16).search(q, ranking="asymmetric")
    empty = HashIndex(32, index.hasher).search(q, k=2, ranking="asymmetric")
    assert (empty.ids == -1).all() and (empty.n_candidates == 0).all()


def test_pre_tanh_inverts_tanh_and_keeps_signs():
    z = np.array([[-30.0, -3.0, -1e-4, 0.0, 1e-4, 0.5, 3.0, 30.0]], np.float32)
    h = np.tanh(z)
    back = pre_tanh(h)
    np.testing.assert_allclose(back[0, 1:7], z[0, 1:7], rtol=1e-3, atol=1e-6)
    assert np.isfinite(back).all()
    np.testing.assert_array_equal(back > 0, h > 0)


def test_cli_search_with_asymmetric_ranking(tmp_path):
    from hashindex.cli import main

    rng = np.random.default_rng(5)
    x = _normalised(rng, 1200, 32)
    np.savez(tmp_path / "gallery.npz", embeddings=x)
    np.savez(tmp_path / "queries.npz", embeddings=x[:30])
    assert main(["build", "--features", str(tmp_path / "gallery.npz"), "--bits", "32", "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    assert main(["search", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "queries.npz"), "-k", "3",
                 "--candidates", "50", "--ranking", "asymmetric", "--out", str(tmp_path / "res.npz"), "--quiet"]) == 0
    got = np.load(tmp_path / "res.npz")
    want = HashIndex.load(tmp_path / "idx").search(x[:30], k=3, candidates=50, ranking="asymmetric")
    np.testing.assert_array_equal(got["ids"], want.ids)
    np.testing.assert_array_equal(got["ids"][:, 0], np.arange(30))  # each query finds itself
