"""HashIndex search against brute force, for every backend.

Galleries are clustered codes (random centres plus 0..3 bit flips) so that radii 0..3 have
many hits; features are independent Gaussians, so the rerank order is unrelated to Hamming
order and a wrong candidate set shows up in the top-k. The oracle is numpy brute force over
all items (tests/conftest.py), sharing no code with hashindex.
"""

from __future__ import annotations

import numpy as np
import pytest

import hashindex.serving.index as hindex
from hashindex.serving.hashers import ITQHasher
from hashindex.serving.index import HashIndex

ACCEL = {"hash": {"hash"}, "multihash": {"multihash"}, "auto": {"hash", "multihash"}, "flat": {"flat"}}
CASES = [(backend, bits) for bits in (32, 64, 128) for backend in ("flat", "hash", "multihash", "auto")]
RADII = (0, 1, 2, 3)


def _row_of(ids: np.ndarray) -> dict[int, int]:
    return {int(i): r for r, i in enumerate(ids)}


def _check_result(res, g, dist, scores, cand_mask, k, metric, oracle):
    """Each query's result is the exact top-k of its brute-force candidate set."""
    row = _row_of(g.ids)
    for q in range(len(g.qcodes)):
        cand = cand_mask[q]
        assert res.n_candidates[q] == cand.sum(), f"query {q}"
        oracle.assert_topk(res.ids[q], res.scores[q], g.ids[cand], scores[q, cand], k, metric)
        valid = res.ids[q] >= 0
        rows = [row[int(i)] for i in res.ids[q, valid]]
        np.testing.assert_array_equal(res.hamming[q, valid], dist[q, rows])
        assert (res.hamming[q, ~valid] == -1).all()


@pytest.mark.parametrize("backend, bits", CASES)
def test_range_search_equals_brute_force(backend, bits, make_gallery, build_index, oracle):
    g = make_gallery(bits)
    index = build_index(g, backend)
    dist = oracle.hamming(g.qcodes, g.codes)
    for r in RADII:
        assert index.backend_for(r) in ACCEL[backend]
        lims, ids, ham = index.range_search(g.qcodes, r)
        assert lims.shape == (len(g.qcodes) + 1,) and lims[0] == 0 and lims[-1] == ids.size == ham.size
        for q, (qids, qham) in enumerate(oracle.csr_rows(lims, ids, ham)):
            hit = dist[q] <= r
            expected = sorted(zip(g.ids[hit].tolist(), dist[q, hit].tolist()))
            assert sorted(zip(qids.tolist(), qham.tolist())) == expected, f"radius {r}, query {q}"
    # the gallery really exercises small radii (otherwise the test could not fail)
    assert (dist == 0).sum() >= 20 and (dist <= 3).sum() >= 20 * len(g.qcodes)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("backend, bits", CASES)
def test_radius_search_reranks_candidates_exactly(backend, bits, metric, make_gallery, build_index, oracle):
    g = make_gallery(bits)
    index = build_index(g, backend, metric=metric)
    dist = oracle.hamming(g.qcodes, g.codes)
    scores = oracle.scores(g.qfeatures, g.features, metric)
    k = 5
    for r in RADII:
        res = index.search(g.qfeatures, k=k, radius=r, query_codes=g.qcodes)
        assert res.ids.shape == res.scores.shape == res.hamming.shape == (len(g.qcodes), k)
        _check_result(res, g, dist, scores, dist <= r, k, metric, oracle)


