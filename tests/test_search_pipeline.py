"""The one search pipeline (serving/search.py): degenerate queries still rank and never hang
(issue 21 item 1), an empty allow-list on every backend (item 11), what a result reports it
scanned and reranked, and the planner's defaults."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hashindex import HashIndex
from hashindex.core.errors import InputError
from hashindex.serving import plan as planner
from hashindex.serving import search as pipeline
from hashindex.serving.candidates.csr import Candidates, empty, from_knn, merge, take_queries
from hashindex.serving.filters import PLAIN, SearchOptions, check_search_options
from hashindex.serving.grouping import widen_for_labels

TIME_LIMIT_S = 60  # generous for a loaded 2-core machine; a hang never returns


def within_time(fn, limit: float = TIME_LIMIT_S):
    """``fn()`` in a daemon thread; fails the test (instead of hanging it) if it runs past ``limit``."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"did not return within {limit} s (a widening loop without a bound?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def labelled_index(metric: str, dim: int = 32, n: int = 2000, seed: int = 0, **kw) -> HashIndex:
    rng = np.random.default_rng(seed)
    index = HashIndex(dim=dim, bits=32, metric=metric, **kw)
    index.add(rng.standard_normal((n, dim)).astype(np.float32), labels=rng.integers(0, 100, n))
    return index


# -- issue 21 item 1: a search never returns nothing when items exist, and never hangs ---------------
@pytest.mark.parametrize("metric, value", [("ip", 1e17), ("l2", 1e17), ("ip", -1e17), ("cosine", 3e38)])
def test_a_huge_query_still_finds_k_items_and_groups(metric, value):
    """Huge but accepted queries (cosine normalises; ip / l2 rows inside the norm limit) still
    rank: their projections overflow float32 in the scan."""
    index = labelled_index(metric)
    q = np.full((1, 32), value, np.float32)
    res = within_time(lambda: index.search(q, k=5))
    assert (res.ids >= 0).all() and np.unique(res.ids).size == 5
    grouped = within_time(lambda: index.search(q, k=5, group_by="label"))
    assert (grouped.ids >= 0).all() and np.unique(grouped.labels).size == 5
    assert not np.isnan(res.scores).all()  # ranked on something, not on NaN alone


@pytest.mark.parametrize("metric, value", [("ip", 3e38), ("l2", 1e38), ("ip", -3e38)])
def test_an_overflowing_query_is_a_typed_error_not_an_empty_result(metric, value):
    """The issue's queries: their scores overflow float32, so ip / l2 refuse them by name
    (never padding, never a hang)."""
    index = labelled_index(metric)
    q = np.full((1, 32), value, np.float32)
    with pytest.raises(InputError, match="norm"):
        within_time(lambda: index.search(q, k=5))
    with pytest.raises(InputError, match="norm"):
        within_time(lambda: index.search(q, k=5, group_by="label"))


@pytest.mark.parametrize("hasher", ["itq", "pca", "sign"])
def test_a_gallery_of_identical_rows_is_searchable(hasher):
    index = HashIndex(dim=16, bits=16, hasher=hasher)
    index.add(np.ones((300, 16), np.float32), labels=np.arange(300) % 7)
    q = np.ones((1, 16), np.float32)
    res = within_time(lambda: index.search(q, k=5))
    assert (res.ids >= 0).all() and np.unique(res.ids).size == 5
    np.testing.assert_allclose(res.scores, 1.0, rtol=1e-5)
    grouped = within_time(lambda: index.search(q, k=5, group_by="label"))
    assert (grouped.ids >= 0).all() and np.unique(grouped.labels).size == 5
    point = within_time(lambda: index.tune(recall=0.9, k=5, sample=50, progress=False))
    assert point.recall == 1.0  # every item ties with the true nearest: each top-1 is a hit


def test_a_zero_query_on_a_fitted_index_ranks_by_hamming_to_its_own_code():
    index = labelled_index("ip")
    q = np.zeros((1, 32), np.float32)
    res = within_time(lambda: index.search(q, k=5, candidates=50))
    assert (res.ids >= 0).all()


def test_widening_is_bounded_when_the_stage_finds_no_more():
    """A refetch that never returns more than it had (a degenerate stage) ends the loop."""
    calls = []

    def refetch(qi, c):
        calls.append(c)
        return empty(len(qi))

    labels = np.zeros(10, np.int64)
    out = within_time(lambda: widen_for_labels(empty(3), 5, 1000, lambda keys: labels[keys], refetch), limit=10)
    assert np.array_equal(out.lims, np.zeros(4)) and len(calls) == 1


def test_widening_stops_at_the_cap_and_keeps_what_it_had():
    labels = np.zeros(100, np.int64)  # one label: k = 3 labels can never be found

    def refetch(qi, c):
        return from_knn(np.tile(np.arange(c), (len(qi), 1)), np.zeros((len(qi), c), np.int32))

    start = from_knn(np.array([[0, 1]]), np.zeros((1, 2), np.int32))
    out = within_time(lambda: widen_for_labels(start, 3, 100, lambda keys: labels[keys], refetch), limit=10)
    assert out.counts.tolist() == [100]


# -- issue 21 item 11: an empty allow-list on every backend -----------------------------------------
@pytest.mark.parametrize("which", ["filter_labels", "filter_ids"])
def test_an_empty_allow_list_gives_padding_on_every_backend(make_index, which):
    rng = np.random.default_rng(1)
    index = make_index(16, bits=16)
    index.add(rng.standard_normal((300, 16)).astype(np.float32), labels=rng.integers(0, 5, 300))
    q = rng.standard_normal((2, 16)).astype(np.float32)
    for kw in ({}, {"group_by": "label"}, {"ranking": "hamming"}):
        res = index.search(q, k=3, **{which: []}, **kw)
        assert res.ids.shape == (2, 3) and (res.ids == -1).all() and (res.labels == -1).all()
        assert (res.n_candidates == 0).all() and (res.n_scanned == 0).all()


# -- what a result reports ---------------------------------------------------------------------------
def test_n_scanned_and_n_reranked_on_every_backend(make_index):
    rng = np.random.default_rng(2)
    index = make_index(16, bits=16)
    index.add(rng.standard_normal((400, 16)).astype(np.float32), labels=rng.integers(0, 8, 400))
    q = rng.standard_normal((3, 16)).astype(np.float32)
    res = index.search(q, k=4, candidates=30, ranking="hamming")
    assert res.n_scanned.tolist() == [400] * 3 and res.n_reranked.tolist() == [30] * 3
    assert res.n_scanned.dtype == np.int64 and np.array_equal(res.n_reranked, res.n_candidates)
    res = index.search(q, k=4, ranking="hamming")  # multi-probe: a k-NN pass, then a range pass
    assert res.n_scanned.tolist() == [800] * 3 and (res.n_reranked >= 40).all()
    res = index.search(q, k=4, candidates=30, ranking="hamming", filter_labels=[1, 2])
    allowed = int(np.isin(index.get_labels(index.ids), [1, 2]).sum())
    assert res.n_scanned.tolist() == [allowed] * 3


@pytest.mark.parametrize("spill", [1, 2])
def test_n_scanned_counts_the_probed_lists(spill):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    index = HashIndex(32, bits=32, partitions=16, partition_spill=spill)
    index.add(x)
    q = rng.standard_normal((5, 32)).astype(np.float32)
    flat = index.search(q, k=5, candidates=50)
    assert flat.n_scanned.tolist() == [2000] * 5
    res = index.search(q, k=5, candidates=50, nprobe=2)
    # oracle: the sizes, counted from the stored assignment, of each query's 2 nearest centroids (numpy)
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    nearest = np.argsort(-(unit.astype(np.float64) @ index._part.centroids.astype(np.float64).T), axis=1)[:, :2]
    sizes = np.bincount(index._part_assign.array.ravel(), minlength=16)
    assert res.n_scanned.tolist() == sizes[nearest].sum(axis=1).tolist()
    assert index.search(q, k=5, candidates=50, nprobe=16).n_scanned.tolist() == [spill * 2000] * 5


def test_exact_search_and_partition_info_are_public():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    index = HashIndex(16, bits=16, partitions=8)
    ids = index.add(x)
    got_ids, scores = index.exact_search(x[:3], k=2)
    assert got_ids[:, 0].tolist() == ids[:3].tolist() and scores.shape == (3, 2)
    info = index.partition_info()
    assert info.lists == 8 and not info.built and info.requested and info.reason == ""
    assert HashIndex(16, bits=16, partitions=None).partition_info().lists is None


# -- the planner, a pure function of the request and the index's tuned points ------------------------
class _Untuned:
    def _current_point(self, recall, k, explicit):
        return None

    def _check_nprobe(self, nprobe):
        pass


def test_the_planner_resolves_every_default():
    idx = _Untuned()
    hamming = planner.plan_search(idx, planner.Request(3, None, None, "hamming", None, None))
    assert (hamming.radius, hamming.candidates, hamming.at_least) == (None, None, 30)
    asym = planner.plan_search(idx, planner.Request(3, None, None, "asymmetric", None, None))
    assert (asym.candidates, asym.nprobe) == (planner.default_candidates(3), None)
    probed = planner.plan_search(idx, planner.Request(3, None, 40, "asymmetric", 4, None))
    assert (probed.candidates, probed.nprobe) == (40, 4)
    filtered = check_search_options([1, 2], None, has_labels=False)
    probed = planner.plan_search(idx, planner.Request(3, None, 40, "asymmetric", 4, None, filtered))
    assert probed.nprobe is None  # a filtered search scans the allowed rows, never the lists
    nothing = check_search_options(None, [], has_labels=True)
    assert planner.Plan(3, "hamming", options=nothing).nothing_allowed
    assert not planner.Plan(3, "hamming", options=PLAIN).nothing_allowed
    assert isinstance(SearchOptions(), SearchOptions)


def test_rankable_projection_keeps_ordinary_rows_and_repairs_degenerate_ones():
    codes = np.array([[0b0101]], np.uint8).repeat(4, 0)
    z = np.array([[0.5, -1, 2, 0, 0, 0, 0, 1], [np.inf, 1, -np.inf, 0, 0, 0, np.nan, 1],
                  [0] * 8, [1e35, -1e35, 0, 0, 0, 0, 0, 3]], np.float32)  # fmt: skip
    out = pipeline.rankable_projection(z, codes)
    np.testing.assert_array_equal(out[0], z[0])  # untouched
    np.testing.assert_array_equal(out[1], [1, 0, -1, 0, 0, 0, 0, 0])  # the infinities dominate
    np.testing.assert_array_equal(out[2], [1, -1, 1, -1, -1, -1, -1, -1])  # its own code as +-1
    assert np.isfinite(out[3]).all() and np.abs(out[3]).max() == 1
    assert pipeline.rankable_projection(z[:1], codes[:1]) is not None


def test_candidates_helpers_keep_the_csr_layout():
    a = from_knn(np.array([[3, 1, -1], [2, -1, -1]]), np.array([[0, 1, 0], [4, 0, 0]], np.int32))
    assert isinstance(a, Candidates) and a.counts.tolist() == [2, 1]
    lims, keys, ham = a  # still unpacks as a tuple
    assert keys.tolist() == [3, 1, 2] and ham.tolist() == [0, 1, 4]
    b = take_queries(a, np.array([1]))
    assert b.keys.tolist() == [2] and b.lims.tolist() == [0, 1]
    m = merge(3, [(np.array([2]), b), (np.array([0]), take_queries(a, np.array([0])))])
    assert m.counts.tolist() == [2, 0, 1] and m.keys.tolist() == [3, 1, 2]


def test_n_scanned_of_a_radius_on_hash_tables_is_what_they_found():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((600, 32)).astype(np.float32)
    index = HashIndex(32, bits=32, backend="hash")
    index.add(x)
    res = index.search(x[:4], k=3, radius=1)
    assert np.array_equal(res.n_scanned, res.n_candidates)
    assert index.search(x[:4], k=3, radius=9).n_scanned.tolist() == [600] * 4  # too many flips: the flat scan


def test_identical_rows_group_and_search_on_every_backend(make_index):
    index = make_index(16, bits=16, hasher="sign")
    index.add(np.ones((300, 16), np.float32), labels=np.arange(300) % 7)
    q = np.ones((2, 16), np.float32)
    res = within_time(lambda: index.search(q, k=5))
    assert (res.ids >= 0).all()
    grouped = within_time(lambda: index.search(q, k=5, group_by="label", group_size=2))
    assert (grouped.ids >= 0).all() and all(np.unique(row).size == 5 for row in grouped.labels)
