"""Compact rerank stores (serving/store.py CompactStore, HashIndex(rerank=...)), chunked adds and
memory_usage, against numpy oracles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashindex import HashIndex
from hashindex.core.errors import InputError, UnknownIdError
from hashindex.serving import front
from hashindex.serving.store import CompactStore

DIM, BITS = 64, 64


def _gallery(n_people=1500, per=4, seed=0, dim=DIM):
    rng = np.random.default_rng(seed)
    people = rng.standard_normal((n_people, dim))
    x = (np.repeat(people, per, axis=0) + 0.6 * rng.standard_normal((n_people * per, dim))).astype(np.float32)
    q = (people[:200] + 0.6 * rng.standard_normal((200, dim))).astype(np.float32)
    return x, q


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["int8", "int6", "float16"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_compact_scores_within_quantisation_bounds(kind, metric):
    x, q = _gallery()
    x, q = _unit(x).astype(np.float32), _unit(q).astype(np.float32)
    store = CompactStore(kind, DIM)
    store.append(x, x[:0])
    rng = np.random.default_rng(1)
    pos = rng.integers(0, len(x), (q.shape[0], 30))
    pos[:, -3:] = -1  # padding
    got = store.score(q, pos, metric)
    xs = x[np.maximum(pos, 0)].astype(np.float64)
    qq = q.astype(np.float64)[:, None, :]
    exact = ((xs - qq) ** 2).sum(-1) if metric == "l2" else (xs * qq).sum(-1)
    err = store.error_bound().astype(np.float64)  # per dimension: |decoded - x| <= err (int8), err*|x| (float16)
    per_dim = err * np.abs(xs) if kind == "float16" else np.broadcast_to(err, xs.shape)
    if metric == "l2":  # |(a+e)^2 - a^2| <= 2|a||e| + e^2, a = x - q
        bound = (2 * np.abs(xs - qq) * per_dim + per_dim**2).sum(-1)
    else:
        bound = (np.abs(qq) * per_dim).sum(-1)
    valid = pos >= 0
    assert (np.abs(got - exact)[valid] <= bound[valid] + 1e-5).all()
    assert np.isinf(got[~valid]).all()
    # the quantisation really happened (int8 / int6 are not float32 in disguise)
    if kind != "float16":
        assert np.abs(got - exact)[valid].max() > 1e-5


def test_int8_rerank_keeps_float32_recall_and_returns_exact_scores():
    x, q = _gallery(n_people=2500)
    ref = HashIndex(DIM, bits=BITS, partitions=None, rerank="float32")
    ref.add(x)
    comp = HashIndex(DIM, bits=BITS, partitions=None, rerank="int8")
    comp.fit(x)
    comp.add(x)
    # the true nearest neighbour by brute force
    truth = np.argmax(_unit(q) @ _unit(x).T, axis=1)
    a = ref.search(q, k=10, candidates=300)
    b = comp.search(q, k=10, candidates=300)
    ra, rb = (a.ids[:, 0] == truth).mean(), (b.ids[:, 0] == truth).mean()
    assert rb >= ra - 0.01, (ra, rb)
    assert (a.ids[:, 0] == b.ids[:, 0]).mean() >= 0.98
    assert a.exact_scores and b.exact_scores
    # the final scores are the float32 ones of the returned rows, best first
    feats = comp.get_features(b.ids[:, :10].ravel()).reshape(len(q), 10, DIM)
    want = np.einsum("qkd,qd->qk", feats.astype(np.float64), _unit(q))
    np.testing.assert_allclose(b.scores, want, atol=1e-5)
    assert (np.diff(b.scores, axis=1) <= 1e-7).all()


@pytest.mark.parametrize("kind", ["int8", "int6", "float16"])
def test_a_compact_store_returns_the_float32_top_k_of_the_same_candidates(kind):
    """Near-ties around the k-th score (many samples per person, so the 10th and 11th neighbours
    are close) are settled on the float rows: the compact index returns what a float32 rerank of
    the same candidates returns."""
    x, q = _gallery(n_people=300, per=12, seed=3)
    ref = HashIndex(DIM, bits=BITS, partitions=None, rerank="float32")
    ref.add(x)
    comp = HashIndex(DIM, ref.hasher, partitions=None, rerank=kind)
    comp.add(x)
    a = ref.search(q, k=10, candidates=400)
    b = comp.search(q, k=10, candidates=400)
    same = np.mean([len(set(r) & set(s)) / 10 for r, s in zip(a.ids, b.ids)])
    assert same >= 0.998, same
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)


@pytest.mark.parametrize("group_size", [1, 2])
def test_grouped_search_on_a_compact_store_returns_the_float32_groups(group_size):
    x, q = _gallery(n_people=300)
    labels = np.repeat(np.arange(300), 4)
    ref = HashIndex(DIM, bits=BITS, partitions=None, rerank="float32")
    ref.add(x, labels=labels)
    index = HashIndex(DIM, ref.hasher, partitions=None, rerank="int6")
    index.add(x, labels=labels)
    want = ref.search(q, k=3, candidates=400, group_by="label", group_size=group_size)
    res = index.search(q, k=3, candidates=400, group_by="label", group_size=group_size)
    assert res.exact_scores
    np.testing.assert_array_equal(res.labels, want.labels)
    np.testing.assert_array_equal(res.ids, want.ids)
    valid = res.ids >= 0  # a label with one item left in the candidates pads its second slot
    got = (index.get_features(res.ids[valid]) * _unit(q)[np.nonzero(valid)[0]]).sum(axis=1)
    np.testing.assert_allclose(res.scores[valid], got, atol=1e-5)


@pytest.mark.parametrize("kind", ["float32", "int8", "int6", "float16"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip_of_each_store(kind, mmap, tmp_path):
    x, q = _gallery(n_people=400)
    index = HashIndex(DIM, bits=BITS, partitions=None, rerank=kind)
    index.add(x)
    index.remove(np.arange(0, 1600, 7))  # the stores compact together
    before = index.search(q, k=5)
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest.get("rerank", "float32") == kind
    assert ("rerank_codes.npy" in manifest["files"]) == (kind != "float32")
    again = HashIndex.load(tmp_path / "ix", mmap=mmap)
    assert again.rerank == kind
    after = again.search(q, k=5)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_allclose(before.scores, after.scores, atol=1e-6)
    if kind != "float32":
        np.testing.assert_array_equal(index._compact.rows.array, again._compact.rows.array)
    np.testing.assert_array_equal(index.get_features(index.ids[:10]), again.get_features(index.ids[:10]))


def test_removed_rows_leave_the_compact_store_aligned():
    x, q = _gallery(n_people=400)
    index = HashIndex(DIM, bits=BITS, partitions=None, rerank="int8")
    index.add(x)
    gone = np.arange(0, 1600, 3)
    index.remove(gone)
    res = index.search(x[:50], k=3)
    assert not np.isin(res.ids, gone).any()
    keep = np.setdiff1d(np.arange(1600), gone)
    # the compact row of every remaining id decodes close to its feature
    decoded = index._compact.decode(np.arange(len(index)))
    np.testing.assert_allclose(decoded, _unit(x[keep]), atol=float(index._compact.error_bound().max()) + 1e-6)


def test_memory_usage_parts_match_array_sizes():
    x, q = _gallery(n_people=500)
    index = HashIndex(DIM, bits=BITS, partitions=None, rerank="int8")
    index.add(x)
    n = len(index)
    usage = index.memory_usage()
    assert usage["codes"] == n * BITS // 8
    assert usage["ids"] == n * 8
    assert usage["features"] == n * DIM * 4
    assert usage["rerank"] == n * DIM + 2 * DIM * 4  # codes + the per-dimension range
    assert "binary_flat" not in usage and "asymmetric_scan" not in usage  # nothing built yet
    index.search(q[:3], k=3, ranking="hamming", candidates=20)
    assert index.memory_usage()["binary_flat"] == n * BITS // 8
    index.search(q[:3], k=3, ranking="asymmetric")
    assert index.memory_usage()["asymmetric_scan"] >= n * BITS // 8
    index.get_features(index.ids[:3])
    assert "id_lookup" not in index.memory_usage()  # auto ids are stored in order: no sorted copy
    shuffled = HashIndex(DIM, index.hasher, partitions=None)
    ids = np.random.default_rng(1).permutation(n) * 3 + 7
    shuffled.add(x, ids=ids)
    np.testing.assert_array_equal(shuffled.get_features(ids[::-1][:50]), index.get_features(np.arange(n)[::-1][:50]))
    assert shuffled.memory_usage()["id_lookup"] == 16 * n
    np.testing.assert_allclose(index.get_features(np.array([n - 1, 0, 5])), _unit(x[[n - 1, 0, 5]]), atol=1e-6)
    with pytest.raises(UnknownIdError):
        index.get_features(np.array([n]))


def test_chunked_add_from_a_memory_map_matches_one_add(tmp_path, monkeypatch):
    x, q = _gallery(n_people=600)
    path = tmp_path / "x.npy"
    np.save(path, x)
    one = HashIndex(DIM, bits=BITS, partitions=None, rerank="int8")
    one.fit(x)
    monkeypatch.setattr(front, "ADD_CHUNK_ROWS", 500)
    chunked = HashIndex(DIM, hasher=one.hasher, partitions=None, rerank="int8")
    chunked.add(np.load(path, mmap_mode="r"), ids=np.arange(len(x)) + 10, progress=False)
    monkeypatch.setattr(front, "ADD_CHUNK_ROWS", 1 << 30)
    one.add(x, ids=np.arange(len(x)) + 10)
    np.testing.assert_array_equal(one.codes, chunked.codes)
    np.testing.assert_array_equal(one.ids, chunked.ids)
    a, b = one.search(q, k=5), chunked.search(q, k=5)
    np.testing.assert_array_equal(a.ids, b.ids)
    # one reservation: the stores hold exactly the rows (no doubling)
    assert chunked.memory_usage()["features"] == len(x) * DIM * 4


def test_chunked_add_checks_every_chunk_before_storing_any(monkeypatch):
    x, _ = _gallery(n_people=600)
    x[2100, 3] = np.nan
    monkeypatch.setattr(front, "ADD_CHUNK_ROWS", 500)
    index = HashIndex(DIM, bits=BITS, partitions=None)
    with pytest.raises(InputError, match="NaN"):
        index.add(x)
    assert len(index) == 0 and not index.hasher.is_fitted
    with pytest.raises(InputError):
        index.add(x[:, :10])


def test_unknown_rerank_kind_is_refused():
    with pytest.raises(InputError, match="rerank"):
        HashIndex(DIM, rerank="int4")


def test_a_loaded_int8_index_reads_float_rows_from_disk_only(tmp_path):
    x, q = _gallery(n_people=1000)
    index = HashIndex(DIM, bits=BITS, partitions=None, rerank="int8")
    index.add(x)
    index.save(tmp_path / "ix")
    loaded = HashIndex.load(tmp_path / "ix", mmap=True)
    res = loaded.search(q, k=10)
    assert res.exact_scores
    # the rescored rows came through pread: no page of the mapped float store is resident
    assert loaded.memory_usage()["features"] == 0
    want = np.einsum("qkd,qd->qk", loaded.get_features(res.ids.ravel()).reshape(len(q), 10, DIM), _unit(q))
    np.testing.assert_allclose(res.scores, want, atol=1e-5)
    np.testing.assert_array_equal(loaded.get_features(res.ids[:, 0]), index.get_features(res.ids[:, 0]))
    assert loaded.memory_usage()["features"] == 0  # get_features reads rows too
    # a float32 index maps and touches its store while reranking, and says so
    index32 = HashIndex(DIM, hasher=index.hasher, partitions=None, rerank="float32")
    index32.add(x)
    index32.save(tmp_path / "ix32")
    loaded32 = HashIndex.load(tmp_path / "ix32", mmap=True)
    loaded32.search(q, k=10)
    assert loaded32.memory_usage()["features"] > 0


@pytest.mark.parametrize("kind", ["int8", "int6", "float16"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_compact_top_k_matches_a_numpy_ranking_of_the_decoded_rows(kind, metric):
    # oracle: the rows decoded by FAISS's ScalarQuantizer.decode, scored and sorted by numpy
    x, q = _gallery(n_people=300)
    store = CompactStore(kind, DIM)
    store.append(_unit(x).astype(np.float32), x[:0])
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 60, q.shape[0])
    counts[:3] = (0, 1, 5)  # no candidates, fewer than k
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    positions = rng.integers(0, len(x), lims[-1]).astype(np.int64)
    k = 12
    slots, scores = store.top(q, lims, positions, k, metric)
    decoded = store.decode(positions).astype(np.float64)
    for i in range(q.shape[0]):
        lo, hi = lims[i], lims[i + 1]
        rows, qi = decoded[lo:hi], q[i].astype(np.float64)
        exact = ((rows - qi) ** 2).sum(1) if metric == "l2" else rows @ qi
        want = np.argsort(exact if metric == "l2" else -exact, kind="stable")[:k]
        n = min(k, hi - lo)
        assert (slots[i, n:] == -1).all() and np.isinf(scores[i, n:]).all()
        np.testing.assert_allclose(scores[i, :n], exact[want], rtol=1e-5, atol=1e-5)
        # the same rows up to near-ties (float32 against float64 sums)
        got_scores = exact[slots[i, :n] - lo]
        np.testing.assert_allclose(np.sort(got_scores), np.sort(exact[want]), rtol=1e-5, atol=1e-5)
        assert (np.diff(scores[i, :n]) >= 0).all() if metric == "l2" else (np.diff(scores[i, :n]) <= 0).all()
    # score() gives every candidate the score top() ranked it by
    pos = rng.integers(-1, len(x), (q.shape[0], 40))
    full = store.score(q, pos, metric)
    d = store.decode(np.maximum(pos, 0).ravel()).astype(np.float64).reshape(*pos.shape, DIM)
    qq = q.astype(np.float64)[:, None, :]
    oracle = ((d - qq) ** 2).sum(-1) if metric == "l2" else (d * qq).sum(-1)
    np.testing.assert_allclose(full[pos >= 0], oracle[pos >= 0], rtol=1e-5, atol=1e-5)
    assert np.isinf(full[pos < 0]).all()


def test_an_index_saved_before_rerank_existed_loads_as_float32(tmp_path, rewrite_manifest):
    x, q = _gallery(n_people=200)
    index = HashIndex(DIM, bits=BITS, partitions=None, rerank="float32")
    index.add(x)
    index.save(tmp_path / "ix")
    rewrite_manifest(tmp_path / "ix", lambda m: m.pop("rerank", None))  # what main wrote
    again = HashIndex.load(tmp_path / "ix")
    assert again.rerank == "float32" and again._compact is None
    np.testing.assert_array_equal(again.search(q, k=3).ids, index.search(q, k=3).ids)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: m.update(rerank="int4"), "rerank"),
        (lambda m: m.update(rerank="float32"), "rerank_codes.npy"),  # files of a compact store without one
        (lambda m: m.pop("rerank"), "rerank_codes.npy"),
        (lambda m: m["files"].pop("rerank_params.npy") and None, "rerank_params.npy"),
        (lambda m: m.update(rerank="float16"), "rerank_codes.npy"),  # int8's files are the wrong size for float16
    ],
)
def test_a_manifest_whose_rerank_store_does_not_match_its_files_is_refused(tmp_path, rewrite_manifest, mutate, match):
    from hashindex.core.errors import IndexFormatError

    x, _ = _gallery(n_people=200)
    index = HashIndex(DIM, bits=BITS, partitions=None, rerank="int8")
    index.add(x)
    index.save(tmp_path / "ix")
    rewrite_manifest(tmp_path / "ix", mutate)
    with pytest.raises(IndexFormatError, match=match):
        HashIndex.load(tmp_path / "ix")


def test_an_empty_int8_index_saves_and_learns_its_range_on_the_first_add(tmp_path):
    x, q = _gallery(n_people=200)
    index = HashIndex(DIM, bits=BITS, partitions=None, rerank="int8")
    index.fit(x)
    index.save(tmp_path / "ix")
    again = HashIndex.load(tmp_path / "ix")
    assert len(again) == 0 and not again._compact.trained
    again.add(x)
    assert again._compact.trained
    assert (again.search(q, k=3).ids[:, 0] >= 0).all()


def test_a_fit_during_a_chunked_add_bumps_the_hasher_version(monkeypatch):
    x, _ = _gallery(n_people=600)
    monkeypatch.setattr(front, "ADD_CHUNK_ROWS", 500)
    index = HashIndex(DIM, bits=BITS, partitions=None)
    before = index._hasher_version
    index.add(x, progress=False)  # chunked: the first add fits the default hasher on a sample
    assert index.hasher.is_fitted and index._hasher_version == before + 2
    np.testing.assert_array_equal(index.codes, index.hasher.encode(_unit(x).astype(np.float32)))


def test_a_chunked_first_add_too_small_to_fit_says_so(monkeypatch):
    from hashindex.core.errors import NotFittedError

    x = _gallery(n_people=200)[0][:80]  # 80 rows, 2 * bits = 128 needed
    monkeypatch.setattr(front, "ADD_CHUNK_ROWS", 30)
    index = HashIndex(DIM, bits=BITS, partitions=None)
    with pytest.raises(NotFittedError, match="2 \\* bits"):
        index.add(x, progress=False)
    assert len(index) == 0


@pytest.mark.parametrize("partitions, how", [(None, {}), (16, {"nprobe": 8, "candidates": 200})])
def test_a_loaded_index_holds_one_copy_of_its_codes(tmp_path, partitions, how):
    """The mapped code store is read once to build the scanner or the lists (which keep their own
    copy) and then leaves the resident set; the results' Hamming distances read their rows by pread
    and agree with a numpy popcount of the saved codes."""
    x, q = _gallery(n_people=2000)
    index = HashIndex(DIM, bits=BITS, partitions=partitions)  # the default compact store
    index.add(x)
    index.save(tmp_path / "ix")
    loaded = HashIndex.load(tmp_path / "ix", mmap=True)
    res = loaded.search(q, k=10, **how)
    usage = loaded.memory_usage()
    assert usage["codes"] == 0 and usage["features"] == 0
    assert usage["asymmetric_scan" if partitions is None else "partition_lists"] >= len(x) * BITS // 8
    saved = np.load(tmp_path / "ix" / "codes.npy")
    stored_at = {i: p for p, i in enumerate(np.load(tmp_path / "ix" / "ids.npy").tolist())}
    rows = saved[np.vectorize(stored_at.get)(res.ids)]
    qcodes = loaded.hasher.encode(_unit(q).astype(np.float32))
    want = np.unpackbits(qcodes[:, None, :] ^ rows, axis=2).sum(axis=2)
    np.testing.assert_array_equal(res.hamming, want)
    np.testing.assert_array_equal(res.ids, index.search(q, k=10, **how).ids)


@pytest.mark.parametrize("kind", ["int8", "int6"])
def test_rows_outside_the_range_widen_it_and_every_row_is_re_encoded(kind):
    """A range learnt from the first rows would clip later, longer rows: appending them refits
    the range on every row and re-encodes the old ones, so every decoded row stays within the
    error bound of its float row (the oracle: the float rows themselves)."""
    rng = np.random.default_rng(4)
    first = rng.standard_normal((50, DIM)).astype(np.float32)
    later = 6 * rng.standard_normal((70, DIM)).astype(np.float32)  # well outside the first range
    store = CompactStore(kind, DIM)
    store.append(first, first[:0])
    assert not store.covers(later)
    store.append(later, first)
    rows = np.concatenate([first, later])
    assert store.covers(rows) and len(store) == len(rows)
    err = np.abs(store.decode(np.arange(len(rows))) - rows)
    assert (err <= store.error_bound() + 1e-6).all()
    # a row inside the range appends without re-encoding the others
    before = store.rows.array.copy()
    store.append(rows[:3] * 0.5, rows)
    np.testing.assert_array_equal(store.rows.array[: len(rows)], before)


def test_an_ip_index_whose_later_rows_are_longer_still_returns_the_exact_top_k():
    """What a hypothesis state machine found: two tiny adds, the second with longer rows than the
    first (metric ip), then k=1. The compact store's range must cover both."""
    for seed in range(10):  # a range learnt from the first add alone got 5 seeds in 20 wrong
        rng = np.random.default_rng(seed)
        index = HashIndex(DIM, bits=BITS, metric="ip", partitions=None)  # the default compact store
        index.fit(rng.standard_normal((400, DIM)).astype(np.float32))
        a = 0.2 * rng.standard_normal((2, DIM)).astype(np.float32)
        b = 3.0 * rng.standard_normal((2, DIM)).astype(np.float32)
        index.add(a)
        index.add(b)
        q = rng.standard_normal((5, DIM)).astype(np.float32)
        res = index.search(q, k=1, radius=BITS)
        best = (q.astype(np.float64) @ np.concatenate([a, b]).astype(np.float64).T).max(axis=1)
        np.testing.assert_allclose(res.scores[:, 0], best, rtol=1e-5, atol=1e-5)


