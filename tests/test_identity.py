"""Identity-aware search on every backend: labels, filters, one result per person, the open-set
threshold, plain-FAISS interop (issue 15).

Oracles are numpy brute force written here (Hamming by popcount from conftest's ``oracle``,
float64 scores, grouping and filtering by plain Python loops), never the library's code paths.
"""

from __future__ import annotations

import json
import hashlib

import faiss
import numpy as np
import pytest

from hashindex import HashIndex
from hashindex.core.errors import HashIndexError, InputError, UnsupportedError

# -- data and oracles ----------------------------------------------------------------------------
def _labelled(n=600, dim=32, seed=0):
    """Unit features; labels with every size: label 0 has 1 item, label 1 has 120, the rest 1-12."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sizes = [1, 120]
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 13)))
    labels = np.repeat(np.arange(len(sizes)) * 3 + 2, sizes)[:n]  # sparse label values
    labels = labels[rng.permutation(n)]
    ids = rng.permutation(5 * n)[:n].astype(np.int64) + 1
    return x, labels.astype(np.int64), ids


def _queries(x, nq=12, seed=1):
    rng = np.random.default_rng(seed)
    q = x[rng.integers(0, len(x), nq)] + 0.3 * rng.standard_normal((nq, x.shape[1])).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def brute_group(scores, ids, labels, k, g, higher=True):
    """Per query: the k labels with the best items, each with its g best items (ids), Python loops."""
    out = np.full((scores.shape[0], k * g), -1, np.int64)
    for q in range(scores.shape[0]):
        order = sorted(range(ids.size), key=lambda i: (-scores[q, i] if higher else scores[q, i], ids[i]))
        groups: dict[int, list[int]] = {}
        for i in order:
            lab = int(labels[i])
            if lab not in groups:
                if len(groups) == k:
                    continue
                groups[lab] = []
            if len(groups[lab]) < g:
                groups[lab].append(int(ids[i]))
        for j, items in enumerate(groups.values()):
            out[q, j * g : j * g + len(items)] = items
    return out


def _build(make_index, x, labels, ids, bits=32, **kw):
    index = make_index(x.shape[1], bits=bits, **kw)
    index.add(x, ids=ids, labels=labels)
    return index


# -- labels ----------------------------------------------------------------------------------------
def test_labels_are_stored_and_returned(make_index):
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    assert index.has_labels
    pick = ids[[5, 0, 77, 5]]
    np.testing.assert_array_equal(index.get_labels(pick), labels[[5, 0, 77, 5]])
    res = index.search(x[:10], k=4)
    assert res.labels.dtype == np.int64 and res.labels.shape == (10, 4)
    lookup = dict(zip(ids.tolist(), labels.tolist()))
    for i, lab in zip(res.ids.ravel().tolist(), res.labels.ravel().tolist()):
        assert lab == (lookup[i] if i >= 0 else -1)
    index.remove(ids[:3])
    np.testing.assert_array_equal(index.get_labels(ids[3:6]), labels[3:6])


def test_unlabelled_index_has_no_labels(make_index):
    x, _, _ = _labelled()
    index = make_index(32, bits=32)
    index.add(x)
    assert not index.has_labels and index.search(x[:2], k=3).labels is None
    with pytest.raises(InputError, match="no labels"):
        index.get_labels([0])


# -- filters ---------------------------------------------------------------------------------------
def _allowed_mask(ids, labels, filter_ids, filter_labels):
    keep = np.ones(ids.size, bool)
    if filter_ids is not None:
        keep &= np.array([i in set(np.asarray(filter_ids).tolist()) for i in ids.tolist()])
    if filter_labels is not None:
        keep &= np.array([lab in set(np.asarray(filter_labels).tolist()) for lab in labels.tolist()])
    return keep


@pytest.mark.parametrize("keep_fraction", [0.0, "one", 0.05, 0.9])
def test_filters_restrict_candidates_before_ranking(make_index, oracle, keep_fraction):
    """Radius and multi-probe modes on the allowed items equal brute force over exactly those items."""
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    rng = np.random.default_rng(3)
    if keep_fraction == "one":
        filter_ids = ids[[17]]
    else:
        filter_ids = rng.choice(ids, size=int(keep_fraction * ids.size), replace=False)
    filter_ids = np.concatenate([filter_ids, [10**9]])  # an id not in the index matches nothing
    allowed = _allowed_mask(ids, labels, filter_ids, None)
    q = _queries(x)
    ham = oracle.hamming(index.hasher.encode(q), index.get_codes(ids))
    scores = oracle.scores(q, x, "cosine")

    res = index.search(q, k=5, radius=10, filter_ids=filter_ids)
    for i in range(len(q)):
        cand = np.flatnonzero(allowed & (ham[i] <= 10))
        assert res.n_candidates[i] == cand.size
        oracle.assert_topk(res.ids[i], res.scores[i], ids[cand], scores[i, cand], 5, "cosine")

    res = index.search(q, k=3, filter_ids=filter_ids, ranking="hamming")  # multi-probe: smallest radius with 30 allowed
    for i in range(len(q)):
        d = np.sort(ham[i, allowed])
        r = d[min(30, d.size) - 1] if d.size > 30 else index.bits
        cand = np.flatnonzero(allowed & (ham[i] <= r))
        assert res.n_candidates[i] == cand.size
        oracle.assert_topk(res.ids[i], res.scores[i], ids[cand], scores[i, cand], 3, "cosine")


def test_filters_by_label_and_by_both(make_index, oracle):
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    q = _queries(x)
    scores = oracle.scores(q, x, "cosine")
    few_labels = np.unique(labels)[[0, 1, 4, 9]]  # the 1-item label, the 120-item label, two others
    some_ids = ids[::2]
    for fi, fl in ((None, few_labels), (some_ids, few_labels), (some_ids, None)):
        allowed = _allowed_mask(ids, labels, fi, fl)
        res = index.search(q, k=6, radius=index.bits, filter_ids=fi, filter_labels=fl)
        for i in range(len(q)):
            cand = np.flatnonzero(allowed)
            assert res.n_candidates[i] == cand.size
            oracle.assert_topk(res.ids[i], res.scores[i], ids[cand], scores[i, cand], 6, "cosine")
        assert np.isin(res.labels[res.ids >= 0], labels[allowed]).all()


def test_candidates_mode_takes_the_nearest_allowed(make_index, oracle):
    """candidates=c: the c Hamming-nearest allowed items, not the c nearest filtered afterwards."""
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    q = _queries(x)
    allowed = _allowed_mask(ids, labels, None, np.unique(labels)[1:2])  # the 120-item label
    ham = oracle.hamming(index.hasher.encode(q), index.get_codes(ids))
    scores = oracle.scores(q, x, "cosine")
    res = index.search(q, k=4, candidates=20, filter_labels=np.unique(labels)[1:2], ranking="hamming")
    post = index.search(q, k=4, candidates=20, ranking="hamming")
    assert (res.n_candidates == 20).all()
    for i in range(len(q)):
        a = np.flatnonzero(allowed)
        cut = np.sort(ham[i, a])[19]
        got = res.ids[i][res.ids[i] >= 0]
        assert got.size == 4 and np.isin(got, ids[a]).all()
        pos = {v: j for j, v in enumerate(ids.tolist())}
        assert all(ham[i, pos[g]] <= cut for g in got.tolist())
        inner = a[ham[i, a] < cut]  # surely candidates: a better one of them must be returned
        kth = res.scores[i, 3]
        assert not (scores[i, inner] > kth + 1e-5).any() or set(ids[inner[scores[i, inner] > kth + 1e-5]]) <= set(got)
    assert (post.labels != np.unique(labels)[1]).sum() > (res.labels != np.unique(labels)[1]).sum()


def test_asymmetric_ranking_with_a_filter(make_index, oracle):
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    q = _queries(x)
    keep = ids[::7]
    if make_index.backend == "milvus":
        with pytest.raises(UnsupportedError):
            index.search(q, k=3, ranking="asymmetric", filter_ids=keep)
        return
    z = index.hasher.project(q).astype(np.float64)
    signs = np.unpackbits(index.get_codes(keep), axis=1, bitorder="little").astype(np.float64) * 2 - 1
    asym = z @ signs.T
    scores = oracle.scores(q, index.get_features(keep), "cosine")
    res = index.search(q, k=3, candidates=15, ranking="asymmetric", filter_ids=keep)
    assert (res.n_candidates == 15).all()
    for i in range(len(q)):
        cand = np.argsort(-asym[i], kind="stable")[:15]
        oracle.assert_topk(res.ids[i], res.scores[i], keep[cand], scores[i, cand], 3, "cosine")
    group = index.search(q, k=3, ranking="asymmetric", filter_ids=keep, group_by="label")
    assert np.isin(group.ids[group.ids >= 0], keep).all()


# -- filters with the partition stage and the default (asymmetric) search ---------------------------
def _asym_oracle_topk(index, oracle, q, allowed_ids, c, k, res):
    """res equals the exact top-k among the c allowed items of best asymmetric score
    (<z, 2b - 1> in float64 over np.unpackbits), whatever lists they sit in."""
    z = index.hasher.project(q).astype(np.float64)
    signs = np.unpackbits(index.get_codes(allowed_ids), axis=1, bitorder="little").astype(np.float64) * 2 - 1
    asym = z @ signs.T
    scores = oracle.scores(q, index.get_features(allowed_ids), "cosine")
    c = min(c, allowed_ids.size)
    np.testing.assert_array_equal(res.n_candidates, c)
    for i in range(len(q)):
        cand = np.argsort(-asym[i], kind="stable")[:c]
        oracle.assert_topk(res.ids[i], res.scores[i], allowed_ids[cand], scores[i, cand], k, "cosine")


def _probed_rows(index, q, nprobe):
    """Per query: the row positions in its nprobe nearest lists (numpy, from the stage's centroids)."""
    sims = q.astype(np.float64) @ index._part.centroids.astype(np.float64).T
    lists = np.argsort(-sims, axis=1)[:, :nprobe]
    return [np.flatnonzero(np.isin(index._part_assign.array, row).any(axis=1)) for row in lists]


@pytest.mark.parametrize("nprobe", [1, 4, 16])
def test_filters_with_nprobe_find_allowed_items_outside_the_probed_lists(oracle, nprobe):
    """A filtered search never probes the lists: nprobe= (checked as always) and the allowed
    rows are scanned exactly, so an allowed item in an unprobed list is still found."""
    x, labels, ids = _labelled()
    index = HashIndex(32, bits=32, backend="flat", partitions=16)
    index.add(x, ids=ids, labels=labels)
    q = _queries(x)
    unfiltered = index.search(q, k=3, nprobe=nprobe, candidates=40)  # builds the stage
    assert index._part is not None and (unfiltered.n_candidates <= 40).all()
    rng = np.random.default_rng(7)
    one_label = np.unique(labels)[1:2]  # the 120-item label
    for fi, fl in ((rng.choice(ids, 30, replace=False), None), (None, one_label), (ids[::10], one_label),
                   (rng.choice(ids, 540, replace=False), None)):  # fmt: skip
        allowed = _allowed_mask(ids, labels, fi, fl)
        res = index.search(q, k=3, nprobe=nprobe, candidates=40, filter_ids=fi, filter_labels=fl)
        assert np.isin(res.ids[res.ids >= 0], ids[allowed]).all()
        _asym_oracle_topk(index, oracle, q, ids[allowed], 40, 3, res)
    # the case that needs it: results from lists the query does not probe
    fi = rng.choice(ids, 30, replace=False)
    res = index.search(q, k=3, nprobe=1, candidates=40, filter_ids=fi)
    probed = _probed_rows(index, q, 1)
    pos = {v: j for j, v in enumerate(ids.tolist())}
    outside = [g for i in range(len(q)) for g in res.ids[i].tolist() if g >= 0 and pos[g] not in set(probed[i].tolist())]
    assert outside
    with pytest.raises(InputError, match="exceeds"):
        index.search(q, k=3, nprobe=17, filter_ids=fi)  # nprobe still checked against the stage


def test_filters_with_the_default_search(oracle):
    """ranking=None is asymmetric here: untuned it ranks default_candidates(k) of the allowed
    items; with a tuned point that probes lists, that point's candidates over every allowed item."""
    from hashindex.serving.front import default_candidates
    from hashindex.serving.tuning import DEFAULT_RECALL, OperatingPoint

    x, labels, ids = _labelled()
    index = HashIndex(32, bits=32, backend="flat", partitions=16)
    index.add(x, ids=ids, labels=labels)
    assert index.default_ranking == "asymmetric"
    q = _queries(x)
    keep = ids[::3]
    res = index.search(q, k=4, filter_ids=keep)
    _asym_oracle_topk(index, oracle, q, keep, default_candidates(4), 4, res)

    index._operating_points[(DEFAULT_RECALL, 4)] = OperatingPoint(
        nprobe=2, candidates=30, recall=0.99, seconds_per_query=1e-4, target=DEFAULT_RECALL, k=4, nlist=16
    )
    plain = index.search(q, k=4)  # the point probes 2 of 16 lists
    assert (plain.n_candidates <= 30).all()
    for fi, fl in ((keep, None), (None, np.unique(labels)[:6])):
        allowed = _allowed_mask(ids, labels, fi, fl)
        res = index.search(q, k=4, filter_ids=fi, filter_labels=fl)
        _asym_oracle_topk(index, oracle, q, ids[allowed], 30, 4, res)


def test_group_by_with_nprobe_widens_past_the_probed_lists(oracle):
    """group_by with nprobe: the probed lists hold fewer labels than k, so the candidates are
    widened through the flat scan until k labels are found; with a filter, over the allowed items."""
    x, labels, ids = _labelled()
    index = HashIndex(32, bits=32, backend="flat", partitions=16)
    index.add(x, ids=ids, labels=labels)
    q = _queries(x, nq=6)
    k = 40  # more labels than one list (~40 items, many of the 120-item label) holds
    res = index.search(q, k=k, nprobe=1, group_by="label")
    assert (res.ids >= 0).all()
    for i in range(len(q)):
        assert np.unique(res.labels[i]).size == k and (np.diff(res.scores[i]) <= 1e-6).all()
    fl = np.unique(labels)[:3]  # three labels: widening reaches every allowed item, so exact
    allowed = _allowed_mask(ids, labels, None, fl)
    scores = oracle.scores(q, x, "cosine")
    for kw in ({"nprobe": 1}, {}):
        res = index.search(q, k=5, group_by="label", group_size=2, filter_labels=fl, **kw)
        np.testing.assert_array_equal(res.ids, brute_group(scores[:, allowed], ids[allowed], labels[allowed], 5, 2))


def test_filter_keeping_nothing_returns_padding(make_index):
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    for kw in ({"filter_ids": []}, {"filter_labels": [10**6]}, {"filter_ids": [10**9]}):
        res = index.search(x[:3], k=4, **kw)
        assert (res.ids == -1).all() and (res.labels == -1).all() and (res.n_candidates == 0).all()
        res = index.search(x[:3], k=4, group_by="label", **kw)
        assert (res.ids == -1).all()


# -- one result per person -------------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [1, 3])
def test_group_by_label_matches_brute_force(make_index, oracle, group_size):
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    q = _queries(x)
    scores = oracle.scores(q, x, "cosine")
    res = index.search(q, k=5, radius=index.bits, group_by="label", group_size=group_size)
    assert res.ids.shape == (len(q), 5 * group_size)
    np.testing.assert_array_equal(res.ids, brute_group(scores, ids, labels, 5, group_size))
    lookup = dict(zip(ids.tolist(), labels.tolist()))
    for i, lab in zip(res.ids.ravel().tolist(), res.labels.ravel().tolist()):
        assert lab == (lookup[i] if i >= 0 else -1)
    valid = res.ids >= 0
    pos = {v: j for j, v in enumerate(ids.tolist())}
    want = np.array([[scores[r, pos[i]] if i >= 0 else 0 for i in row] for r, row in enumerate(res.ids.tolist())])
    np.testing.assert_allclose(res.scores[valid], want[valid], atol=1e-5)
    # with a filter too: the same rule over the allowed items only
    fl = np.unique(labels)[::3]
    allowed = _allowed_mask(ids, labels, None, fl)
    res = index.search(q, k=4, radius=index.bits, group_by="label", group_size=group_size, filter_labels=fl)
    np.testing.assert_array_equal(res.ids, brute_group(scores[:, allowed], ids[allowed], labels[allowed], 4, group_size))


def test_group_by_widens_until_k_labels(make_index, oracle):
    """Default and candidates= modes: the k labels come back although the first candidates
    (the 120-item label dominates the neighbourhood) hold fewer."""
    rng = np.random.default_rng(5)
    dim = 32
    centre = rng.standard_normal(dim).astype(np.float32)
    crowd = centre + 0.05 * rng.standard_normal((300, dim)).astype(np.float32)  # one person, 300 images
    others = rng.standard_normal((300, dim)).astype(np.float32)
    x = np.concatenate([crowd, others])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.concatenate([np.zeros(300, np.int64), 1 + np.arange(300) // 3])
    ids = np.arange(600, dtype=np.int64)
    index = _build(make_index, x, labels, ids)
    q = x[:4] + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores = oracle.scores(q, x, "cosine")
    for kw in ({}, {"candidates": 8}):
        res = index.search(q, k=6, group_by="label", **kw)
        assert (res.ids >= 0).all()
        for i in range(len(q)):
            assert np.unique(res.labels[i]).size == 6 and res.labels[i, 0] == 0
            assert (np.diff(res.scores[i]) <= 1e-6).all()
    # exhaustive candidates: exact against brute force
    res = index.search(q, k=6, candidates=600, group_by="label")
    np.testing.assert_array_equal(res.ids, brute_group(scores, ids, labels, 6, 1))


def test_group_by_with_fewer_labels_than_k(make_index, oracle):
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    q = _queries(x, nq=4)
    fl = np.unique(labels)[:3]  # 1 + 120 + a few items, three labels
    allowed = _allowed_mask(ids, labels, None, fl)
    scores = oracle.scores(q, x, "cosine")
    res = index.search(q, k=5, group_by="label", group_size=2, filter_labels=fl)
    assert res.ids.shape == (4, 10)
    want = brute_group(scores[:, allowed], ids[allowed], labels[allowed], 5, 2)
    np.testing.assert_array_equal(res.ids, want)
    assert (res.ids[:, 6:] == -1).all()  # blocks 4 and 5: no such labels
    one = np.unique(labels)[0]  # the label with a single item: its block is [item, -1]
    for i in range(4):
        j = list(res.labels[i, ::2]).index(one)
        assert res.ids[i, 2 * j + 1] == -1


# -- open-set threshold ------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_min_score_drops_results_beyond_the_threshold(make_index, metric):
    x, labels, ids = _labelled()
    x = x * np.linspace(0.5, 2, len(x), dtype=np.float32)[:, None]
    index = _build(make_index, x, labels, ids, metric=metric)
    q = _queries(x)
    plain = index.search(q, k=8, radius=index.bits)
    t = float(np.median(plain.scores))
    res = index.search(q, k=8, radius=index.bits, min_score=t)
    drop = plain.scores < t if metric == "cosine" else plain.scores > t
    assert drop.any() and (~drop).any()
    np.testing.assert_array_equal(res.ids, np.where(drop, -1, plain.ids))
    np.testing.assert_array_equal(res.labels, np.where(drop, -1, plain.labels))
    assert (res.hamming[drop] == -1).all() and np.isinf(res.scores[drop]).all()
    assert ((res.ids == -1) | (np.arange(8) < (res.ids >= 0).sum(1)[:, None])).all()  # padding is a suffix
    grouped = index.search(q, k=3, radius=index.bits, group_by="label", min_score=t)
    g_plain = index.search(q, k=3, radius=index.bits, group_by="label")
    keep = g_plain.scores >= t if metric == "cosine" else g_plain.scores <= t
    np.testing.assert_array_equal(grouped.ids, np.where(keep, g_plain.ids, -1))


# -- round trips ---------------------------------------------------------------------------------
def test_labels_survive_save_and_mmap_load(tmp_path):
    x, labels, ids = _labelled()
    index = HashIndex(32, bits=32, backend="flat")
    index.add(x, ids=ids, labels=labels)
    q = _queries(x)
    before = index.search(q, k=4, group_by="label", filter_labels=np.unique(labels)[::2])
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert "labels.npy" in manifest["files"] and manifest["labelled"] is True
    loaded = HashIndex.load(tmp_path / "idx", mmap=True)
    assert loaded._labels.is_mmap and loaded.has_labels
    after = loaded.search(q, k=4, group_by="label", filter_labels=np.unique(labels)[::2])
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.labels, after.labels)
    np.testing.assert_array_equal(loaded.get_labels(ids[::50]), labels[::50])
    extra = loaded.add(x[:2], labels=[7, 7])  # mmap copied on the first mutation
    np.testing.assert_array_equal(loaded.get_labels(extra), [7, 7])
    with pytest.raises(InputError):
        loaded.add(x[:2])  # a labelled index needs labels


def test_index_saved_without_labels_still_loads(tmp_path):
    x, _, _ = _labelled()
    index = HashIndex(32, bits=32, backend="flat")
    index.add(x)
    index.save(tmp_path / "old")
    # what a hashindex from before labels wrote: no "labelled" key (manifest checksum redone)
    mpath = tmp_path / "old" / "manifest.json"
    m = json.loads(mpath.read_text())
    m.pop("labelled"), m.pop("manifest_sha256")
    m["manifest_sha256"] = hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()
    mpath.write_text(json.dumps(m))
    loaded = HashIndex.load(tmp_path / "old")
    assert not loaded.has_labels
    np.testing.assert_array_equal(loaded.search(x[:3], k=2).ids, index.search(x[:3], k=2).ids)
    with pytest.raises(InputError, match="no labels"):
        loaded.search(x[:3], k=2, group_by="label")
    with pytest.raises(InputError, match="no labels"):
        loaded.add(x[:2], labels=[1, 2])


def _set_key(key, value):
    return lambda m: m.__setitem__(key, value)


@pytest.mark.parametrize(
    "case",
    ["labelled as string", "labelled as 1", "labelled false with labels.npy", "labelled true without labels.npy",
     "labels.npy without labelled", "negative label", "labels of another length", "labels as float"],
)  # fmt: skip
def test_labelled_manifests_and_labels_are_checked(case, tmp_path, rewrite_manifest):
    """persist.INDEX_SCHEMA: ``labelled`` is a bool listed with labels.npy exactly when true;
    labels.npy is an int64 [count] of labels >= 0 (IndexFormatError otherwise)."""
    from hashindex import IndexFormatError
    from hashindex.serving import persist

    x, labels, ids = _labelled(n=120)
    index = HashIndex(32, bits=32, backend="flat")
    index.add(x, ids=ids, labels=labels)
    root = tmp_path / "ix"
    index.save(root)
    arrays = {"negative label": np.where(np.arange(120) == 7, -2, labels),
              "labels of another length": labels[:-1], "labels as float": labels.astype(np.float64)}  # fmt: skip
    mutations = {
        "labelled as string": _set_key("labelled", "yes"),
        "labelled as 1": _set_key("labelled", 1),
        "labelled false with labels.npy": _set_key("labelled", False),
        "labelled true without labels.npy": lambda m: m["files"].pop("labels.npy"),
        "labels.npy without labelled": lambda m: m.pop("labelled"),
    }
    if case in arrays:
        np.save(root / "labels.npy", arrays[case])
    rewrite_manifest(root, mutations.get(case, lambda m: None))
    with pytest.raises(IndexFormatError, match="label"):
        HashIndex.load(root)
    if case not in arrays:
        with pytest.raises(IndexFormatError):
            persist.read_manifest(root)


def test_milvus_reopen_keeps_labels_and_old_collections_work(tmp_path, milvus_class):
    MilvusHashIndex = milvus_class

    x, labels, ids = _labelled()
    uri = str(tmp_path / "m.db")
    with MilvusHashIndex(32, bits=32, uri=uri, collection="lab") as first:
        first.add(x, ids=ids, labels=labels)
        before = first.search(x[:3], k=3, group_by="label")
    with MilvusHashIndex(32, uri=uri, collection="lab") as again:
        assert again.has_labels
        np.testing.assert_array_equal(again.search(x[:3], k=3, group_by="label").ids, before.ids)
        np.testing.assert_array_equal(again.get_labels(ids[:5]), labels[:5])
    with MilvusHashIndex(32, bits=32, uri=uri, collection="plain") as old:  # a collection with no label field
        old.add(x)
    with MilvusHashIndex(32, uri=uri, collection="plain") as old:
        fields = [f["name"] for f in old._client.describe_collection("plain")["fields"]]
        assert "label" not in fields and not old.has_labels
        assert (old.search(x[:2], k=1).ids[:, 0] == [0, 1]).all()
        with pytest.raises(InputError, match="no labels"):
            old.search(x[:2], k=1, filter_labels=[1])


# -- plain FAISS -------------------------------------------------------------------------------------
def test_to_faiss_holds_exactly_the_codes_and_ids(make_index, oracle, tmp_path):
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    index.remove(ids[:5])
    plain = index.to_faiss()
    assert isinstance(plain, faiss.IndexBinaryIDMap) and plain.ntotal == len(index) == 595
    stored = faiss.vector_to_array(plain.id_map)
    assert sorted(stored.tolist()) == sorted(ids[5:].tolist())
    flat = faiss.downcast_IndexBinary(plain.index)
    assert isinstance(flat, faiss.IndexBinaryFlat)
    codes = faiss.vector_to_array(flat.xb).reshape(-1, index.bits // 8)
    np.testing.assert_array_equal(codes, index.get_codes(stored))
    faiss.write_index_binary(plain, str(tmp_path / "codes.bin"))
    back = faiss.read_index_binary(str(tmp_path / "codes.bin"))
    qcodes = index.hasher.encode(_queries(x))
    dist, got = back.search(qcodes, 5)
    ham = oracle.hamming(qcodes, index.get_codes(ids[5:]))
    np.testing.assert_array_equal(dist, np.sort(ham, axis=1)[:, :5])
    assert np.isin(got, ids[5:]).all()


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_identity_input_is_refused_and_changes_nothing(make_index):
    x, labels, ids = _labelled()
    index = _build(make_index, x, labels, ids)
    bad = [
        lambda: index.add(x[:4], labels=[1, 2, 3]),  # wrong length
        lambda: index.add(x[:2], labels=np.array([1.0, 2.0])),  # wrong dtype
        lambda: index.add(x[:2], labels=[-1, 2]),
        lambda: index.add(x[:2], labels=np.array([2**63, 1], dtype=np.uint64)),
        lambda: index.add(x[:2], labels=[[1, 2]]),
        lambda: index.add(x[:2]),  # a labelled index needs labels
        lambda: index.search(x[:2], filter_ids=[-3]),
        lambda: index.search(x[:2], filter_ids=np.array([2**64 - 1], dtype=np.uint64)),
        lambda: index.search(x[:2], filter_ids=[1.5]),
        lambda: index.search(x[:2], filter_labels=[-1]),
        lambda: index.search(x[:2], filter_labels=[[1]]),
        lambda: index.search(x[:2], group_by="id"),
        lambda: index.search(x[:2], group_by=1),
        lambda: index.search(x[:2], group_size=2),  # without group_by
        lambda: index.search(x[:2], group_by="label", group_size=0),
        lambda: index.search(x[:2], min_score=float("nan")),
        lambda: index.search(x[:2], min_score="0.5"),
        lambda: index.search(x[:2], min_score=float("inf")),
    ]
    for call in bad:
        with pytest.raises(HashIndexError):
            call()
    assert len(index) == 600
    np.testing.assert_array_equal(index.get_labels(ids), labels)

    plain = make_index(32, name="plain", bits=32)
    plain.add(x)
    for call in (
        lambda: plain.search(x[:2], filter_labels=[1]),
        lambda: plain.search(x[:2], group_by="label"),
        lambda: plain.add(x[:2], labels=[1, 2]),
        lambda: plain.get_labels([0]),
    ):
        with pytest.raises(InputError, match="labels"):
            call()
    assert len(plain) == 600 and not plain.has_labels
    fresh = make_index(32, name="fresh", bits=32)
    with pytest.raises(InputError):
        fresh.add(x, labels=labels[:10])  # rejected before the hasher is fitted on this batch
    assert len(fresh) == 0 and not fresh.hasher.is_fitted


# -- LFW: real identities ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lfw(lfw_dev_path):
    from hashindex.training.data.embeddings import load_embeddings

    return load_embeddings(lfw_dev_path)


def test_lfw_group_by_and_filter_against_brute_force(make_index, oracle, lfw):
    x, labels = lfw.features, lfw.labels.astype(np.int64)
    n = 3000 if make_index.backend == "milvus" else len(x)  # milvus-lite inserts slowly
    x, labels = x[:n], labels[:n]
    ids = np.arange(n, dtype=np.int64)
    index = _build(make_index, x, labels, ids, bits=64)
    rng = np.random.default_rng(0)
    qi = rng.choice(n, 10, replace=False)
    q = x[qi]
    scores = oracle.scores(q, x, "cosine")
    res = index.search(q, k=5, candidates=n, group_by="label")
    np.testing.assert_array_equal(res.ids, brute_group(scores, ids, labels, 5, 1))
    assert (res.labels[:, 0] == labels[qi]).all()  # each probe finds itself first
    others = np.setdiff1d(np.unique(labels), labels[qi])[:200]  # which of 200 other people is this?
    allowed = np.isin(labels, others)
    res = index.search(q, k=3, candidates=n, filter_labels=others)
    for i in range(len(q)):
        cand = np.flatnonzero(allowed)
        oracle.assert_topk(res.ids[i], res.scores[i], ids[cand], scores[i, cand], 3, "cosine")


def test_milvus_id_filter_longer_than_one_expression(tmp_path, oracle, milvus_class):
    """An id allow-list split into several ``id in [...]`` searches gives the union's best."""
    from hashindex.serving.milvus import MilvusLimits

    MilvusHashIndex = milvus_class

    x, labels, ids = _labelled()
    keep = ids[::2]
    q = _queries(x)
    with MilvusHashIndex(32, bits=32, uri=str(tmp_path / "c.db"), collection="c", limits=MilvusLimits(fetch_ids=40)) as m:
        m.add(x, ids=ids, labels=labels)
        ham = oracle.hamming(m.hasher.encode(q), m.get_codes(keep))
        scores = oracle.scores(q, m.get_features(keep), "cosine")
        for kw in ({"radius": 9}, {"candidates": 25}, {}):
            res = m.search(q, k=4, filter_ids=keep, filter_labels=np.unique(labels)[1:] if kw else None, **kw)
            assert np.isin(res.ids[res.ids >= 0], keep).all()
        res = m.search(q, k=4, radius=9, filter_ids=keep)
        for i in range(len(q)):
            cand = np.flatnonzero(ham[i] <= 9)
            assert res.n_candidates[i] == cand.size
            oracle.assert_topk(res.ids[i], res.scores[i], keep[cand], scores[i, cand], 4, "cosine")
        res = m.search(q, k=4, candidates=25, filter_ids=keep)
        assert (res.n_candidates == 25).all()
        for i in range(len(q)):
            cut = np.sort(ham[i])[24]
            got = res.ids[i]
            assert all(ham[i, np.flatnonzero(keep == g)[0]] <= cut for g in got.tolist())


@pytest.mark.parametrize("subset_max_fraction", [0.0, 1.0])
def test_faiss_selector_and_subset_scans_agree(monkeypatch, subset_max_fraction, oracle):
    """Both exact ways HashIndex scans an allow-list (bitmap selector, copied subset) give brute force."""
    import hashindex.serving.candidates.filtered as filtered

    monkeypatch.setattr(filtered, "SUBSET_MAX_FRACTION", subset_max_fraction)
    monkeypatch.setattr(filtered, "SUBSET_BATCH_FRACTION", subset_max_fraction)
    x, labels, ids = _labelled()
    index = HashIndex(32, bits=32, backend="auto")
    index.add(x, ids=ids, labels=labels)
    q = _queries(x)
    keep = ids[np.random.default_rng(4).random(ids.size) < 0.4]
    allowed = np.isin(ids, keep)
    ham = oracle.hamming(index.hasher.encode(q), index.get_codes(ids))
    scores = oracle.scores(q, x, "cosine")
    for kw in ({"radius": 9}, {}, {"candidates": 40}):
        res = index.search(q, k=5, filter_ids=keep, ranking="hamming", **kw)  # the Hamming scans
        for i in range(len(q)):
            if "radius" in kw:
                cand = np.flatnonzero(allowed & (ham[i] <= 9))
            elif "candidates" in kw:
                cand = np.flatnonzero(allowed & (ham[i] <= np.sort(ham[i, allowed])[39]))
                assert res.n_candidates[i] == 40
            else:
                cand = np.flatnonzero(allowed & (ham[i] <= np.sort(ham[i, allowed])[49]))
            if "candidates" not in kw:
                assert res.n_candidates[i] == cand.size
                oracle.assert_topk(res.ids[i], res.scores[i], ids[cand], scores[i, cand], 5, "cosine")
            assert np.isin(res.ids[i][res.ids[i] >= 0], ids[cand]).all()
