"""HashIndex add / remove / ids, and searches running concurrently with mutation.

Oracles: a freshly built index on the remaining items (removal must be indistinguishable
from never having added), numpy brute force, and bookkeeping of every id ever added.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from hashindex.serving.index import HashIndex

BACKENDS = ["flat", "hash", "multihash", "auto"]


def _assert_same_results(a, b):
    for field in ("ids", "scores", "hamming", "n_candidates"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def _range_pairs(index, qcodes, r):
    lims, ids, ham = index.range_search(qcodes, r)
    return [sorted(zip(i.tolist(), h.tolist())) for i, h in zip(np.split(ids, lims[1:-1]), np.split(ham, lims[1:-1]))]


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_equals_fresh_index_on_remaining_items(backend, bits, make_gallery, build_index, oracle, no_hang):
    g = make_gallery(bits)
    index = build_index(g, backend)
    rng = np.random.default_rng(7)
    dist = oracle.hamming(g.qcodes, g.codes)
    index.search(g.qfeatures, k=5, radius=2, query_codes=g.qcodes)  # builds the accelerators first

    # remove a random third, plus every close hit of the first queries (so removal matters)
    removed = set(g.ids[rng.random(len(g.ids)) < 0.3].tolist()) | set(g.ids[(dist[:5] <= 2).any(0)].tolist())
    assert index.remove(np.array(sorted(removed))) == len(removed)
    keep = ~np.isin(g.ids, list(removed))
    assert len(index) == keep.sum()

    # then more items arrive (new ids), as in a live gallery
    extra = make_gallery(bits, n=300, seed=99)
    extra_ids = extra.ids + 10**7
    index.add_codes(extra.codes, extra.features, extra_ids)

    fresh = HashIndex(16, bits=bits, backend=backend)
    fresh.add_codes(g.codes[keep], g.features[keep], g.ids[keep])
    fresh.add_codes(extra.codes, extra.features, extra_ids)

    all_codes = np.concatenate([g.codes[keep], extra.codes])
    all_ids = np.concatenate([g.ids[keep], extra_ids])
    dist_left = oracle.hamming(g.qcodes, all_codes)
    for r in (0, 1, 2, 3):
        got = _range_pairs(index, g.qcodes, r)
        assert got == _range_pairs(fresh, g.qcodes, r)
        for q, pairs in enumerate(got):
            hit = dist_left[q] <= r
            assert pairs == sorted(zip(all_ids[hit].tolist(), dist_left[q, hit].tolist()))
            assert not removed & {i for i, _ in pairs}
        res = index.search(g.qfeatures, k=5, radius=r, query_codes=g.qcodes)
        _assert_same_results(res, fresh.search(g.qfeatures, k=5, radius=r, query_codes=g.qcodes))
        assert not removed & set(res.ids.ravel().tolist())
    # the removed close hits really were hits before
    assert (dist[:5] <= 2).sum() > 0

    res = index.search(g.qfeatures, k=5, candidates=40, query_codes=g.qcodes)
    _assert_same_results(res, fresh.search(g.qfeatures, k=5, candidates=40, query_codes=g.qcodes))
    assert not removed & set(res.ids.ravel().tolist())
    # queries that kept a cluster around them, so default-mode radii stay small
    q = np.flatnonzero((dist_left <= 5).sum(1) >= 30)
    assert q.size >= 10
    res = no_hang(index.search, g.qfeatures[q], k=3, query_codes=g.qcodes[q], ranking="hamming")  # multi-probe
    _assert_same_results(res, fresh.search(g.qfeatures[q], k=3, query_codes=g.qcodes[q], ranking="hamming"))
    assert not removed & set(res.ids.ravel().tolist())

    np.testing.assert_array_equal(index.ids, fresh.ids)
    np.testing.assert_array_equal(index.codes, fresh.codes)
    np.testing.assert_array_equal(index.get_features(all_ids), fresh.get_features(all_ids))


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_everything_then_search(backend, make_gallery, build_index):
    g = make_gallery(32, n=200, n_centers=4, nq=4)
    index = build_index(g, backend)
    index.search(g.qfeatures, k=3, radius=1, query_codes=g.qcodes)
    index.remove(g.ids)
    assert len(index) == 0
    res = index.search(g.qfeatures, k=3, radius=3, query_codes=g.qcodes)
    assert (res.ids == -1).all()
    lims, ids, _ = index.range_search(g.qcodes, 3)
    assert ids.size == 0


def test_auto_ids_continue_after_explicit_and_removed_ids(make_gallery):
    g = make_gallery(32, n=100, n_centers=4, nq=2)
    index = HashIndex(16, bits=32, metric="ip", backend="flat")
    first = index.add_codes(g.codes[:10], g.features[:10])
    np.testing.assert_array_equal(first, np.arange(10))
    assert first.dtype == np.int64
    second = index.add_codes(g.codes[10:15], g.features[10:15])
    np.testing.assert_array_equal(second, np.arange(10, 15))
    explicit = index.add_codes(g.codes[15:17], g.features[15:17], ids=np.array([1000, 40], dtype=np.int32))
    np.testing.assert_array_equal(explicit, [1000, 40])
    after = index.add_codes(g.codes[17:19], g.features[17:19])
    np.testing.assert_array_equal(after, [1001, 1002])
    # a removed id is never handed out again (results cached by id stay unambiguous)
    index.remove([1002])
    np.testing.assert_array_equal(index.add_codes(g.codes[19:20], g.features[19:20]), [1003])
    assert len(index) == 19
    np.testing.assert_array_equal(index.ids, [*range(15), 1000, 40, 1001, 1003])


def test_get_features_and_codes_follow_the_requested_order(make_gallery):
    g = make_gallery(64, n=500, n_centers=10, nq=2)
    for metric in ("cosine", "ip"):
        index = HashIndex(16, bits=64, metric=metric, backend="flat")
        index.add_codes(g.codes, g.features, g.ids)
        order = np.random.default_rng(1).permutation(len(g.ids))[:50]
        expected = g.features[order]
        if metric == "cosine":
            expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(index.get_features(g.ids[order]), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(index.get_codes(g.ids[order]), g.codes[order])
        np.testing.assert_array_equal(index.get_features(int(g.ids[3]))[0], index.get_features(g.ids[3:4])[0])


def test_contains_len_and_ids_copy(make_gallery):
    g = make_gallery(32, n=50, n_centers=2, nq=2)
    index = HashIndex(16, bits=32, backend="flat")
    assert len(index) == 0 and 0 not in index
    index.add_codes(g.codes, g.features, g.ids)
    assert len(index) == 50
    assert all(int(i) in index for i in g.ids) and np.int64(g.ids[0]) in index
    absent = int(g.ids.max()) + 1
    assert absent not in index and -1 not in index
    assert "abc" not in index and None not in index and 2**70 not in index
    index.remove(g.ids[:5])
    assert len(index) == 45 and int(g.ids[0]) not in index and int(g.ids[5]) in index
    ids = index.ids
    ids[:] = -7
    np.testing.assert_array_equal(index.ids, g.ids[5:])
    with pytest.raises(ValueError):
        index.codes[0, 0] = 1  # read-only view


def test_contains_does_not_round_non_integer_ids(make_gallery):
    """``1.5 in index`` must not be answered by id 1 (nor True by id 1)."""
    g = make_gallery(32, n=10, n_centers=2, nq=2)
    index = HashIndex(16, bits=32, backend="flat")
    index.add_codes(g.codes, g.features)  # ids 0..9
    existing, non_integer = 1, 1.5
    assert existing in index
    assert non_integer not in index


# -- concurrency ---------------------------------------------------------------------------
def _run_threads(targets, seconds):
    stop = threading.Event()
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn(stop)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)
                stop.set()

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a thread is stuck"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("backend", ["flat", "hash", "multihash"])
def test_searches_during_add_and_remove(backend, make_gallery, oracle):
    """No exception, and every returned (id, hamming, score) is true of an item that existed."""
    g = make_gallery(64, n=2000)
    extra = make_gallery(64, n=4000, seed=5)
    extra_ids = extra.ids + 10**7
    code_of = {int(i): c for i, c in zip(np.concatenate([g.ids, extra_ids]), np.concatenate([g.codes, extra.codes]))}
    feat_of = {int(i): f for i, f in zip(np.concatenate([g.ids, extra_ids]), np.concatenate([g.features, extra.features]))}
    index = HashIndex(16, bits=64, metric="ip", backend=backend)
    index.add_codes(g.codes, g.features, g.ids)
    ever_added = set(g.ids.tolist())
    n_searches = [0]

    def writer(stop):
        rng = np.random.default_rng(0)
        for start in range(0, len(extra_ids), 100):
            if stop.is_set():
                return
            sl = slice(start, start + 100)
            ever_added.update(extra_ids[sl].tolist())  # before the add: readers may see them at once
            index.add_codes(extra.codes[sl], extra.features[sl], extra_ids[sl])
            live = index.ids
            index.remove(rng.choice(live, size=60, replace=False))

    def reader(seed):
        def run(stop):
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                q = rng.integers(0, len(g.qcodes), size=4)
                r = int(rng.integers(0, 4))
                res = index.search(g.qfeatures[q], k=5, radius=r, query_codes=g.qcodes[q])
                for row, qi in enumerate(q):
                    for i, h, s in zip(res.ids[row], res.hamming[row], res.scores[row]):
                        if i < 0:
                            continue
                        assert int(i) in ever_added
                        assert h == oracle.hamming(g.qcodes[qi : qi + 1], code_of[int(i)][None])[0, 0] <= r
                        assert abs(s - float(feat_of[int(i)] @ g.qfeatures[qi])) < 1e-4
                lims, ids, ham = index.range_search(g.qcodes[q], r)
                assert set(ids.tolist()) <= ever_added and (ham <= r).all()
                n_searches[0] += 1

        return run

    _run_threads([writer, reader(1), reader(2), reader(3)], seconds=1.5)
    assert n_searches[0] > 10
    # after the dust settles the index is consistent with brute force
    dist = oracle.hamming(g.qcodes, index.codes)
    lims, ids, _ = index.range_search(g.qcodes, 3)
    live = index.ids
    for q in range(len(g.qcodes)):
        assert sorted(ids[lims[q] : lims[q + 1]].tolist()) == sorted(live[dist[q] <= 3].tolist())


@pytest.mark.parametrize("backend", ["hash", "multihash"])
def test_concurrent_radii_equal_sequential_results(backend, make_gallery):
    """nflip is a field of the FAISS index: searches at different radii must not race on it."""
    g = make_gallery(64)
    index = HashIndex(16, bits=64, metric="ip", backend=backend)
    index.add_codes(g.codes, g.features, g.ids)
    radii = (0, 1, 2, 3, 5)
    expected = {r: index.search(g.qfeatures, k=8, radius=r, query_codes=g.qcodes) for r in radii}
    expected_range = {r: index.range_search(g.qcodes, r) for r in radii}
    # the radii give different answers, so a race would be visible
    assert len({int(expected[r].n_candidates.sum()) for r in radii}) == len(radii)

    def searcher(r):
        def run(stop):
            while not stop.is_set():
                _assert_same_results(index.search(g.qfeatures, k=8, radius=r, query_codes=g.qcodes), expected[r])
                for a, b in zip(index.range_search(g.qcodes, r), expected_range[r]):
                    np.testing.assert_array_equal(a, b)

        return run

    _run_threads([searcher(r) for r in radii], seconds=1.0)


def test_membership_and_lookups_during_add_and_remove(make_gallery):
    """``in``, get_features and get_codes race with add / remove: no exception, and every
    lookup returns the row of the id asked for (a stale id table would return another's)."""
    rng = np.random.default_rng(0)
    n, dim = 20000, 8
    feats = rng.standard_normal((3 * n, dim)).astype(np.float32)
    codes = rng.integers(0, 256, (3 * n, 4), dtype=np.uint8)
    index = HashIndex(dim, bits=32, metric="ip", backend="flat")
    index.add_codes(codes[:n], feats[:n], np.arange(n))
    counts = {"contains": 0, "lookups": 0}

    def writer(stop):
        nxt, wrng = n, np.random.default_rng(1)
        while not stop.is_set() and nxt + 10 <= 3 * n:
            # many small mutations: each one invalidates the id table a prober may be rebuilding
            index.add_codes(codes[nxt : nxt + 10], feats[nxt : nxt + 10], np.arange(nxt, nxt + 10))
            nxt += 10
            index.remove(wrng.choice(index.ids, 10, replace=False))
            if nxt % 100:
                continue
            live = index.ids
            sample = wrng.choice(live, 100)
            np.testing.assert_array_equal(index.get_features(sample), feats[sample])
            np.testing.assert_array_equal(index.get_codes(sample), codes[sample])
            counts["lookups"] += 1

    def prober(stop):
        prng = np.random.default_rng(2)
        while not stop.is_set():
            _ = int(prng.integers(0, 3 * n)) in index
            counts["contains"] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so unlocked sections interleave
    try:
        _run_threads([writer, prober, prober, prober], seconds=2.0)
    finally:
        sys.setswitchinterval(old)
    assert counts["contains"] > 100 and counts["lookups"] > 3
    live = index.ids
    np.testing.assert_array_equal(index.get_features(live), feats[live])
    assert all(int(i) in index for i in live[:100])