def test_a_chunked_add_learns_the_range_of_the_whole_input(monkeypatch):
    """The range covers every row of a chunked add before its first chunk is stored, so no chunk
    re-encodes the ones before it."""
    from hashindex.serving import store as store_module

    x, _ = _gallery(n_people=600)
    x[-1] *= 50  # the last chunk holds the longest row
    monkeypatch.setattr(front, "ADD_CHUNK_ROWS", 500)
    calls = []
    real = store_module.CompactStore.cover
    monkeypatch.setattr(store_module.CompactStore, "cover", lambda self, e, s: calls.append(self.covers(e)) or real(self, e, s))
    index = HashIndex(DIM, bits=BITS, metric="ip", partitions=None, rerank="int6")
    index.add(x, progress=False)
    assert calls[0] is False and all(calls[1:])  # widened once (from the whole input's extent), then covered
    assert index._compact.covers(x)


@pytest.fixture(params=["c", "python"])
def file_reader(request, monkeypatch):
    """FileRows reads through the compiled loop of preads (file_rows.c) and, where that is not
    built, through os.pread: both run the same tests."""
    from hashindex.serving import store

    if request.param == "c" and store._FILE_ROWS is None:
        pytest.skip("file_rows.c is not built here (no C compiler)")
    if request.param == "python":
        monkeypatch.setattr(store, "_FILE_ROWS", None)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8])
