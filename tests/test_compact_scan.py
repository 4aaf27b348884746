"""The compact store's scoring kernel (hashindex/serving/compact_scan.c) and the selection on top.

Oracles: FAISS's own ``ScalarQuantizer.decode`` of the same codes, scored in float64 by numpy;
FAISS's scanner (the path taken where the kernel is not built); a Python loop over sorted rows
for the selection.
"""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from hashindex.serving import compact_scan
from hashindex.serving.store import CompactStore, select_top

pytestmark = pytest.mark.skipif(
    not compact_scan.available("int6"), reason="the compact-store kernel is not built here (no C compiler)"
)

ISAS = list(range(compact_scan.isa() + 1))  # plain C, and each SIMD kernel this CPU runs


def _store(kind, dim, n, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * rng.uniform(0.2, 2.0, dim)).astype(np.float32)
    store = CompactStore(kind, dim)
    store.append(x, x[:0])
    return store, rng


def _oracle(store, q, lims, positions, metric):
    rows = store.decode(positions).astype(np.float64)
    qq = np.repeat(q.astype(np.float64), np.diff(lims), axis=0)
    return ((rows - qq) ** 2).sum(1) if metric == "l2" else (rows * qq).sum(1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["int6", "int8"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dim", [128, 37, 20, 7])  # 16-dim chunks, then tails: 5, 4 and a partial group
def test_scores_match_faiss_decoding(isa, kind, metric, dim):
    store, rng = _store(kind, dim, 3000, seed=dim)
    q = rng.standard_normal((9, dim)).astype(np.float32)
    counts = rng.integers(0, 400, 9)
    counts[:2] = (0, 1)
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    positions = rng.integers(0, 3000, lims[-1]).astype(np.int64)
    positions[-1] = 2999  # the last row: loads must stay inside the store
    with compact_scan.isa_cap(isa):
        got = compact_scan.scores(q, store.params, store.rows.array, kind, metric, lims, positions)
    want = _oracle(store, q, lims, positions, metric)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("isa", ISAS)
def test_the_last_row_of_a_store_that_ends_on_a_page(isa, tmp_path):
    """A store whose codes end exactly at a page boundary, mapped from a file: reading the last
    row one byte too far would fault (the kernel's loads are masked to the row)."""
    dim, kind = 128, "int6"  # 96-byte rows: 128 rows fill three pages
    store, rng = _store(kind, dim, 128, seed=3)
    path = tmp_path / "codes.bin"
    path.write_bytes(store.rows.array.tobytes())
    assert path.stat().st_size % mmap.PAGESIZE == 0
    codes = np.memmap(path, dtype=np.uint8, mode="r", shape=(128, 96))
    q = rng.standard_normal((1, dim)).astype(np.float32)
    lims, positions = np.array([0, 2], np.int64), np.array([127, 126], np.int64)
    with compact_scan.isa_cap(isa):
        got = compact_scan.scores(q, store.params, codes, kind, "ip", lims, positions)
    np.testing.assert_allclose(got, _oracle(store, q, lims, positions, "ip"), rtol=1e-5, atol=1e-5)


def test_a_position_outside_the_store_or_mismatched_arrays_are_refused():
    store, rng = _store("int6", 16, 50, seed=4)
    q = rng.standard_normal((1, 16)).astype(np.float32)
    for bad in (50, -1):
        with pytest.raises(ValueError, match="outside the store"):
            compact_scan.scores(q, store.params, store.rows.array, "int6", "ip", np.array([0, 1]), np.array([bad]))
    with pytest.raises(ValueError, match="disagree"):
        compact_scan.scores(q, store.params[:16], store.rows.array, "int6", "ip", np.array([0, 1]), np.array([3]))
    with pytest.raises(ValueError, match="size mismatch"):  # 8-bit rows read as 6-bit
        compact_scan.scores(q, store.params, np.zeros((50, 16), np.uint8), "int6", "ip", np.array([0, 1]), np.array([3]))


def test_an_empty_store_scores_nothing():
    """No candidates: nothing is read (an untrained store has no parameters yet)."""
    store = CompactStore("int6", 16)
    q = np.ones((3, 16), np.float32)
    got = compact_scan.scores(q, store.params, store.rows.array, "int6", "ip", np.zeros(4, np.int64), np.empty(0, np.int64))
    assert got.shape == (0,)
    slots, scores = store.top(q, np.zeros(4, np.int64), np.empty(0, np.int64), 5, "ip", distinct=True)
    assert (slots == -1).all() and np.isneginf(scores).all() and slots.shape == (3, 5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_top_through_the_kernel_and_through_faiss_agree(metric, monkeypatch):
    store, rng = _store("int6", 64, 5000, seed=5)
    q = rng.standard_normal((40, 64)).astype(np.float32)
    lims = np.concatenate([[0], np.cumsum(rng.integers(0, 300, 40))]).astype(np.int64)
    positions = rng.integers(0, 5000, lims[-1]).astype(np.int64)
    ours = store.top(q, lims, positions, 30, metric, distinct=True)
    monkeypatch.setattr(compact_scan, "available", lambda kind: False)
    theirs = store.top(q, lims, positions, 30, metric, distinct=True)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5, atol=1e-5)
    # the same rows, but for near-ties the two sums may order differently
    same = (ours[0] == theirs[0]).mean()
    assert same > 0.99, same


def _select_oracle(scores, lims, positions, k, metric, distinct):
    """Per query: its rows sorted by (score, position), kept until k rows (or k distinct scores)."""
    out = []
    for i in range(len(lims) - 1):
        lo, hi = lims[i], lims[i + 1]
        key = scores[lo:hi] if metric == "l2" else -scores[lo:hi]
        order = sorted(range(hi - lo), key=lambda j: (key[j], positions[lo + j]))
        kept, seen = [], set()
        for j in order:
            if (len(seen) if distinct else len(kept)) >= k:
                break
            kept.append(lo + j)
            seen.add(key[j])
        out.append(kept)
    return out


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("distinct", [False, True])
def test_select_top_matches_a_sorted_loop(metric, distinct):
    """Integer scores, so that ties are common: the selection keeps the k best, equal scores by
    position, and with ``distinct`` keeps going until k distinct scores."""
    rng = np.random.default_rng(6)
    counts = rng.integers(0, 80, 50)
    counts[:3] = (0, 3, 12)
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    positions = rng.permutation(10_000)[: lims[-1]].astype(np.int64)
    scores = rng.integers(0, 15, lims[-1]).astype(np.float32)
    scores[lims[5] : lims[6]] = 7.0  # a query whose rows all tie
    k = 12
    slots, got = select_top(scores, lims, positions, k, metric, distinct)
    want = _select_oracle(scores, lims, positions, k, metric, distinct)
    assert slots.shape[1] == max([k, *map(len, want)])
    worst = np.inf if metric == "l2" else -np.inf
    for i, rows in enumerate(want):
        np.testing.assert_array_equal(np.sort(scores[slots[i][: len(rows)]]), np.sort(scores[rows]))
        np.testing.assert_array_equal(got[i][: len(rows)], scores[slots[i][: len(rows)]])
        assert (slots[i][len(rows) :] == -1).all() and (got[i][len(rows) :] == worst).all()
        # within a score, by position; scores best first
        kept = slots[i][: len(rows)]
        key = scores[kept] if metric == "l2" else -scores[kept]
        assert all((key[j], positions[kept[j]]) <= (key[j + 1], positions[kept[j + 1]]) for j in range(len(kept) - 1))
