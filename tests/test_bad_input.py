"""Every bad input raises its documented exception and leaves the index exactly as it was.

The snapshot compared before / after covers len, ids, codes, stored features, the hasher's
codes for the probe queries and a full search result, so a half-applied mutation shows up.
"""

from __future__ import annotations

import numpy as np
import pytest

from hashindex.core.errors import DuplicateIdError, InputError, NotFittedError, UnknownIdError
from hashindex.serving.hashers import ITQHasher
from hashindex.serving.index import HashIndex

DIM, BITS, N = 24, 16, 400


@pytest.fixture
def index_and_probe():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((10, DIM))
    x = (centers[rng.integers(0, 10, N)] + 0.1 * rng.standard_normal((N, DIM))).astype(np.float32)
    index = HashIndex(DIM, ITQHasher(DIM, BITS), metric="cosine", backend="multihash")
    index.add(x, ids=np.arange(N) * 3 + 1)
    probe = (centers[:5] + 0.1 * rng.standard_normal((5, DIM))).astype(np.float32)
    return index, probe


def _snapshot(index: HashIndex, probe: np.ndarray) -> dict[str, np.ndarray]:
    res = index.search(probe, k=5, radius=2)
    return {
        "len": np.array(len(index)),
        "ids": index.ids.copy(),
        "codes": np.array(index.codes),
        "features": index.get_features(index.ids),
        "probe_codes": index.hasher.encode(probe / np.linalg.norm(probe, axis=1, keepdims=True)),
        "res_ids": res.ids,
        "res_scores": res.scores,
        "res_candidates": res.n_candidates,
    }


def _ok_rows(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, DIM)).astype(np.float32)


def _with(value, at, rows):
    x = _ok_rows(rows)
    x[at] = value
    return x