def test_file_rows_read_the_rows_the_mapped_array_holds(tmp_path, dtype, file_reader):
    """FileRows (the rescored float rows and the results' codes of a loaded index, read by
    pread) against the memory-mapped array itself: any order, repeats, none; float rows come
    back as float32, codes as stored, in an array the caller may write to."""
    from hashindex.serving.store import FileRows

    rng = np.random.default_rng(4)
    a = (rng.standard_normal((300, 24)) * 50).astype(dtype)
    np.save(tmp_path / "rows.npy", a)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    with open(tmp_path / "rows.npy", "rb") as f:
        rows = FileRows.of(mapped, f)
    pos = np.array([299, 0, 17, 17, 150, 3])
    got = rows.take(pos)
    assert got.dtype == (np.float32 if a.dtype.kind == "f" else a.dtype)
    np.testing.assert_array_equal(got, np.asarray(mapped[pos]).astype(got.dtype))
    assert got.flags.writeable
    assert rows[np.array([], np.int64)].shape == (0, 24)


def test_file_rows_of_a_file_truncated_after_loading_raise_index_format_error(tmp_path, file_reader):
    from hashindex.core.errors import IndexFormatError
    from hashindex.serving.store import FileRows

    a = np.arange(100 * 8, dtype=np.float32).reshape(100, 8)
    np.save(tmp_path / "rows.npy", a)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    with open(tmp_path / "rows.npy", "rb") as f:
        rows = FileRows.of(mapped, f)
    offset = mapped.offset
    del mapped
    with open(tmp_path / "rows.npy", "r+b") as f:
        f.truncate(offset + 50 * 8 * 4 + 10)  # row 50 cut short, rows 51.. gone
    np.testing.assert_array_equal(rows.take(np.array([49, 0])), a[[49, 0]])
    with pytest.raises(IndexFormatError, match="row 50 of a 100-row index file"):
        rows.take(np.array([3, 50]))
    with pytest.raises(IndexFormatError, match="row 99"):
        rows.take(np.array([99]))