@pytest.mark.parametrize("backend, bits", CASES)
def test_budget_mode_takes_the_c_hamming_nearest(backend, bits, make_gallery, build_index, oracle):
    """``candidates=c``: c items whose distances are the c smallest brute-force distances.

    Which items are taken among those tied at the c-th distance is unspecified (FAISS heap
    order), so only items strictly closer than the boundary are required by identity.
    """
    g = make_gallery(bits)
    index = build_index(g, backend, metric="ip")
    dist = oracle.hamming(g.qcodes, g.codes)
    scores = oracle.scores(g.qfeatures, g.features, "ip")
    row = _row_of(g.ids)
    for c in (1, 7, 60):
        full = index.search(g.qfeatures, k=c, candidates=c, query_codes=g.qcodes)
        small = index.search(g.qfeatures, k=3, candidates=c, query_codes=g.qcodes)
        assert (full.n_candidates == c).all() and (small.n_candidates == c).all()
        for q in range(len(g.qcodes)):
            got = full.ids[q]
            assert (got >= 0).all() and np.unique(got).size == c
            rows = np.array([row[int(i)] for i in got])
            np.testing.assert_array_equal(full.hamming[q], dist[q, rows])
            boundary = np.sort(dist[q])[c - 1]
            np.testing.assert_array_equal(np.sort(dist[q, rows]), np.sort(dist[q])[:c])
            assert set(g.ids[dist[q] < boundary].tolist()) <= set(got.tolist())
            # reranked: every candidate shown, best first, with exact scores
            oracle.assert_topk(got, full.scores[q], got, scores[q, rows], c, "ip")
            oracle.assert_topk(small.ids[q], small.scores[q], got, scores[q, rows], 3, "ip")
    # a budget above the gallery size takes everything
    res = index.search(g.qfeatures[:2], k=4, candidates=10 * len(g.ids), query_codes=g.qcodes[:2])
    assert (res.n_candidates == len(g.ids)).all()


@pytest.mark.parametrize("backend, bits", CASES)
def test_default_mode_uses_smallest_radius_with_10k_candidates(
    backend, bits, make_gallery, build_index, oracle, no_hang
):
    """Per query, the smallest radius giving >= 10 * k candidates; uniform queries need radii
    well above the hash tables' key width, so this runs under a hang guard."""
    g = make_gallery(bits)
    index = build_index(g, backend, metric="l2")
    dist = oracle.hamming(g.qcodes, g.codes)
    scores = oracle.scores(g.qfeatures, g.features, "l2")
    for k in (1, 4):
        target = 10 * k
        radius = np.sort(dist, axis=1)[:, target - 1]  # smallest r with >= target items within r
        res = no_hang(index.search, g.qfeatures, k=k, query_codes=g.qcodes)
        _check_result(res, g, dist, scores, dist <= radius[:, None], k, "l2", oracle)
        assert (res.n_candidates >= target).all()
    # a mix of tight (cluster) and loose (uniform) queries, so per-query radii really differ
    assert len(np.unique(radius)) >= 3 and radius.max() >= bits // 4


@pytest.mark.parametrize("backend", ["flat", "hash", "multihash", "auto"])
def test_default_mode_on_a_small_gallery_takes_everything(backend, make_gallery, build_index, oracle, no_hang):
    g = make_gallery(32, n=25, n_centers=3, nq=6)
    index = build_index(g, backend)
    dist = oracle.hamming(g.qcodes, g.codes)
    res = no_hang(index.search, g.qfeatures, k=3, query_codes=g.qcodes)  # 10 * k = 30 > 25 items
    _check_result(res, g, dist, oracle.scores(g.qfeatures, g.features, "cosine"), dist >= 0, 3, "cosine", oracle)


def _range_sets(index, qcodes, radii):
    out = []
    for r in radii:
        lims, ids, ham = index.range_search(qcodes, r)
        out.append([sorted(zip(a.tolist(), b.tolist())) for a, b in zip(*(np.split(x, lims[1:-1]) for x in (ids, ham)))])
    return out