CASES = {
    # add: features
    "add wrong dimension": (lambda ix, p: ix.add(_ok_rows(3)[:, :-1]), InputError, "dimension"),
    "add 1-D vector": (lambda ix, p: ix.add(_ok_rows(1)[0]), InputError, "2-D"),
    "add 3-D array": (lambda ix, p: ix.add(_ok_rows(4).reshape(2, 2, DIM)), InputError, "2-D"),
    "add int features": (lambda ix, p: ix.add(np.ones((3, DIM), dtype=np.int64)), InputError, "floating"),
    "add bool features": (lambda ix, p: ix.add(np.ones((3, DIM), dtype=bool)), InputError, "floating"),
    "add NaN features": (lambda ix, p: ix.add(_with(np.nan, (2, 5), 4)), InputError, "NaN"),
    "add inf features": (lambda ix, p: ix.add(_with(np.inf, (0, 0), 4)), InputError, "inf"),
    "add zero vector (cosine)": (lambda ix, p: ix.add(_with(0.0, 1, 3)), InputError, "zero"),
    # add: ids
    "add ids repeated in batch": (lambda ix, p: ix.add(_ok_rows(3), ids=[10**6, 10**6 + 1, 10**6]), DuplicateIdError, "repeat"),
    "add ids already present": (lambda ix, p: ix.add(_ok_rows(3), ids=[10**6, 4, 10**6 + 2]), DuplicateIdError, "already"),
    "add ids wrong length": (lambda ix, p: ix.add(_ok_rows(3), ids=[10**6, 10**6 + 1]), InputError, "length"),
    "add float ids": (lambda ix, p: ix.add(_ok_rows(2), ids=[1.5, 2.5]), InputError, "integer"),
    "add negative id (-1 is the result padding)": (lambda ix, p: ix.add(_ok_rows(2), ids=[-1, 10**6]), InputError, "id"),
    # add_codes
    "add_codes wrong width": (
        lambda ix, p: ix.add_codes(np.zeros((2, BITS // 8 + 1), np.uint8), _ok_rows(2), ids=[10**6, 10**6 + 1]),
        InputError,
        "bytes",
    ),
    "add_codes wrong dtype": (
        lambda ix, p: ix.add_codes(np.zeros((2, BITS // 8), np.int64), _ok_rows(2), ids=[10**6, 10**6 + 1]),
        InputError,
        "uint8",
    ),
    "add_codes unpacked bits": (
        lambda ix, p: ix.add_codes(np.zeros((2, BITS), np.uint8), _ok_rows(2), ids=[10**6, 10**6 + 1]),
        InputError,
        "bytes",
    ),
    "add_codes row count mismatch": (
        lambda ix, p: ix.add_codes(np.zeros((3, BITS // 8), np.uint8), _ok_rows(2)),
        InputError,
        "rows",
    ),
    "add_codes duplicate id": (
        lambda ix, p: ix.add_codes(np.zeros((1, BITS // 8), np.uint8), _ok_rows(1), ids=[1]),
        DuplicateIdError,
        "already",
    ),
    # remove / lookups
    "remove unknown id": (lambda ix, p: ix.remove([1, 4, 5]), UnknownIdError, "5"),
    "remove unknown scalar": (lambda ix, p: ix.remove(2), UnknownIdError, "2"),
    "remove float ids": (lambda ix, p: ix.remove([1.0, 4.0]), InputError, "integer"),
    "get_features unknown id": (lambda ix, p: ix.get_features([1, 2]), UnknownIdError, "2"),
    "get_codes unknown id": (lambda ix, p: ix.get_codes([10**9]), UnknownIdError, "not in the index"),
    # search
    "search k=0": (lambda ix, p: ix.search(p, k=0), InputError, "k"),
    "search k<0": (lambda ix, p: ix.search(p, k=-3), InputError, "k"),
    "search k float": (lambda ix, p: ix.search(p, k=2.5), InputError, "k"),
    "search negative radius": (lambda ix, p: ix.search(p, k=3, radius=-1), InputError, "radius"),
    "search float radius": (lambda ix, p: ix.search(p, k=3, radius=1.5), InputError, "radius"),
    "search radius and candidates": (lambda ix, p: ix.search(p, k=3, radius=2, candidates=10), InputError, "not both"),
    "search candidates=0": (lambda ix, p: ix.search(p, k=3, candidates=0), InputError, "candidates"),
    "search NaN query": (lambda ix, p: ix.search(_with(np.nan, (0, 3), 2), k=3), InputError, "NaN"),
    "search inf query": (lambda ix, p: ix.search(_with(-np.inf, (1, 0), 2), k=3, radius=1), InputError, "inf"),
    "search wrong dimension": (lambda ix, p: ix.search(p[:, :-2], k=3), InputError, "dimension"),
    "search 1-D query": (lambda ix, p: ix.search(p[0], k=3), InputError, "2-D"),
    "search int query": (lambda ix, p: ix.search(np.ones((2, DIM), np.int32), k=3), InputError, "floating"),
    "search query_codes wrong width": (
        lambda ix, p: ix.search(p, k=3, query_codes=np.zeros((len(p), BITS // 8 * 2), np.uint8)),
        InputError,
        "bytes",
    ),
    "search query_codes row mismatch": (
        lambda ix, p: ix.search(p, k=3, query_codes=np.zeros((len(p) + 1, BITS // 8), np.uint8)),
        InputError,
        "rows",
    ),
    "range_search negative radius": (lambda ix, p: ix.range_search(p, -2), InputError, "radius"),
    "range_search codes wrong width": (
        lambda ix, p: ix.range_search(np.zeros((2, BITS // 8 + 2), np.uint8), 1),
        InputError,
        "bytes",
    ),
    "range_search NaN query": (lambda ix, p: ix.range_search(_with(np.nan, (0, 0), 2), 1), InputError, "NaN"),
    "range_search int query": (lambda ix, p: ix.range_search(np.ones((2, DIM), np.int64), 1), InputError, "floating"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_and_changes_nothing(case, index_and_probe):
    index, probe = index_and_probe
    op, exc, words = CASES[case]
    before = _snapshot(index, probe)
    assert (before["res_candidates"] > 0).all()  # the probe search really finds things
    with pytest.raises(exc, match=words):
        op(index, probe)
    after = _snapshot(index, probe)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=f"{case}: {key} changed")
    # the index still accepts good input afterwards
    new = index.add(_ok_rows(2))
    assert len(index) == N + 2 and set(new.tolist()).isdisjoint(before["ids"].tolist())


def test_errors_are_also_builtin_exceptions(index_and_probe):
    """Callers that do not know hashindex can catch ValueError / KeyError."""
    index, probe = index_and_probe
    with pytest.raises(ValueError):
        index.search(probe, k=0)
    with pytest.raises(ValueError):
        index.add(_ok_rows(1), ids=[1])
    with pytest.raises(KeyError):
        index.remove([2])


def test_unfitted_hasher(tmp_path):
    index = HashIndex(DIM, ITQHasher(DIM, BITS))
    q = _ok_rows(3)
    with pytest.raises(NotFittedError):
        index.search(q, k=2)
    with pytest.raises(NotFittedError):
        index.range_search(q, 1)
    with pytest.raises(NotFittedError, match=str(2 * BITS)):
        index.add(_ok_rows(2 * BITS - 1))  # too few rows to fit ITQ on the first batch
    assert len(index) == 0 and not index.hasher.is_fitted
    # fitted by its first big-enough batch
    np.testing.assert_array_equal(index.add(_ok_rows(2 * BITS)), np.arange(2 * BITS))
    assert index.hasher.is_fitted


def test_constructor_rejects_bad_configuration():
    with pytest.raises(InputError, match="metric"):
        HashIndex(DIM, metric="hamming")
    with pytest.raises(InputError, match="backend"):
        HashIndex(DIM, backend="hnsw")
    with pytest.raises(InputError, match="feature_dtype"):
        HashIndex(DIM, feature_dtype="int8")
    with pytest.raises(InputError, match="dim"):
        HashIndex(0)
    with pytest.raises(InputError, match="disagrees"):
        HashIndex(DIM, ITQHasher(DIM, BITS), bits=2 * BITS)
    with pytest.raises(InputError, match="dimension"):
        HashIndex(DIM + 8, ITQHasher(DIM, BITS))
    with pytest.raises(InputError, match="not both"):
        HashIndex(DIM, ITQHasher(DIM, BITS), encoder=ITQHasher(DIM, BITS))
