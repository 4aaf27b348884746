"""One suite for every index backend: the front (serving/front.py) behaves the same on each.

Each test runs on HashIndex (FAISS) and MilvusHashIndex (milvus-lite), against numpy brute
force: Hamming distances by popcount of XOR, scores in float64 (conftest.py oracles).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hashindex import HashIndex, make_hasher
from hashindex.core.errors import (
    HashIndexError,
    InputError,
    NotFittedError,
    UnknownIdError,
    UnsupportedError,
)
from hashindex.serving.front import DEFAULT_BITS, IndexFront

def _data(n=600, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_both_backends_share_the_front(make_index):
    index = make_index(32, bits=32)
    assert isinstance(index, IndexFront)
    for name in ("add", "add_codes", "add_images", "search", "search_images", "range_search", "remove",
                 "get_features", "get_codes", "fit", "ids", "codes", "memory_usage"):  # fmt: skip
        assert hasattr(index, name), name


def test_default_hashers(make_index):
    """HashIndex ranks asymmetrically by default, where a residual refinement stage pays
    (benchmarks/README.md); Milvus ranks by Hamming distance, and keeps one ITQ stage."""
    if make_index.backend == "faiss":
        assert (make_index(128).hasher.kind, make_index(128).hasher.stages) == ("residual", (DEFAULT_BITS, DEFAULT_BITS // 2))
        assert make_index(256).bits == 192 and make_index(256).hasher.stages == ()  # one stage holds 192 bits of 256-d
        assert make_index(40).hasher.stages == (40, 16)
        assert make_index(256, bits=DEFAULT_BITS).hasher.kind == "itq"  # bits one stage holds: plain ITQ
    else:
        assert (make_index(256).bits, make_index(256).hasher.kind) == (DEFAULT_BITS, "itq")
        assert make_index(40).bits == 40


def test_add_search_remove_against_brute_force(make_index, oracle):
    x = _data()
    index = make_index(32, bits=32)
    ids = index.add(x, ids=np.arange(600) * 3 + 7)
    assert len(index) == 600 and (ids == np.arange(600) * 3 + 7).all()
    assert sorted(index.ids.tolist()) == sorted(ids.tolist())
    np.testing.assert_array_equal(index.get_codes(ids[[5, 1]]), index.hasher.encode(x[[5, 1]]))
    np.testing.assert_allclose(index.get_features(ids[[3]]), x[[3]], atol=1e-6)

    q = x[:20] + 0.01 * np.random.default_rng(1).standard_normal((20, 32)).astype(np.float32)
    qcodes = index.hasher.encode(q / np.linalg.norm(q, axis=1, keepdims=True))
    ham = oracle.hamming(qcodes, index.get_codes(ids))
    res = index.search(q, k=5, radius=8)
    scores = oracle.scores(q, x, "cosine")
    for i in range(20):
        cand = np.flatnonzero(ham[i] <= 8)
        assert res.n_candidates[i] == cand.size
        oracle.assert_topk(res.ids[i], res.scores[i], ids[cand], scores[i, cand], 5, "cosine")
        got = res.ids[i][res.ids[i] >= 0]
        np.testing.assert_array_equal(res.hamming[i][: got.size], ham[i, np.searchsorted(ids, got)])

    lims, hit_ids, hit_ham = index.range_search(qcodes, 8)
    for i in range(20):
        assert set(hit_ids[lims[i] : lims[i + 1]].tolist()) == set(ids[ham[i] <= 8].tolist())

    assert index.remove(ids[:10]) == 10
    assert len(index) == 590 and ids[0] not in index and ids[10] in index
    res = index.search(q, k=5, radius=index.bits)
    assert not np.isin(res.ids, ids[:10]).any()
    with pytest.raises(UnknownIdError):
        index.remove(ids[:11])  # one already gone: nothing removed
    assert len(index) == 590


def test_bad_input_is_refused_the_same_way(make_index):
    x = _data()
    index = make_index(32, bits=32)
    index.add(x)
    for call in (
        lambda: index.add(x[:, :16]),
        lambda: index.add(x, ids=np.arange(600)),  # already present
        lambda: index.search(x[:2], k=0),
        lambda: index.search(x[:2], radius=-1),
        lambda: index.search(x[:2], radius=1, candidates=3),
        lambda: index.search(x[:2], ranking="cosine"),
        lambda: index.get_features([10_000]),
        lambda: index.fit(x),  # codes exist: refitting would invalidate them
    ):
        with pytest.raises(HashIndexError):
            call()
    assert len(index) == 600


def test_asymmetric_ranking_or_a_clear_unsupported_error(make_index):
    x = _data()
    index = make_index(32, bits=32)
    index.add(x)
    if isinstance(index, HashIndex):
        res = index.search(x[:5], k=1, ranking="asymmetric")
        assert (res.ids[:, 0] == np.arange(5)).all()
        assert {"codes", "ids", "features", "asymmetric_scan"} <= set(index.memory_usage())
    else:
        with pytest.raises(UnsupportedError, match="Milvus"):
            index.search(x[:5], k=1, ranking="asymmetric")
        with pytest.raises(UnsupportedError, match="Milvus"):
            index.memory_usage()


def test_bad_ids_on_the_first_add_leave_the_hasher_unfitted(make_index):
    index = make_index(32, bits=32)
    with pytest.raises(InputError):
        index.add(_data(), ids=-np.arange(1, 601))
    assert not index.hasher.is_fitted and len(index) == 0
    with pytest.raises(NotFittedError):
        index.add(_data(n=10))  # too few rows to fit on
    assert not index.hasher.is_fitted


def test_hasher_by_name_and_bad_bits(make_index):
    assert make_index(32, hasher="pca", bits=16).hasher.kind == "pca"
    with pytest.raises(InputError, match="unknown hasher"):
        make_index(32, hasher="nope")
    with pytest.raises(InputError, match="multiple of 8"):
        make_index(32, bits=0)
    with pytest.raises(InputError, match="hasher object"):
        make_index(32, hasher=3.5)
    with pytest.raises(InputError, match="disagrees"):
        make_index(32, hasher=make_hasher("itq", 32, 16), bits=32)


def test_images_need_a_fused_model(make_index):
    index = make_index(32, bits=32)
    with pytest.raises(InputError, match="fused model"):
        index.add_images(np.zeros((1, 3, 8, 8), np.float32))


def test_concurrent_first_adds_fit_the_hasher_once():
    """Two threads making the first add on an unfitted index: every item finds itself."""
    for trial in range(5):
        index = HashIndex(32, bits=32, backend="flat")
        parts = [_data(n=400, seed=10 * trial + t) for t in range(2)]
        barrier = threading.Barrier(2)
        errors = []

        def add(part):
            barrier.wait()
            try:
                index.add(part)
            except HashIndexError as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=add, args=(p,)) for p in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        allx = np.concatenate(parts)
        stored = index.get_codes(index.ids)
        np.testing.assert_array_equal(stored, index.hasher.encode(index.get_features(index.ids)))
        res = index.search(allx, k=1, radius=0)
        assert (res.scores[:, 0] > 0.999).all()