@pytest.mark.parametrize("backend, bits", CASES)
def test_range_search_at_large_radius_is_exact(backend, bits, make_gallery, build_index, oracle, no_hang):
    """Radii beyond the hash key width (~log2 N = 12 bits here), up to the code length.

    FAISS's IndexBinaryHash / MultiHash loop forever when nflip exceeds their key width, so
    the backend must cap nflip (all buckets probed) or fall back to the flat scan.
    """
    g = make_gallery(bits, nq=8)
    index = build_index(g, backend)
    dist = oracle.hamming(g.qcodes, g.codes)
    radii = (13, bits // 2, bits)
    got = no_hang(_range_sets, index, g.qcodes, radii)
    for r, per_query in zip(radii, got):
        for q, pairs in enumerate(per_query):
            hit = dist[q] <= r
            assert pairs == sorted(zip(g.ids[hit].tolist(), dist[q, hit].tolist())), f"radius {r}, query {q}"


def test_auto_stays_flat_below_threshold(make_gallery):
    g = make_gallery(32)
    index = HashIndex(16, bits=32, backend="auto")
    index.add_codes(g.codes, g.features, g.ids)
    assert len(index) < hindex.AUTO_MIN_ITEMS
    assert {index.backend_for(r) for r in range(8)} == {"flat"}


def test_k_larger_than_candidates_pads(make_gallery, build_index, oracle):
    g = make_gallery(64)
    index = build_index(g, "flat")
    res = index.search(g.qfeatures, k=len(g.ids) + 5, radius=0, query_codes=g.qcodes)
    n0 = (oracle.hamming(g.qcodes, g.codes) == 0).sum(1)
    np.testing.assert_array_equal((res.ids >= 0).sum(1), n0)
    assert np.isneginf(res.scores[res.ids < 0]).all()
    assert (res.hamming[res.ids < 0] == -1).all()


def test_empty_index_returns_padding():
    index = HashIndex(16, bits=32, backend="flat")
    q = np.ones((3, 16), np.float32)
    res = index.search(q, k=2, radius=5, query_codes=np.zeros((3, 4), np.uint8))
    assert (res.ids == -1).all() and (res.n_candidates == 0).all()
    lims, ids, ham = index.range_search(np.zeros((3, 4), np.uint8), 3)
    assert lims.tolist() == [0, 0, 0, 0] and ids.size == 0 and ham.size == 0


@pytest.mark.parametrize("backend", ["flat", "multihash"])
def test_feature_queries_use_the_hasher(backend, oracle):
    """search / range_search on float queries equal the same calls on hasher.encode(queries)."""
    rng = np.random.default_rng(3)
    dim, bits = 32, 32
    centers = rng.standard_normal((40, dim))
    x = (centers[rng.integers(0, 40, 2000)] + 0.05 * rng.standard_normal((2000, dim))).astype(np.float32)
    q = (centers[:10] + 0.05 * rng.standard_normal((10, dim))).astype(np.float32)
    index = HashIndex(dim, ITQHasher(dim, bits), metric="cosine", backend=backend)
    ids = index.add(x)
    np.testing.assert_array_equal(ids, np.arange(2000))
    qcodes = index.hasher.encode(q / np.linalg.norm(q, axis=1, keepdims=True))
    dist = oracle.hamming(qcodes, index.codes)
    for r in (0, 2):
        lims, got, _ = index.range_search(q, r)
        for i, (qids,) in enumerate(oracle.csr_rows(lims, got)):
            assert sorted(qids.tolist()) == np.flatnonzero(dist[i] <= r).tolist()
        res = index.search(q, k=5, radius=r)
        ref = index.search(q, k=5, radius=r, query_codes=qcodes)
        np.testing.assert_array_equal(res.ids, ref.ids)
        np.testing.assert_array_equal(res.scores, ref.scores)
    assert (dist <= 2).sum() >= 10 * len(q)


@pytest.mark.parametrize("block", [1, 7, 100])
def test_rerank_in_small_blocks_is_exact(block, make_gallery, build_index, oracle, monkeypatch):
    """Reranking walks queries in blocks bounded by a cell budget (queries x longest list); tiny
    budgets (a query with more candidates than the budget gets a block of its own) must not
    change results."""
    import hashindex.serving.rerank

    g = make_gallery(32)
    index = build_index(g, "flat", metric="ip")
    dist = oracle.hamming(g.qcodes, g.codes)
    monkeypatch.setattr(hashindex.serving.rerank, "_BLOCK_CELLS", block)
    res = index.search(g.qfeatures, k=6, radius=3, query_codes=g.qcodes)
    _check_result(res, g, dist, oracle.scores(g.qfeatures, g.features, "ip"), dist <= 3, 6, "ip", oracle)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_float16_and_float32_stores_rerank_alike(metric, make_gallery, build_index, oracle):
    """float32 stores are scored in place by FAISS (fvec_*_by_idx), float16 ones by numpy: both
    must give the brute-force top-k on their stored values."""
    g = make_gallery(32)
    dist = oracle.hamming(g.qcodes, g.codes)
    for dtype in ("float32", "float16"):
        index = build_index(g, "flat", metric=metric, feature_dtype=dtype)
        stored = index.get_features(g.ids)  # what the index holds (normalised; rounded for float16)
        res = index.search(g.qfeatures, k=5, radius=3, query_codes=g.qcodes)
        queries = g.qfeatures / np.linalg.norm(g.qfeatures, axis=1, keepdims=True) if metric == "cosine" else g.qfeatures
        scores = oracle.scores(queries, stored, metric)
        _check_result(res, g, dist, scores, dist <= 3, 5, metric, oracle)
