"""Limits shared by both backends through the front (issue 12, items 5, 6, 7, 10, 11), and the
Milvus backend's own (collection names, deletes, releasing the .db on close).

Each front test runs on HashIndex (FAISS) and MilvusHashIndex (milvus-lite); oracles are numpy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hashindex import make_hasher
from hashindex.core.errors import HashIndexError, InputError
from hashindex.core.validation import MAX_ID, MAX_K

REPO = Path(__file__).resolve().parents[1]
DIM, BITS = 16, 16


def _hasher():
    return make_hasher("itq", DIM, BITS).fit(np.random.default_rng(9).standard_normal((400, DIM)).astype(np.float32))


@pytest.fixture
def limits_index(make_index):
    """``limits_index(**kw)``: a fitted 16-bit index of dimension 16 on the parametrised backend."""
    return lambda **kw: make_index(DIM, _hasher(), **kw)


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _state(index):
    return len(index), sorted(index.ids.tolist())


# -- item 5: ids --------------------------------------------------------------------------------


def test_the_largest_id_is_refused_when_no_next_auto_id_would_exist(limits_index):
    index = limits_index()
    with pytest.raises(InputError, match="2\\*\\*63 - 2"):
        index.add(_x(1), ids=[2**63 - 1])
    assert _state(index) == (0, [])
    np.testing.assert_array_equal(index.add(_x(1), ids=[MAX_ID]), [MAX_ID])
    with pytest.raises(InputError, match="automatic ids"):  # was an untyped OverflowError
        index.add(_x(2, seed=1))
    assert _state(index) == (1, [MAX_ID])


def test_unsigned_ids_at_or_above_2_63_are_refused_not_wrapped(limits_index):
    index = limits_index()
    with pytest.raises(InputError, match="int64"):
        index.add(_x(2), ids=np.array([1, 2**63], dtype=np.uint64))
    with pytest.raises(InputError, match="int64"):
        index.remove(np.array([2**63 + 1], dtype=np.uint64))
    assert _state(index) == (0, [])
    np.testing.assert_array_equal(index.add(_x(2), ids=np.array([5, 2**62], dtype=np.uint64)), [5, 2**62])


# -- item 6: k and radius ---------------------------------------------------------------------------


def test_k_beyond_the_cap_is_refused_before_allocating(limits_index):
    index = limits_index()
    index.add(_x(40))
    for k in (MAX_K + 1, 2**40):
        with pytest.raises(InputError, match="radius=bits"):
            index.search(_x(2, seed=3), k=k)
    with pytest.raises(InputError, match="smaller batches"):
        index.search(_x(300, seed=3), k=MAX_K)


@pytest.mark.parametrize("radius", [BITS, BITS + 1, 2**31 - 2, 2**31 - 1, 10**6, 2**40])
def test_a_radius_beyond_the_code_length_means_every_item(limits_index, radius):
    index = limits_index()
    ids = index.add(_x(40))
    q = _x(3, seed=4)
    res = index.search(q, k=50, radius=radius)
    np.testing.assert_array_equal(res.n_candidates, [40, 40, 40])
    for row in res.ids:
        assert sorted(row[row >= 0].tolist()) == sorted(ids.tolist())
    lims, found, _ = index.range_search(q, radius)
    np.testing.assert_array_equal(np.diff(lims), [40, 40, 40])
    assert sorted(found[: lims[1]].tolist()) == sorted(ids.tolist())


# -- item 7: huge finite rows ---------------------------------------------------------------------


def test_rows_near_float32_max_are_normalised_not_zeroed(limits_index):
    index = limits_index()
    x = _x(30)
    x[:10] *= 1e20  # |x|^2 overflows float32
    x[10:20] *= 1e-25  # |x|^2 underflows
    ids = index.add(x)
    stored = index.get_features(ids)
    oracle = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(stored, oracle, atol=1e-6)
    res = index.search(x[:3], k=1, radius=BITS)
    np.testing.assert_array_equal(res.ids[:, 0], ids[:3])


# -- item 10 / 11: empty and ragged input ----------------------------------------------------------


def test_empty_query_arrays_give_empty_results(limits_index):
    index = limits_index()
    index.add(_x(20))
    empty = np.empty((0, DIM), np.float32)
    for kw in ({}, {"radius": 2}, {"candidates": 5}):
        res = index.search(empty, k=4, **kw)
        assert res.ids.shape == res.scores.shape == res.hamming.shape == (0, 4) and res.n_candidates.shape == (0,)
    lims, found, ham = index.range_search(empty, 3)
    assert lims.tolist() == [0] and found.size == ham.size == 0
    lims, _, _ = index.range_search(np.empty((0, BITS // 8), np.uint8), 3)
    assert lims.tolist() == [0]


@pytest.mark.parametrize(
    "call",
    [
        lambda ix: ix.add([[0.1] * DIM, [0.2] * (DIM - 1)]),
        lambda ix: ix.search([[0.1] * DIM, [0.2] * 3], k=2),
        lambda ix: ix.range_search([[0.1] * DIM, [0.2]], 2),
        lambda ix: ix.remove([[1, 2], [3]]),
        lambda ix: ix.add(_x(2), ids=[[1], [2, 3]]),
    ],
    ids=["add", "search", "range_search", "remove", "ids"],
)
def test_ragged_lists_are_input_errors(limits_index, call):
    index = limits_index()
    index.add(_x(10))
    before = _state(index)
    with pytest.raises(InputError):
        call(index)
    assert _state(index) == before


# -- Milvus only (item 10) ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["has space", "1starts-with-digit", "dash-ed", "x" * 256, "é"])
def test_invalid_collection_names_are_input_errors(name, tmp_path, milvus_class):
    with pytest.raises(InputError, match="collection"):
        milvus_class(DIM, _hasher(), uri=str(tmp_path / "m.db"), collection=name)


def test_after_close_another_process_can_open_the_file(tmp_path, milvus_class):
    uri = str(tmp_path / "m.db")
    first = milvus_class(DIM, _hasher(), uri=uri, collection="c")
    first.add(_x(25))
    second = milvus_class(DIM, uri=uri, collection="c")  # same file, same process
    first.close()
    assert len(second) == 25  # closing one index leaves the other's server running
    second.close()
    second.close()  # idempotent
    child = (
        "import sys, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, %r)\n"
        "from hashindex.serving.milvus import MilvusHashIndex\n"
        "ix = MilvusHashIndex(%d, uri=%r, collection='c'); print(len(ix)); ix.close()" % (str(REPO), DIM, uri)
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "25"


def test_remove_is_one_delete_request_up_to_the_documented_size(tmp_path, monkeypatch, milvus_class):
    from hashindex.serving.milvus import MilvusLimits

    index = milvus_class(DIM, _hasher(), uri=str(tmp_path / "m.db"), collection="c")
    try:
        index.add(_x(20_000))
        calls = []
        real = index._client.delete
        monkeypatch.setattr(index._client, "delete", lambda *a, **kw: (calls.append(len(kw["ids"])), real(*a, **kw))[1])
        assert index.remove(np.arange(0, 12_000)) == 12_000  # more than a fetch chunk (8,192)
        assert calls == [12_000] and len(index) == 8_000
        assert MilvusLimits().delete_ids == 100_000
    finally:
        index.close()
    small = milvus_class(DIM, uri=str(tmp_path / "m.db"), collection="c", limits=MilvusLimits(delete_ids=3_000))
    try:
        calls = []
        real = small._client.delete
        monkeypatch.setattr(small._client, "delete", lambda *a, **kw: (calls.append(len(kw["ids"])), real(*a, **kw))[1])
        small.remove(np.arange(12_000, 19_000))
        assert calls == [3_000, 3_000, 1_000] and len(small) == 1_000  # documented chunking beyond delete_ids
    finally:
        small.close()


def test_errors_are_hashindex_errors_on_a_closed_or_foreign_file(tmp_path, milvus_class):
    (tmp_path / "not-a-db.db").write_text("hello")
    with pytest.raises(HashIndexError):
        milvus_class(DIM, _hasher(), uri=str(tmp_path / "missing-dir" / "m.db"), collection="c")