def test_distinct_top_keeps_rows_until_k_distinct_scores():
    """``top(..., distinct=True)``: a row repeated among a query's candidates (the same item
    found twice, or stored twice) counts once toward k; oracle: numpy over the decoded rows."""
    x, q = _gallery(n_people=300)
    store = CompactStore("int6", DIM)
    store.append(_unit(x).astype(np.float32), x[:0])
    decoded = store.decode(np.arange(len(x))).astype(np.float64)
    qi = q[0].astype(np.float64)
    best = np.argsort(-(decoded @ qi), kind="stable")[:4]
    # the best row five times, then the next three once each, then the rest
    positions = np.concatenate([[best[0]] * 5, best[1:], np.setdiff1d(np.arange(len(x)), best)]).astype(np.int64)
    lims = np.array([0, len(positions)], np.int64)
    plain, _ = store.top(q[:1], lims, positions, 3, "ip")
    assert set(positions[plain[0]]) == {best[0]}  # three copies of one row fill k = 3
    slots, scores = store.top(q[:1], lims, positions, 3, "ip", distinct=True)
    kept = positions[slots[0][slots[0] >= 0]]
    assert set(best[:3]) <= set(kept)
    assert len(np.unique(scores[0][slots[0] >= 0])) >= 3
    np.testing.assert_allclose(np.sort(scores[0][slots[0] >= 0])[::-1][:1], decoded[best[0]] @ qi, rtol=1e-5)


def test_an_item_stored_many_times_does_not_hide_the_exact_best():
    """Found by the property test: copies of one row whose int6 score tops the true best's
    (their exact score does not) took all 3k rows the exact rescoring reads, so a search over
    every item returned a worse row; oracle: numpy float64 over every stored row."""
    from hashindex.serving.hashers import make_hasher

    dim = 8
    hasher = make_hasher("itq", dim, 8).fit(np.random.default_rng(0).standard_normal((200, dim)).astype(np.float32))

    def rows(n, seed):
        return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)

    index = HashIndex(dim, hasher, metric="ip", backend="flat")
    added = [rows(n, s) for n, s in [(1, 0), (1, 0), (2, 2), (3, 1), (5, 0)]]
    for x in added:
        index.add(x)
    x = np.concatenate(added).astype(np.float64)
    q = rows(3, 104)
    for k in (1, 2, 3):
        res = index.search(q, k=k, radius=8)
        want = np.sort(q.astype(np.float64) @ x.T, axis=1)[:, ::-1][:, :k]
        np.testing.assert_allclose(res.scores, want, rtol=1e-5, atol=1e-5)
