"""The partition stage (candidates/partitions.py, ``HashIndex(partitions=...)``, ``nprobe=``)
against numpy brute-force oracles.

The oracles share no code with the stage: list membership is the argmax of numpy float64
similarities to the stage's centroids, probed lists the top-nprobe of the query's, scores
``<z, 2b - 1>`` from ``np.unpackbits``. Fast-scan scores are approximate (8-bit lookup tables),
so they are compared within the rounding bound of test_asymmetric.py and no more.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

import faiss
import numpy as np
import pytest

from hashindex import HashIndex, HashIndexError, IndexFormatError, InputError
from hashindex.serving import persist
from hashindex.serving.candidates.asymmetric import sign_patterns
from hashindex.serving.candidates import fastscan, partitions, six_bit
from hashindex.serving.candidates.partitions import BlockLayout, PartitionStage, dedupe, nearest_centroids, nlist_for
from hashindex.serving.hashers import ITQHasher

DIM, BITS = 64, 64


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(n, seed, n_centres=40, noise=0.35):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, DIM))
    return _unit(centres[rng.integers(0, n_centres, n)] + noise * rng.standard_normal((n, DIM)))


@pytest.fixture(scope="module")
def data():
    x = _clustered(4000, 0)
    q = _unit(x[::97][:40] + 0.05 * np.random.default_rng(1).standard_normal((40, DIM)))
    hasher = ITQHasher(DIM, BITS).fit(x)
    return x, q, hasher


def _index(data, n=None, nlist=16, spill=1, **kw):
    x, _, hasher = data
    kw.setdefault("rerank", "float32")  # the oracle: the exact top-k of the probed lists' candidates
    index = HashIndex(DIM, hasher, partitions=nlist, partition_spill=spill, **kw)
    index.add(x[:n], ids=np.arange(len(x[:n])) * 3 + 1)
    return index


def _signs(codes):
    return 2 * np.unpackbits(codes, axis=1, bitorder="little").astype(np.float64) - 1


def _lut_bound(z, bits, stage):
    """Rounding bound of the tables the stage's scan uses: FAISS's 8-bit ones, or ours (0 ..
    TABLE_TOP; six-bit ones on six-bit lists)."""
    if stage.list_table().six_bit:
        m, width, top = six_bit.index_count(bits), 6, fastscan.TABLE_TOP
        z = np.pad(z, ((0, 0), (0, m * width - bits)))
    else:
        m, width = bits // 4, 4
        top = fastscan.TABLE_TOP if fastscan.available(m) else 255
    ranges = 2 * np.abs(z.reshape(len(z), m, width)).sum(axis=2)
    return m * ranges.max(axis=1) / top


def _oracle_lists(index, q, nprobe):
    """Per query: the positions in its nprobe nearest lists (numpy), or None where a near-tie at
    the cut-off makes the probed set ambiguous between float32 and float64."""
    cents = index._part.centroids.astype(np.float64)
    assign = index._part_assign.array
    sims = q.astype(np.float64) @ cents.T
    order = np.argsort(-sims, axis=1)
    out = []
    for i in range(len(q)):
        s = sims[i, order[i]]
        if nprobe < len(s) and s[nprobe - 1] - s[nprobe] < 1e-5:
            out.append(None)
            continue
        out.append(np.flatnonzero(np.isin(assign, order[i, :nprobe]).any(axis=1)))
    return out


def _check_assignment(index, x_stored):
    """Stored assignment = numpy nearest centroid (where not a near-tie)."""
    sims = x_stored.astype(np.float64) @ index._part.centroids.astype(np.float64).T
    top2 = np.sort(sims, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5
    np.testing.assert_array_equal(index._part_assign.array[clear, 0], sims.argmax(1)[clear])


def _check_against_oracle(index, q, nprobe, oracle, k=5):
    """Candidate sets, scores and reranked results of nprobe searches, against numpy."""
    stage = index._partitioned()
    stored_x, stored_ids, codes = index.get_features(index.ids), index.ids, index.codes
    _check_assignment(index, stored_x)
    members = _oracle_lists(index, q, nprobe)
    assert sum(m is not None for m in members) >= len(q) - 2  # the oracle is not vacuous
    z = index.hasher.project(q)
    n = len(index)
    pos, approx, _ = stage.knn(q, z, n, nprobe)
    exact = z.astype(np.float64) @ _signs(codes).T
    bound = _lut_bound(z, index.bits, stage)
    res = index.search(q, k=k, nprobe=nprobe, candidates=n)  # every member is a candidate
    sims = oracle.scores(q, stored_x, index.metric)
    for i, m in enumerate(members):
        if m is None:
            continue
        valid = pos[i] >= 0
        got = pos[i][valid]
        assert sorted(got.tolist()) == m.tolist(), "candidate set != members of the probed lists"
        assert np.abs(approx[i][valid] - exact[i, got]).max() <= bound[i]
        assert res.n_candidates[i] == m.size
        oracle.assert_topk(res.ids[i], res.scores[i], stored_ids[m], sims[i, m], k, index.metric)
    # fewer candidates than members: the stage's top-c by approximate score, reranked exactly
    c = 30
    pos = stage.knn(q, z, c, nprobe).positions
    res = index.search(q, k=k, nprobe=nprobe, candidates=c)
    for i, m in enumerate(members):
        if m is None:
            continue
        cand = pos[i][pos[i] >= 0]
        assert set(cand.tolist()) <= set(m.tolist())
        if m.size > c:
            cth = np.sort(exact[i, m])[::-1][c - 1]
            assert (exact[i, cand] >= cth - 2 * bound[i]).all(), "not the top-c of the probed lists"
        oracle.assert_topk(res.ids[i], res.scores[i], stored_ids[cand], sims[i, cand], k, index.metric)


@pytest.fixture(params=["six-bit", "ours", "faiss"])
def scanner(request):
    """The lists the test's indexes build and scan: six-bit ones read by our AVX-512 VBMI kernel,
    FAISS's read by our kernel (AVX-512BW / AVX2), or FAISS's read by FAISS's
    search_preassigned (the fallback): the oracle holds for all."""
    if request.param != "faiss" and not fastscan.available():
        pytest.skip("the fast-scan kernel is not built here: searches use FAISS's scan")
    if request.param == "six-bit" and fastscan.isa() < fastscan.AVX512_VBMI:
        pytest.skip("no AVX-512 VBMI on this CPU: no six-bit lists")
    contexts = {"six-bit": contextlib.nullcontext, "ours": lambda: fastscan.isa_cap(fastscan.AVX512),
                "faiss": fastscan.disabled}  # fmt: skip
    with contexts[request.param]():
        yield request.param


@pytest.mark.parametrize("nprobe", [1, 4, 16])
def test_nprobe_search_matches_the_numpy_oracle(data, oracle, nprobe, scanner):
    index = _index(data)
    _check_against_oracle(index, data[1], nprobe, oracle)


def test_all_lists_probed_is_the_flat_scan(data):
    index = _index(data)
    n = len(index)
    a = index.search(data[1], k=5, nprobe=16, candidates=n)
    b = index.search(data[1], k=5, ranking="asymmetric", candidates=n)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.n_candidates, b.n_candidates)


def test_spilled_items_sit_in_two_lists_and_come_back_once(data, oracle, scanner):
    index = _index(data, spill=2)
    _check_against_oracle(index, data[1], 3, oracle)
    stage = index._partitioned()
    assert stage.list_sizes().sum() == 2 * len(index)
    pos = stage.knn(data[1], index.hasher.project(data[1]), len(index), 8).positions
    for row in pos:
        got = row[row >= 0]
        assert np.unique(got).size == got.size
    # repeats are dropped before the top c: c distinct candidates, best-scored first
    z = index.hasher.project(data[1])
    few, few_scores, _ = stage.knn(data[1], z, 10, 8)
    assert (few >= 0).all() and all(np.unique(row).size == 10 for row in few)
    assert (np.diff(few_scores, axis=1) <= 0).all()


@pytest.mark.parametrize("repeat_rate", [None, 0.0])
@pytest.mark.parametrize("nprobe", [2, 8, 16])
def test_spilled_collection_finds_what_collecting_spill_times_c_finds(data, nprobe, repeat_rate, monkeypatch):
    """Collecting collect_factor * c (and spill * c again for a query left short) keeps the same
    c distinct candidates as collecting spill * c at once. With the repeat rate at 0 the factor
    is its 1.6 floor: at nprobe 16 of 16 every item is found twice, so every query is left short
    and scanned again. One query per call, so that both scans build their tables from batches
    of one shape."""
    index = _index(data, spill=2)
    stage = index._partitioned()
    x = data[1][:25]
    z = index.hasher.project(x)
    if repeat_rate is not None:
        monkeypatch.setattr(partitions, "SPILL_REPEAT_RATE", repeat_rate)
    for c in (5, 40, 300):
        for i in range(len(x)):
            got = stage.knn(x[i : i + 1], z[i : i + 1], c, nprobe)
            with monkeypatch.context() as m:
                m.setattr(partitions, "SPILL_COLLECT", 2.0)
                want = stage.knn(x[i : i + 1], z[i : i + 1], c, nprobe)
            # the same scores; the same items but where the c-th score ties (the fast-scan's
            # 8-bit tables tie many items, and FAISS's top-k for another k may keep others)
            np.testing.assert_array_equal(np.sort(got.scores), np.sort(want.scores))
            a, sa, b, sb = got.positions[0], got.scores[0], want.positions[0], want.scores[0]
            last = sa[a >= 0].min(initial=np.inf)
            assert (a >= 0).sum() == (b >= 0).sum()
            assert set(a[(a >= 0) & (sa > last)].tolist()) == set(b[(b >= 0) & (sb > last)].tolist())
            np.testing.assert_array_equal(got.scanned, want.scanned)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_spilled_lists_follow_soar_against_a_numpy_oracle(data, metric):
    """The second list is SOAR's: among the 16 nearest centroids but the first, the smallest
    ||x - c||^2 + <x - c, r>^2, r the unit residual to the nearest centroid (float64 loops;
    the stage computes it from the coarse search's scores, for l2 its distances)."""
    train = data[0]
    if metric == "l2":  # not unit rows, so ||x|| and ||c|| matter
        train = train * np.random.default_rng(5).uniform(0.5, 2.0, (len(train), 1)).astype(np.float32)
    x = train[:300]
    stage = PartitionStage.train(BITS, train, 40, metric, spill=2)
    got = stage.assign(x)
    c = stage.centroids.astype(np.float64)
    for row, lists in zip(x.astype(np.float64), got):
        near = np.argsort(((row - c) ** 2).sum(1) if metric == "l2" else -(c @ row), kind="stable")[:16]
        r = row - c[near[0]]
        r /= np.linalg.norm(r)
        loss = [np.sum((row - c[j]) ** 2) + np.dot(row - c[j], r) ** 2 for j in near[1:]]
        assert lists[0] == near[0]
        # near-ties in float32 may swap two candidates whose losses agree to ~1e-6
        best = near[1:][np.argmin(loss)]
        assert lists[1] == best or abs(loss[list(near[1:]).index(lists[1])] - min(loss)) < 1e-5


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_soar_lists_of_a_small_add_match_those_of_a_large_one(data, metric):
    """A small batch takes <c', c1> from gathered centroid rows, a large one from the Gram
    matrix: the same lists, row by row (but near-ties of the loss, ~1e-6 in float32)."""
    from hashindex.serving.candidates.partitions import soar_lists

    x = data[0] if metric == "cosine" else data[0] * 1.7
    stage = PartitionStage.train(BITS, x, 40, metric, spill=3)
    big = soar_lists(stage.coarse, stage.centroids, x[:400], 3)  # 400 * 15 pairs >= 40^2 / 8: Gram
    small = np.concatenate([soar_lists(stage.coarse, stage.centroids, x[i : i + 1], 3) for i in range(40)])
    assert (big[:40, 0] == small[:, 0]).all()
    assert (big[:40] == small).mean() > 0.97


def test_dedupe_keeps_the_first_occurrence():
    pos = np.array([[5, 3, 5, -1, 3, 7], [1, 2, 3, 4, -1, -1]])
    np.testing.assert_array_equal(dedupe(pos), [[5, 3, -1, -1, -1, 7], [1, 2, 3, 4, -1, -1]])


def test_dedupe_matches_a_first_seen_loop_on_wide_rows():
    # rows as wide as a deep probe returns (numpy sorts short rows by insertion, which is stable
    # anyway): many repeats, -1 padding
    rng = np.random.default_rng(5)
    pos = rng.integers(-1, 600, size=(20, 2000))
    want = np.full(pos.shape, -1)
    for i, row in enumerate(pos):
        seen = set()
        for j, p in enumerate(row.tolist()):
            if p >= 0 and p not in seen:
                seen.add(p)
                want[i, j] = p
    np.testing.assert_array_equal(dedupe(pos), want)


# -- FAISS layout and the 512-entry append --------------------------------------------------------
@pytest.mark.parametrize("bits,nlist", [(128, 16), (64, 8)])
def test_lists_are_byte_for_byte_what_faiss_add_writes(bits, nlist):
    """dim == K, features = the codes' {-1, +1} vectors: FAISS's own add_with_ids (its quantizer =
    our centroids, its PQ encoder) must write the same ids and blocks as our packing."""
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 256, size=(3000, bits // 8), dtype=np.uint8)
    x = _signs(codes).astype(np.float32)
    stage = PartitionStage.train(bits, x, nlist, "ip")
    with fastscan.disabled():  # FAISS's lists, as where our scan is not built
        stage.build(codes, stage.assign(x))
    quantizer = faiss.IndexFlatIP(bits)
    quantizer.add(stage.centroids)
    ref = faiss.IndexIVFPQFastScan(quantizer, bits, nlist, bits // 4, 4, faiss.METRIC_INNER_PRODUCT)
    ref.by_residual = False
    cb = np.broadcast_to(sign_patterns(), (bits // 4, 16, 4))
    faiss.copy_array_to_vector(np.ascontiguousarray(cb).ravel(), ref.pq.centroids)
    ref.is_trained = True
    ref.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    layout = BlockLayout.of(stage.ivf)
    for i in range(nlist):
        a, b = stage.ivf.invlists, ref.invlists
        m = a.list_size(i)
        assert m == b.list_size(i)
        if m:
            nb = layout.nbytes_for(m)
            np.testing.assert_array_equal(faiss.rev_swig_ptr(a.get_ids(i), m), faiss.rev_swig_ptr(b.get_ids(i), m))
            np.testing.assert_array_equal(faiss.rev_swig_ptr(a.get_codes(i), nb), faiss.rev_swig_ptr(b.get_codes(i), nb))
    for ids, c in stage.list_contents():
        np.testing.assert_array_equal(c, codes[ids])


def test_stage_bytes_count_its_lists(data, scanner):
    """The stage's nbytes (memory_usage's "partition_lists" part) counts what its lists hold:
    six-bit lists exactly (64-code blocks of 3/4 byte per six-bit index, 8-byte ids, 2-byte
    partners), FAISS's lists at least that much (their blocks grow in powers of two)."""
    index = _index(data, spill=2)
    index.search(data[1], k=3, nprobe=2)
    stage = index._part
    sizes = stage.list_sizes()
    m = six_bit.index_count(index.bits)
    blocks = int(sum(-(-int(n) // 64) * 64 * m * 3 // 4 for n in sizes))
    exact = 4 * stage.nlist * stage.dim + blocks + (8 + 2) * int(sizes.sum())
    if stage.list_table().six_bit:
        assert stage.nbytes == exact
    else:
        assert stage.nbytes >= 4 * stage.nlist * stage.dim + (8 + 2) * int(sizes.sum()) + int(sizes.sum()) * index.bits // 8


def test_appends_across_block_and_512_entry_boundaries(data, scanner):
    """FAISS 1.15.1's BlockInvertedLists.add_entries overflows the heap when appending to a list
    of exactly 512 * j entries; index.add must go around it. One list, appends leaving it at
    31, 32, 512, 513, 1024, 1536 ... entries (partial and whole blocks of 32 and of 64), each
    checked against the codes, for every kind of lists."""
    x, q, hasher = data
    index = HashIndex(DIM, hasher, partitions=1)
    index.add(x[:31])
    index.search(q, k=3, nprobe=1)  # builds the stage: later adds append to its one list
    for lo, hi in [(31, 32), (32, 512), (512, 513), (513, 1024), (1024, 1536), (1536, 1537), (1537, 2600)]:
        index.add(x[lo:hi])
        ((ids, codes),) = index._part.list_contents()
        np.testing.assert_array_equal(ids, np.arange(hi))
        np.testing.assert_array_equal(codes, index.codes)
    res = index.search(q, k=3, nprobe=1, candidates=len(index))
    ref = index.search(q, k=3, ranking="asymmetric", candidates=len(index))
    np.testing.assert_array_equal(res.ids, ref.ids)


# -- mutation, persistence, concurrency --------------------------------------------------------------
def _same(a, b):
    for field in ("ids", "scores", "hamming", "n_candidates"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_add_remove_keep_the_stage_in_step(data, oracle):
    x, q, _ = data
    index = _index(data, n=2500)
    index.search(q, k=5, nprobe=4)  # built on 2500 items
    centroids = index._part.centroids
    for lo, hi in [(2500, 2501), (2501, 3100), (3100, 4000)]:
        index.add(x[lo:hi], ids=np.arange(lo, hi) * 3 + 1)
    np.testing.assert_array_equal(index._part.centroids, centroids)  # adds assign, never retrain
    _check_against_oracle(index, q, 4, oracle)
    gone = np.arange(0, 4000, 7) * 3 + 1
    index.remove(gone)
    assert not index._part.has_lists  # positions compacted: lists rebuilt on next use
    assert index._part_assign.array.shape == (len(index), 1)
    _check_against_oracle(index, q, 4, oracle)
    # rebuilt from the stored assignment = a fresh stage on the same centroids and survivors
    fresh = PartitionStage(index.bits, centroids, index.metric)
    fresh.build(index.codes, fresh.assign(index.get_features(index.ids)))
    for (a_ids, a_codes), (b_ids, b_codes) in zip(index._part.list_contents(), fresh.list_contents()):
        np.testing.assert_array_equal(a_ids, b_ids)
        np.testing.assert_array_equal(a_codes, b_codes)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trips(data, tmp_path, mmap):
    x, q, _ = data
    index = _index(data, n=3000)
    before = index.search(q, k=6, nprobe=3, candidates=40)
    index.save(tmp_path / "ix")
    files = json.loads((tmp_path / "ix" / "manifest.json").read_text())["files"]
    assert {"partition_centroids.npy", "partition_assign.npy"} <= set(files)
    loaded = HashIndex.load(tmp_path / "ix", mmap=mmap)
    assert loaded.partitions == 16 and loaded._part.nlist == 16 and not loaded._part.has_lists
    assert loaded._part_assign.is_mmap == mmap
    np.testing.assert_array_equal(loaded._part.centroids, index._part.centroids)
    _same(loaded.search(q, k=6, nprobe=3, candidates=40), before)
    # the same mutations on both give the same results; and again after another save / load
    for ix in (index, loaded):
        ix.add(x[3000:3600], ids=np.arange(3000, 3600) * 3 + 1)
        ix.remove(np.arange(0, 3000, 5) * 3 + 1)
    _same(loaded.search(q, k=6, nprobe=3, candidates=40), index.search(q, k=6, nprobe=3, candidates=40))
    loaded.save(tmp_path / "ix")
    again = HashIndex.load(tmp_path / "ix", mmap=mmap)
    _same(again.search(q, k=6, nprobe=3, candidates=40), index.search(q, k=6, nprobe=3, candidates=40))


def test_an_unbuilt_stage_is_not_saved_and_is_built_after_load(data, tmp_path):
    index = _index(data, n=1000)
    index.save(tmp_path / "ix")
    assert not (tmp_path / "ix" / "partition_assign.npy").exists()
    loaded = HashIndex.load(tmp_path / "ix")
    assert loaded._part is None
    res = loaded.search(data[1], k=3, nprobe=2)
    assert (res.ids[:, 0] >= 0).all() and loaded._part.nlist == 16


def test_corrupt_or_inconsistent_partition_files_are_refused(data, tmp_path):
    index = _index(data, n=1000)
    index.search(data[1], k=3, nprobe=2)
    index.save(tmp_path / "ix")
    path = tmp_path / "ix" / "partition_assign.npy"
    arr = np.load(path)
    arr[3, 0] = 99  # list 99 of 16
    np.save(path, arr)
    with pytest.raises(IndexFormatError, match="partition_assign"):
        HashIndex.load(tmp_path / "ix")  # checksum
    _rewrite_manifest(tmp_path / "ix", lambda m: m)  # re-checksum the modified file
    with pytest.raises(IndexFormatError, match="outside"):
        HashIndex.load(tmp_path / "ix", verify=False)


def _rewrite_manifest(root, edit):
    """Apply ``edit`` to the manifest and re-checksum it and its files (a consistent but wrong index)."""
    m = json.loads((root / "manifest.json").read_text())
    m.pop("manifest_sha256")
    m = edit(m)
    for name in list(m["files"]):
        m["files"][name] = {"sha256": persist.sha256_file(root / name), "bytes": (root / name).stat().st_size}
    import hashlib

    m["manifest_sha256"] = hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(m))


def test_concurrent_nprobe_searches_during_add_and_remove(data, oracle):
    """No exception, and every result is an item that existed with its true score; afterwards
    the stage agrees with the numpy oracle."""
    x, q, hasher = data
    index = HashIndex(DIM, hasher, partitions=8)
    index.add(x[:1500], ids=np.arange(1500))
    index.search(q, k=5, nprobe=2)
    feat_of = dict(enumerate(x))
    ever = set(range(1500))
    count = [0]
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer():
        rng = np.random.default_rng(0)
        for lo in range(1500, 4000, 100):
            if stop.is_set():
                return
            ever.update(range(lo, lo + 100))
            index.add(x[lo : lo + 100], ids=np.arange(lo, lo + 100))
            index.remove(rng.choice(index.ids, size=50, replace=False))

    def reader(seed):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            qi = rng.integers(0, len(q), 4)
            res = index.search(q[qi], k=5, nprobe=int(rng.integers(1, 9)), candidates=int(rng.integers(5, 60)))
            for row, i in enumerate(qi):
                for item, score in zip(res.ids[row], res.scores[row]):
                    if item >= 0:
                        assert int(item) in ever
                        assert abs(score - float(feat_of[int(item)] @ q[i])) < 1e-4
            count[0] += 1

    def guard(fn, *a):
        def run():
            try:
                fn(*a)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                stop.set()

        return run

    threads = [threading.Thread(target=guard(writer))] + [threading.Thread(target=guard(reader, s)) for s in (1, 2)]
    for t in threads:
        t.start()
    threads[0].join(60)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    if errors:
        raise errors[0]
    assert count[0] > 5
    _check_against_oracle(index, q, 3, oracle)


# -- settings and bad input ----------------------------------------------------------------------------
def test_nlist_rule():
    # ~2 sqrt(n) as a power of two: the sizes benchmarks/README.md measured the rule at
    assert nlist_for(10_000_000) == 8192 and nlist_for(1_000_000) == 2048
    assert nlist_for(100_000) == 512 and nlist_for(10) == 16


def test_auto_builds_from_the_threshold(data, monkeypatch):
    import hashindex.serving.index as hindex

    x, q, hasher = data
    index = HashIndex(DIM, hasher)  # partitions="auto"
    index.add(x)
    with pytest.raises(InputError, match="partitions='auto' builds a partition stage from 100,000 items"):
        index.search(q, k=3, nprobe=2)
    assert index._part is None
    assert index.search(q, k=3).n_candidates[0] == min(len(x), 500)  # the default: the flat scan
    monkeypatch.setattr(hindex, "PARTITION_MIN_ITEMS", 1000)
    index.search(q, k=3, nprobe=2)
    assert index._part.nlist == nlist_for(len(x)) == 128


@pytest.mark.parametrize(
    "make,call,match",
    [
        (lambda d: _index(d, nlist=None), lambda ix, q: ix.search(q, k=3, nprobe=2), "partitions=None"),
        (lambda d: _index(d, n=500, nlist=1000), lambda ix, q: ix.search(q, k=3, nprobe=2), "more lists than items"),
        (lambda d: _index(d), lambda ix, q: ix.search(q, k=3, nprobe=17), "exceeds the partition stage's 16 lists"),
        (lambda d: _index(d), lambda ix, q: ix.search(q, k=3, nprobe=0), "nprobe must be a positive integer"),
        (lambda d: _index(d), lambda ix, q: ix.search(q, k=3, nprobe=2.0), "nprobe must be a positive integer"),
        (lambda d: _index(d), lambda ix, q: ix.search(q, k=3, nprobe=2, radius=1), "radius"),
        (lambda d: _index(d), lambda ix, q: ix.search(q, k=3, nprobe=2, ranking="hamming"), "Hamming ranking"),
        (lambda d: _index(d), lambda ix, q: ix.search(q, k=3, nprobe=2, query_codes=ix.codes[:1]), "projection"),
    ],
    ids=["no-partitions", "more-lists-than-items", "nprobe>nlist", "nprobe=0", "nprobe-float", "with-radius",
         "hamming", "query-codes"],  # fmt: skip
)
def test_bad_nprobe_is_refused_and_changes_nothing(data, make, call, match):
    index = make(data)
    before = (len(index), index._part is not None)
    with pytest.raises(HashIndexError, match=match):
        call(index, data[1][:1])
    assert (len(index), index._part is not None) == before


@pytest.mark.parametrize("bad", ["fast", 0, -3, 2.5, True])
def test_bad_partitions_argument(bad):
    with pytest.raises(InputError, match="partitions"):
        HashIndex(DIM, partitions=bad)



def test_spill_beyond_the_number_of_lists_is_clamped_and_round_trips(data, tmp_path):
    """partition_spill 2 (the default) on a one-list stage: each item sits in its one list once,
    and the saved assignment loads back with the same width."""
    x, q, hasher = data
    index = HashIndex(DIM, hasher, partitions=1)
    index.add(x[:500])
    before = index.search(q, k=3, nprobe=1, candidates=500)
    assert index._part.spill == 1 and index._part.list_sizes().sum() == 500
    index.save(tmp_path / "ix")
    again = HashIndex.load(tmp_path / "ix")
    _same(before, again.search(q, k=3, nprobe=1, candidates=500))


@pytest.mark.parametrize("spill", [1, 2])
def test_adaptive_depth_scans_each_querys_own_number_of_lists(data, spill):
    """With ``slack``, a query scans the lists whose centroid scores within slack of its best
    one (numpy float64 oracle for the depth), and gets exactly what a fixed-nprobe probe of that
    depth gives it; slack 0 is one list (no ties here), a huge slack is the fixed nprobe."""
    from hashindex.serving.candidates.partitions import adaptive_depth

    _, q, _ = data
    index = _index(data, spill=spill)
    stage = index._partitioned()
    z = index._project(q)
    sims = np.sort(q.astype(np.float64) @ stage.centroids.astype(np.float64).T, axis=1)[:, ::-1][:, :8]
    for slack in (0.0, 0.05, 0.2, 10.0):
        depth = np.maximum(1, (sims >= sims[:, :1] - slack).sum(axis=1))
        np.testing.assert_array_equal(adaptive_depth(sims, slack), depth)
        pos, scores, scanned = stage.knn(q, z, 30, 8, slack=slack)
        for i, d in enumerate(depth):
            ref_pos, ref_scores, ref_scanned = stage.knn(q[i : i + 1], z[i : i + 1], 30, int(d))
            assert scanned[i] == ref_scanned[0]
            # the same items, but where the 30th score ties: with spill the two collect for their
            # own nprobe (8 against d lists: collect_factor), and FAISS's top-k for another k may
            # keep other items among those tied at the fast-scan's 8-bit scores
            a, b = pos[i], ref_pos[0]
            last = scores[i][a >= 0].min(initial=np.inf)
            assert (a >= 0).sum() == (b >= 0).sum(), (slack, i, d)
            assert set(a[(a >= 0) & (scores[i] > last + 1e-5)].tolist()) == set(b[(b >= 0) & (ref_scores[0] > last + 1e-5)].tolist())
            np.testing.assert_allclose(np.sort(scores[i][pos[i] >= 0]), np.sort(ref_scores[0][ref_pos[0] >= 0]), atol=1e-5)
        if slack == 0.0:
            assert (depth == 1).all()
        if slack == 10.0:
            assert (depth == 8).all()
            fixed = stage.knn(q, z, 30, 8)
            np.testing.assert_array_equal(np.sort(pos, axis=1), np.sort(fixed[0], axis=1))


@pytest.mark.parametrize("spherical", [True, False])
def test_kmeans_one_iteration_per_call_matches_one_faiss_run(spherical):
    """train_centroids runs k-means one iteration per call (a bar between them): the centroids
    are those of one faiss.Kmeans run of KMEANS_NITER iterations on the same rows."""
    from hashindex.serving.candidates import partitions

    x = _clustered(3000, 7)
    got = partitions.train_centroids(x, 32, spherical)
    rows = np.sort(np.random.default_rng(partitions.KMEANS_SEED).choice(len(x), 32 * 64, replace=False))
    km = faiss.Kmeans(DIM, 32, niter=partitions.KMEANS_NITER, seed=partitions.KMEANS_SEED, spherical=spherical,
                      max_points_per_centroid=64)  # fmt: skip
    km.train(np.ascontiguousarray(x[rows]))
    np.testing.assert_allclose(got, km.centroids, atol=1e-6)


def test_centroid_blocks_leave_the_assignment_and_faiss_setting_as_they_were():
    """The build raises FAISS's process-wide BLAS block size while it runs: the nearest lists
    still match a float64 numpy argmax, and the setting comes back (also after an error)."""
    import faiss

    from hashindex.serving.candidates.partitions import centroid_blocks, nearest_lists

    rng = np.random.default_rng(8)
    centroids = rng.standard_normal((3000, 32)).astype(np.float32)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    coarse = faiss.IndexFlatIP(32)
    coarse.add(centroids)
    before = faiss.cvar.distance_compute_blas_database_bs
    got = nearest_lists(coarse, x, 1)[:, 0]
    np.testing.assert_array_equal(got, np.argmax(x.astype(np.float64) @ centroids.T.astype(np.float64), axis=1))
    assert faiss.cvar.distance_compute_blas_database_bs == before
    with pytest.raises(RuntimeError):
        with centroid_blocks(3000):
            assert faiss.cvar.distance_compute_blas_database_bs == max(before, 3000)
            raise RuntimeError("inside")
    assert faiss.cvar.distance_compute_blas_database_bs == before


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("nprobe", [1, 7, 64])
def test_nearest_centroids_agree_with_faiss_flat_search(metric, nprobe, monkeypatch):
    # oracle: FAISS's own flat index over the same centroids; blocks of 5 queries (and one
    # partial block) through a small cell budget
    monkeypatch.setattr(partitions, "_COARSE_CELLS", 5 * 64)
    rng = np.random.default_rng(nprobe)
    centroids = rng.standard_normal((64, DIM)).astype(np.float32)
    x = rng.standard_normal((23, DIM)).astype(np.float32)
    flat = faiss.IndexFlatL2(DIM) if metric == "l2" else faiss.IndexFlatIP(DIM)
    flat.add(centroids)
    want_scores, want_lists = flat.search(x, nprobe)
    scores, lists = nearest_centroids(centroids, x, nprobe, metric)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-3)
    # the same lists, up to the order of near-equal scores
    assert (np.sort(lists, 1) == np.sort(want_lists, 1)).mean() > 0.99
    assert (np.diff(scores, axis=1) >= 0).all() if metric == "l2" else (np.diff(scores, axis=1) <= 0).all()
    assert nearest_centroids(centroids, x[:0], nprobe, metric)[1].shape == (0, nprobe)
    # unordered: the same lists with their scores, in any order
    loose_scores, loose_lists = nearest_centroids(centroids, x, nprobe, metric, ordered=False)
    order = np.argsort(loose_lists, axis=1)
    np.testing.assert_array_equal(np.take_along_axis(loose_lists, order, 1), np.sort(lists, 1))
    by_list = np.take_along_axis(scores, np.argsort(lists, axis=1), 1)
    np.testing.assert_allclose(np.take_along_axis(loose_scores, order, 1), by_list, rtol=1e-6, atol=1e-6)


def test_collect_factor_grows_with_the_probed_share_between_its_floor_and_the_spill():
    from hashindex.serving.candidates.partitions import SPILL_COLLECT, collect_factor

    shares = np.linspace(0, 1, 41)
    f = np.array([collect_factor(p, 2) for p in shares])
    assert f[0] == SPILL_COLLECT and (np.diff(f) >= 0).all() and f.max() <= 2.0
    assert collect_factor(0.5, 2) > 1.95  # half the lists probed: nearly every top item found twice
    assert collect_factor(1.0, 3) <= 3.0 and collect_factor(1.0, 3) > 2.9
    assert collect_factor(0.5, 1) == 1.0  # nothing spills, nothing repeats


def test_a_deep_probe_of_spilled_lists_scans_once(data, monkeypatch):
    """Half the lists or all of them probed: the collection is sized for the repeats, so no
    query is left short and scanned again (probe() called once), and every query still gets c
    distinct candidates."""
    index = _index(data, spill=2)
    stage = index._partitioned()
    x = data[1]
    z = index.hasher.project(x)
    calls = []
    real = partitions.probe
    monkeypatch.setattr(partitions, "probe", lambda *a, **kw: calls.append(a[6]) or real(*a, **kw))
    for nprobe in (8, 16):
        calls.clear()
        got = stage.knn(x, z, 40, nprobe)
        assert len(calls) == 1
        assert all(np.unique(row).size == 40 for row in got.positions) and (got.positions >= 0).all()
