"""MilvusHashIndex against HashIndex (FAISS) and brute-force oracles, on a real milvus-lite.

Each module-scoped gallery lives in its own milvus-lite file; tests that mutate build their own
collection. Run with the Milvus extra installed (see docs/milvus.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'hashindex[milvus]')")
with warnings.catch_warnings():  # milvus-lite 2.5 imports the deprecated pkg_resources
    warnings.simplefilter("ignore")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'hashindex[milvus]')")

from pymilvus import DataType, MilvusClient  # noqa: E402

from hashindex.serving.milvus import MILVUS_MAX_TOPK, MilvusHashIndex  # noqa: E402
from hashindex.core.errors import IndexFormatError, InputError, ModelMismatchError  # noqa: E402
from hashindex.serving.hashers import ITQHasher  # noqa: E402
from hashindex.serving.index import HashIndex  # noqa: E402

N_ITEMS = 3000


def _pair(g, uri: str, collection: str, metric: str = "cosine", **kw):
    ref = HashIndex(g.features.shape[1], bits=g.bits, metric=metric, backend="flat")
    ref.add_codes(g.codes, g.features, g.ids)
    mil = MilvusHashIndex(g.features.shape[1], bits=g.bits, uri=uri, collection=collection, metric=metric, **kw)
    mil.add_codes(g.codes, g.features, g.ids)
    return ref, mil


@pytest.fixture(scope="module", params=[32, 64], ids=lambda b: f"{b}bit")
def pair(request, make_gallery, tmp_path_factory):
    g = make_gallery(request.param, n=N_ITEMS)
    ref, mil = _pair(g, str(tmp_path_factory.mktemp("milvus") / "m.db"), "gallery")
    yield g, ref, mil
    mil.close()


def _sets(lims, ids):
    return [set(ids[lims[q] : lims[q + 1]].tolist()) for q in range(len(lims) - 1)]


# -- parity with HashIndex and the oracles ------------------------------------------------------------
@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_range_search_matches_faiss_and_oracle(pair, oracle, radius):
    g, ref, mil = pair
    lims, ids, ham = mil.range_search(g.qcodes, radius)
    rlims, rids, _ = ref.range_search(g.qcodes, radius)
    assert _sets(lims, ids) == _sets(rlims, rids)
    assert lims[-1] > 0
    # every reported distance is the true one, and the set is exactly "<= radius" (inclusive)
    d = oracle.hamming(g.qcodes, g.codes)
    pos = {int(i): p for p, i in enumerate(g.ids)}
    for q, (qi, qh) in enumerate(oracle.csr_rows(lims, ids, ham)):
        np.testing.assert_array_equal(qh, d[q, [pos[i] for i in qi.tolist()]])
        assert set(qi.tolist()) == set(g.ids[d[q] <= radius].tolist())


@pytest.mark.parametrize("rerank", ["milvus", "client"])
@pytest.mark.parametrize("mode", [{"radius": 0}, {"radius": 1}, {"radius": 2}, {"radius": 3}, {}], ids=str)
def test_search_matches_hashindex(pair, mode, rerank):
    g, ref, mil = pair
    a = ref.search(g.qfeatures, k=7, query_codes=g.qcodes, ranking="hamming", **mode)  # {}: multi-probe
    mil.rerank_mode = rerank
    try:
        b = mil.search(g.qfeatures, k=7, query_codes=g.qcodes, **mode)
        assert mil.default_ranking == "hamming"  # Milvus scores binary vectors by Hamming distance only
    finally:
        mil.rerank_mode = "milvus"
    np.testing.assert_array_equal(b.n_candidates, a.n_candidates)
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.hamming, a.hamming)


def test_candidate_budget(pair, oracle):
    """candidates=c: c Hamming-nearest (ties at the c-th distance in any order), then the exact top-k."""
    g, _, mil = pair
    c, k = 40, 5
    res = mil.search(g.qfeatures, k=k, candidates=c, query_codes=g.qcodes)
    assert (res.n_candidates == c).all()
    d = oracle.hamming(g.qcodes, g.codes)
    s = oracle.scores(g.qfeatures, g.features, "cosine")
    pos = {int(i): p for p, i in enumerate(g.ids)}
    for q in range(len(g.qcodes)):
        boundary = np.sort(d[q])[c - 1]
        got = [pos[i] for i in res.ids[q].tolist()]
        np.testing.assert_array_equal(res.hamming[q], d[q, got])
        assert (d[q, got] <= boundary).all()
        # items strictly inside the boundary are surely candidates: none may beat the k-th result
        inside = d[q] < boundary
        inside[got] = False
        assert not (s[q, inside] > res.scores[q, -1] + 1e-5).any()


def test_milvus_rerank_equals_client_rerank(pair, oracle):
    g, _, mil = pair
    assert mil.rerank_mode == "milvus"  # the default
    server = mil.search(g.qfeatures, k=6, radius=2, query_codes=g.qcodes)
    mil.rerank_mode = "client"
    try:
        client = mil.search(g.qfeatures, k=6, radius=2, query_codes=g.qcodes)
    finally:
        mil.rerank_mode = "milvus"
    d = oracle.hamming(g.qcodes, g.codes)
    s = oracle.scores(g.qfeatures, g.features, "cosine")
    for res in (client, server):
        np.testing.assert_array_equal(res.n_candidates, (d <= 2).sum(1))
        for q in range(len(g.qcodes)):
            inside = d[q] <= 2
            oracle.assert_topk(res.ids[q], res.scores[q], g.ids[inside], s[q, inside], 6, "cosine")
    np.testing.assert_array_equal(server.hamming, client.hamming)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("rerank", ["client", "milvus"])
def test_other_metrics(make_gallery, tmp_path, metric, rerank):
    g = make_gallery(32, n=800, nq=10)
    ref, mil = _pair(g, str(tmp_path / "m.db"), "g", metric=metric, rerank=rerank)
    a = ref.search(g.qfeatures, k=5, radius=3, query_codes=g.qcodes)
    b = mil.search(g.qfeatures, k=5, radius=3, query_codes=g.qcodes)
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(b.n_candidates, a.n_candidates)
    mil.close()


def test_get_features_codes_contains(pair):
    g, ref, mil = pair
    pick = g.ids[[7, 3, 7, 100]]
    np.testing.assert_array_equal(mil.get_features(pick), ref.get_features(pick))
    np.testing.assert_array_equal(mil.get_codes(pick), g.codes[[7, 3, 7, 100]])
    assert len(mil) == N_ITEMS
    assert int(g.ids[0]) in mil and g.ids[5] in mil
    assert -1 not in mil and "a" not in mil and 1.5 not in mil


# -- mutation and reattaching ------------------------------------------------------------------------------
def test_remove_then_reopen(make_gallery, tmp_path):
    g = make_gallery(32, n=1500, nq=20)
    uri = str(tmp_path / "m.db")
    ref, mil = _pair(g, uri, "g", metric="l2")
    gone = g.ids[::3]
    assert mil.remove(gone) == ref.remove(gone) == gone.size
    assert len(mil) == len(ref) == g.ids.size - gone.size
    assert g.ids[0] not in mil and g.ids[1] in mil
    before = mil.search(g.qfeatures, k=5, radius=3, query_codes=g.qcodes)
    expect = ref.search(g.qfeatures, k=5, radius=3, query_codes=g.qcodes)
    np.testing.assert_array_equal(before.ids, expect.ids)
    mil.close()

    again = MilvusHashIndex(g.features.shape[1], uri=uri, collection="g")  # bits, metric from the collection
    assert (again.bits, again.metric, len(again)) == (32, "l2", len(ref))
    after = again.search(g.qfeatures, k=5, radius=3, query_codes=g.qcodes)
    np.testing.assert_array_equal(after.ids, expect.ids)
    np.testing.assert_allclose(after.scores, expect.scores, rtol=1e-5, atol=1e-5)
    lims, ids, _ = again.range_search(g.qcodes, 2)
    rlims, rids, _ = ref.range_search(g.qcodes, 2)
    assert _sets(lims, ids) == _sets(rlims, rids)
    # automatic ids continue after the largest id still stored (removed ones are not remembered)
    top = np.setdiff1d(g.ids, gone).max()
    new = again.add_codes(g.codes[:2], g.features[:2])
    np.testing.assert_array_equal(new, [top + 1, top + 2])
    again.close()


def test_default_hasher_is_stored_and_checked(make_gallery, tmp_path):
    g = make_gallery(32, n=600, nq=10, dim=40)
    uri = str(tmp_path / "m.db")
    first = MilvusHashIndex(40, bits=32, uri=uri, collection="h")
    first.add(g.features)  # fits ITQ on this batch, then creates the collection with it
    expect = first.search(g.qfeatures, k=4)
    first.close()
    again = MilvusHashIndex(40, uri=uri, collection="h")
    np.testing.assert_array_equal(again.hasher.weight, first.hasher.weight)
    np.testing.assert_array_equal(again.search(g.qfeatures, k=4).ids, expect.ids)
    other = ITQHasher(40, 32).fit(g.features[::-1] + 0.5)
    with pytest.raises(ModelMismatchError):
        MilvusHashIndex(40, other, uri=uri, collection="h")
    with pytest.raises(InputError):
        again.fit(g.features)  # refitting would invalidate the stored codes
    again.close()


def test_reattach_mismatch(make_gallery, tmp_path):
    g = make_gallery(32, n=300, nq=5)
    uri = str(tmp_path / "m.db")
    _, mil = _pair(g, uri, "g")
    mil.close()
    with pytest.raises(IndexFormatError):
        MilvusHashIndex(g.features.shape[1] + 1, uri=uri, collection="g")
    with pytest.raises(IndexFormatError):
        MilvusHashIndex(g.features.shape[1], bits=64, uri=uri, collection="g")
    with pytest.raises(IndexFormatError):
        MilvusHashIndex(g.features.shape[1], uri=uri, collection="g", metric="l2")
    # a collection hashindex did not create
    client = MilvusClient(uri)
    schema = MilvusClient.create_schema(auto_id=False, description="someone else's")
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    params = client.prepare_index_params()
    params.add_index("v", index_type="FLAT", metric_type="L2")
    client.create_collection("foreign", schema=schema, index_params=params)
    with pytest.raises(IndexFormatError, match="not a hashindex collection"):
        MilvusHashIndex(4, uri=uri, collection="foreign")


# -- bad input: the same exceptions as HashIndex -------------------------------------------------------
BAD_CALLS = {
    "wrong dim": lambda ix, g: ix.add_codes(g.codes[:2], g.features[:2, :-1]),
    "1-d queries": lambda ix, g: ix.search(g.qfeatures[0], k=3),
    "nan features": lambda ix, g: ix.add_codes(g.codes[:1], np.full((1, g.features.shape[1]), np.nan, np.float32)),
    "int features": lambda ix, g: ix.add_codes(g.codes[:1], np.ones((1, g.features.shape[1]), np.int64)),
    "zero vector": lambda ix, g: ix.add_codes(g.codes[:1], np.zeros((1, g.features.shape[1]), np.float32)),
    "k=0": lambda ix, g: ix.search(g.qfeatures, k=0, query_codes=g.qcodes),
    "k=True": lambda ix, g: ix.search(g.qfeatures, k=True, query_codes=g.qcodes),
    "negative radius": lambda ix, g: ix.search(g.qfeatures, radius=-1, query_codes=g.qcodes),
    "float radius": lambda ix, g: ix.range_search(g.qcodes, 1.5),
    "radius and candidates": lambda ix, g: ix.search(g.qfeatures, radius=1, candidates=5, query_codes=g.qcodes),
    "codes too wide": lambda ix, g: ix.add_codes(np.zeros((1, g.bits // 8 + 1), np.uint8), g.features[:1]),
    "codes not uint8": lambda ix, g: ix.add_codes(g.codes[:1].astype(np.int32), g.features[:1]),
    "row mismatch": lambda ix, g: ix.add_codes(g.codes[:2], g.features[:3]),
    "query code rows": lambda ix, g: ix.search(g.qfeatures, query_codes=g.qcodes[:-1]),
    "repeated ids": lambda ix, g: ix.add_codes(g.codes[:2], g.features[:2], np.array([10**9, 10**9])),
    "present id": lambda ix, g: ix.add_codes(g.codes[:1], g.features[:1], g.ids[:1]),
    "float ids": lambda ix, g: ix.add_codes(g.codes[:1], g.features[:1], np.array([0.5])),
    "remove unknown": lambda ix, g: ix.remove(np.array([g.ids[0], -7])),
    "features unknown": lambda ix, g: ix.get_features([-7]),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_like_hashindex(pair, case):
    g, ref, mil = pair
    call = BAD_CALLS[case]
    with pytest.raises(Exception) as expected:
        call(ref, g)
    with pytest.raises(Exception) as got:
        call(mil, g)
    assert type(got.value) is type(expected.value), f"{case}: {got.value!r} vs {expected.value!r}"
    assert len(mil) == N_ITEMS  # nothing was added or removed


def test_empty_index_and_unsupported_index_type(tmp_path):
    mil = MilvusHashIndex(8, bits=16, uri=str(tmp_path / "m.db"), collection="e", metric="ip")
    q, qc = np.ones((2, 8), np.float32), np.zeros((2, 2), np.uint8)
    res = mil.search(q, k=3, query_codes=qc)
    assert (res.ids == -1).all() and (res.hamming == -1).all() and np.isneginf(res.scores).all()
    np.testing.assert_array_equal(res.n_candidates, [0, 0])
    lims, ids, _ = mil.range_search(qc, 16)
    assert lims.tolist() == [0, 0, 0] and ids.size == 0
    assert len(mil) == 0 and 0 not in mil
    # milvus-lite has only BIN_FLAT: the refusal is an InputError naming the index type
    ivf = MilvusHashIndex(8, bits=16, uri=str(tmp_path / "m.db"), collection="ivf", index_type="BIN_IVF_FLAT")
    with pytest.raises(InputError, match="BIN_IVF_FLAT"):
        ivf.add_codes(qc, q)
    mil.close()


def test_result_cap_is_refused_not_truncated(tmp_path):
    """More than MILVUS_MAX_TOPK items within the radius: Milvus would truncate, the index refuses."""
    n, dim = MILVUS_MAX_TOPK + 16, 64  # 4.3 MB of rows: also more than milvus-lite takes in one request
    mil = MilvusHashIndex(dim, bits=8, uri=str(tmp_path / "m.db"), collection="cap", metric="l2")
    codes = np.zeros((n, 1), np.uint8)
    codes[-8:] = 0xFF
    mil.add_codes(codes, np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32))
    assert len(mil) == n
    with pytest.raises(InputError, match="16384"):
        mil.range_search(np.zeros((1, 1), np.uint8), 0)
    with pytest.raises(InputError, match="16384"):
        mil.search(np.ones((1, dim), np.float32), k=2, candidates=MILVUS_MAX_TOPK + 1, query_codes=codes[:1])
    lims, ids, ham = mil.range_search(np.full((1, 1), 0xFF, np.uint8), 7)  # 8 exact matches
    assert lims[-1] == 8 and (ham == 0).all()
    mil.close()
