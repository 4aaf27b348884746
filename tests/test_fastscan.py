"""Our scan of the partition stage's lists (candidates/fastscan.c, fastscan.py) against a numpy
oracle: every entry of the probed lists scored by summing its nibbles' (FAISS's blocks) or its
six-bit indices' (six-bit blocks) table values, the indices read from the code's bits with
``np.unpackbits`` (the integer scores the kernel sums in 16 bits, so they compare exactly), the
top k taken by ``np.argsort``. The codes are read back from the lists by ``list_contents``, not
through the kernel. Every kernel this CPU runs is checked (AVX2 and AVX-512BW on FAISS's blocks,
AVX-512 VBMI on six-bit ones: ``isa``, the cap the stage is built and scanned under), and the
FAISS path the search falls back to elsewhere is run beside them.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hashindex.serving.candidates import fastscan, six_bit
from hashindex.serving.candidates.asymmetric import sign_patterns
from hashindex.serving.candidates.partitions import PartitionStage, dedupe, probe

pytestmark = pytest.mark.skipif(
    not fastscan.available(), reason="the fast-scan kernel is not built here (no C compiler, or not x86-64 with AVX2)"
)

# the kernels this CPU runs: AVX2, AVX-512BW (FAISS's blocks), AVX-512 VBMI (six-bit blocks)
ISAS = [level for level in (fastscan.AVX2, fastscan.AVX512, fastscan.AVX512_VBMI) if level <= fastscan.isa()]


def _stage(n, bits, nlist, spill, seed, codes=None, isa=fastscan.AVX512_VBMI):
    """A stage built under the cap ``isa``: six-bit lists at AVX512_VBMI (where the CPU has it),
    FAISS's below."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((nlist, 8)).astype(np.float32)
    stage = PartitionStage(bits, centroids, "ip", spill)
    if codes is None:
        codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    assign = np.stack([rng.permutation(np.repeat(np.arange(nlist), -(-n // nlist))[:n]) for _ in range(spill)], 1)
    if spill == 2:  # an item's two lists differ
        assign[:, 1] = np.where(assign[:, 1] == assign[:, 0], (assign[:, 0] + 1) % nlist, assign[:, 1])
    with fastscan.isa_cap(isa):
        stage.build(codes, assign.astype(np.int32))
    assert stage.list_table().six_bit == (isa >= fastscan.AVX512_VBMI and fastscan.isa() >= fastscan.AVX512_VBMI)
    return stage


def _indices(codes, six_bits):
    """The table index of each sub-quantizer of ``codes [n, K/8]``: nibbles (FAISS's blocks) or
    six-bit values (bits 6j .. 6j + 5, least significant first, zero past K), from the bits."""
    if not six_bits:
        return np.stack([codes & 15, codes >> 4], axis=2).reshape(len(codes), -1)
    bits = np.unpackbits(codes, axis=1, bitorder="little")
    m = six_bit.index_count(bits.shape[1])
    bits = np.pad(bits, ((0, 0), (0, 6 * m - bits.shape[1])))
    return (bits.reshape(len(codes), m, 6).astype(np.int64) << np.arange(6)).sum(axis=2)


def _oracle(stage, tables, lists, k, table=None):
    """Per query: (sorted scores of its top k, all (score, id) entries of its probed lists). When
    the scan's ``table`` (default: the stage's) names each entry's other list, an item found in
    two of a query's lists counts once (its two entries hold the same code, so the same score)."""
    table = stage.list_table() if table is None else table
    contents = stage.list_contents()
    out = []
    for i in range(len(tables)):
        ids, scores = [], []
        for lst in lists[i][lists[i] >= 0]:
            pos, codes = contents[lst]
            if not len(pos):
                continue
            idx = _indices(codes, table.six_bit)
            scores.append(tables[i][np.arange(idx.shape[1]), idx].astype(np.int64).sum(axis=1))
            ids.append(pos)
        ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
        scores = np.concatenate(scores) if scores else np.empty(0, np.int64)
        if table.partners.size:
            ids, first = np.unique(ids, return_index=True)
            scores = scores[first]
        out.append((np.sort(scores)[::-1][:k], ids, scores))
    return out


def _check(got_ids, got_scores, oracle, k):
    for i, (top, ids, scores) in enumerate(oracle):
        have = min(k, len(ids))
        np.testing.assert_array_equal(got_scores[i][:have], top, err_msg=f"query {i}: scores")
        assert (got_ids[i][have:] == -1).all()
        if not have:
            continue
        kth = top[-1]
        # above the k-th score: exactly the oracle's entries (a spilled item twice if both lists
        # are probed, unless the scan knows its lists' partners); at it: any of the tied ones
        above = got_ids[i][:have][got_scores[i][:have] > kth]
        np.testing.assert_array_equal(np.sort(above), np.sort(ids[scores > kth]))
        tied = got_ids[i][:have][got_scores[i][:have] == kth]
        assert set(tied.tolist()) <= set(ids[scores == kth].tolist())
        assert (np.diff(got_scores[i][:have].astype(np.int64)) <= 0).all(), "not best first"


def _tables(rng, nq, bits, stage):
    """Tables for the stage's blocks."""
    z = rng.standard_normal((nq, bits)).astype(np.float32)
    return fastscan.lookup_tables(z, six_bits=stage.list_table().six_bit)[0]


@pytest.mark.parametrize("isa", ISAS)
# 40: a pair of sub-quantizers past the last four; 40, 64, 128 pad their last six-bit group
@pytest.mark.parametrize("bits", [40, 64, 128, 192, 256])
@pytest.mark.parametrize("spill", [1, 2])
def test_top_k_matches_the_numpy_oracle(isa, bits, spill):
    rng = np.random.default_rng(bits + spill)
    stage = _stage(3000 + bits, bits, 96, spill, seed=bits, isa=isa)
    tables = _tables(rng, 23, bits, stage)
    lists = np.stack([rng.permutation(96)[:80] for _ in range(23)]).astype(np.int64)
    lists[3, 40:] = -1  # a query with fewer lists
    lists[5, :] = -1  # and one with none
    with fastscan.isa_cap(isa):
        # k: a heap's worth, FAISS's reservoir range, a sampled threshold, more than the lists hold
        for k in (1, 7, 20, 100, 700, 8000):
            ids, scores, _ = fastscan.scan_raw(tables, lists, stage.list_table(), k)
            _check(ids, scores, _oracle(stage, tables, lists, k), k)


@pytest.mark.parametrize("isa", ISAS)
def test_scores_spread_wider_than_the_selection_histogram(isa):
    """Codes from nearly all-zero to nearly all-one bits, scored by tables that count set bits
    at their largest entry per bit set (FAISS's blocks: 8-bit tables, 255 / 4 per bit at 256 bits;
    six-bit blocks: 63 / 6 per bit at 480): the sums spread over more than 4,096 values, so the
    counting selection bins them coarsely and counts the boundary bin again."""
    rng = np.random.default_rng(21)
    six = isa >= fastscan.AVX512_VBMI
    bits, top, width = (480, 63, 6) if six else (256, 255, 4)
    density = rng.uniform(0, 1, (6000, 1))
    codes = np.packbits(rng.uniform(0, 1, (6000, bits)) < density, axis=1, bitorder="little")
    stage = _stage(6000, bits, 40, 1, seed=21, codes=codes, isa=isa)
    m = six_bit.index_count(bits) if six else bits // 4
    ones = np.unpackbits(np.arange(2**width, dtype=np.uint8)[:, None], axis=1).sum(axis=1)
    tables = np.broadcast_to(np.rint(top * ones / width).astype(np.uint8), (7, m, 2**width)).copy()
    lists = np.stack([rng.permutation(40)[:36] for _ in range(7)]).astype(np.int64)
    with fastscan.isa_cap(isa):
        for k in (3, 90, 700, 4000):  # 4,000: nearly all a query's entries held, before any shrink
            ids, scores, _ = fastscan.scan_raw(tables, lists, stage.list_table(), k)
            oracle = _oracle(stage, tables, lists, k)
            _check(ids, scores, oracle, k)
    assert min(np.ptp(entries) for _, _, entries in oracle) > 4096


@pytest.mark.parametrize("isa", ISAS)
def test_a_sample_that_guesses_too_high_is_scanned_again(isa):
    """The lists a query samples (every 16th by nearness) hold its best codes; the others hold
    many codes just below them. The sample's guess is then above the true k-th score, the
    second pass finds too few, and the query is scanned again: still the exact top k."""
    bits, nlist, per = 64, 128, 64
    rng = np.random.default_rng(5)
    z = rng.standard_normal((1, bits)).astype(np.float32)
    best = np.packbits(z[0] > 0, bitorder="little")
    near = best.copy()
    near[0] ^= 1  # one bit off: the next score down
    codes = np.where((np.arange(nlist * per) // per % 16 == 0)[:, None], best, near).astype(np.uint8)
    codes[::7] = rng.integers(0, 256, (len(codes[::7]), bits // 8), dtype=np.uint8)  # and some noise
    stage = PartitionStage(bits, rng.standard_normal((nlist, 8)).astype(np.float32), "ip", 1)
    with fastscan.isa_cap(isa):
        stage.build(codes, (np.arange(nlist * per) // per).astype(np.int32)[:, None])
    tables = fastscan.lookup_tables(z, six_bits=stage.list_table().six_bit)[0]
    lists = np.arange(nlist, dtype=np.int64)[None, :]  # rank r = list r: the sample is lists 0, 16, ...
    k = 600  # the sample (8 lists x ~55 best codes) holds the 26 it needs: a guess at the best score
    with fastscan.isa_cap(isa):
        ids, scores, _ = fastscan.scan_raw(tables, lists, stage.list_table(), k)
    _check(ids, scores, _oracle(stage, tables, lists, k), k)
    assert (scores[0] < scores[0, 0]).any(), "the case must reach below the sampled best score"


def test_a_large_k_takes_fewer_queries_per_call(monkeypatch):
    """Scratch is bounded (WORK_KEYS): a large k splits the batch into calls of fewer queries, and
    one query needing more than the bound gets scratch that is not kept; the answers hold."""
    monkeypatch.setattr(fastscan, "WORK_KEYS", 5000)
    rng = np.random.default_rng(9)
    stage = _stage(4000, 64, 64, 2, seed=9)
    tables = _tables(rng, 9, 64, stage)
    lists = np.stack([rng.permutation(64)[:40] for _ in range(9)]).astype(np.int64)
    for k in (700, 3000):  # 2 queries per call; then 1 per call, over the bound
        ids, scores, _ = fastscan.scan_raw(tables, lists, stage.list_table(), k)
        _check(ids, scores, _oracle(stage, tables, lists, k), k)


@pytest.mark.parametrize("isa", ISAS)
def test_ids_are_read_back_whatever_their_size(isa):
    """The kernel keys entries by list and offset and reads the ids of the k kept from FAISS's id
    arrays at the end: positions far past 2^48 (and past any key bit) come back as stored."""
    rng = np.random.default_rng(13)
    stage = _stage(2000, 64, 32, 2, seed=13, isa=isa)
    extra = rng.integers(0, 256, (700, 8), dtype=np.uint8)
    assign = np.stack([rng.integers(0, 32, 700), rng.integers(0, 32, 700)], 1).astype(np.int32)
    assign[:, 1] = np.where(assign[:, 1] == assign[:, 0], (assign[:, 0] + 1) % 32, assign[:, 1])
    stage.append(extra, (1 << 62) - 1000, assign)
    tables = _tables(rng, 11, 64, stage)
    lists = np.stack([rng.permutation(32)[:20] for _ in range(11)]).astype(np.int64)
    with fastscan.isa_cap(isa):
        for k in (5, 300, 3000):
            ids, scores, _ = fastscan.scan_raw(tables, lists, stage.list_table(), k)
            _check(ids, scores, _oracle(stage, tables, lists, k), k)
    assert (ids > 1 << 61).any()


def test_lists_beyond_the_keys_go_to_faiss():
    """More lists, or longer ones, than a key can name: the kernel is not used for them (probe
    asks FAISS, and a stage with more lists never builds six-bit ones) and refuses them if
    called anyway."""
    for isa in ISAS:
        stage = _stage(500, 64, 16, 1, seed=3, isa=isa)
        table = stage.list_table()
        assert fastscan.available(16, table)
        long = table._replace(sizes=np.where(table.sizes > 0, fastscan.MAX_LIST_SIZE + 1, 0))
        many = fastscan.ListTable(*(np.zeros(fastscan.MAX_LISTS + 1, a.dtype) for a in table[:3]))
        assert not fastscan.available(16, long) and not fastscan.available(16, many)
        tables = _tables(np.random.default_rng(3), 2, 64, stage)
        lists = np.zeros((2, 1), np.int64)
        with fastscan.isa_cap(isa), pytest.raises(RuntimeError, match="bad arguments"):
            fastscan.scan_raw(tables, lists, long, 5)
    assert not fastscan.six_bit_available(64, fastscan.MAX_LISTS + 1)


def test_every_code_tied():
    """A query whose tables are all zero scores every code alike: any k of them, all kept."""
    stage = _stage(6000, 64, 64, 2, seed=4)
    tables = np.zeros_like(_tables(np.random.default_rng(4), 2, 64, stage))
    lists = np.tile(np.arange(64, dtype=np.int64), (2, 1))
    for k in (20, 5000):
        ids, scores, _ = fastscan.scan_raw(tables, lists, stage.list_table(), k)
        _check(ids, scores, _oracle(stage, tables, lists, k), k)
        assert (scores == 0).all() and (ids >= 0).all()


def test_both_instruction_sets_agree_on_scores():
    if fastscan.isa() < 2:
        pytest.skip("no AVX-512BW on this CPU: one kernel to check")
    rng = np.random.default_rng(3)
    stage = _stage(5000, 128, 64, 2, seed=3, isa=fastscan.AVX512)
    tables = _tables(rng, 40, 128, stage)
    lists = np.stack([rng.permutation(64)[:48] for _ in range(40)]).astype(np.int64)
    with fastscan.isa_cap(1):
        avx2 = fastscan.scan_raw(tables, lists, stage.list_table(), 300)[1]
    np.testing.assert_array_equal(fastscan.scan_raw(tables, lists, stage.list_table(), 300)[1], avx2)


def test_lookup_tables_give_the_asymmetric_score_within_rounding():
    """s / scale + offset recovers <z, 2b - 1> (numpy float64) to within half a step per
    sub-quantizer."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((10, 128)).astype(np.float32)
    codes = rng.integers(0, 256, (500, 16), dtype=np.uint8)
    tables, scale, offset = fastscan.lookup_tables(z)
    nib = np.stack([codes & 15, codes >> 4], axis=2).reshape(500, -1)
    raw = tables[:, np.arange(32), nib].astype(np.int64).sum(axis=2)  # [nq, n]
    exact = z.astype(np.float64) @ (2 * np.unpackbits(codes, axis=1, bitorder="little").astype(np.float64) - 1).T
    approx = raw / scale[:, None] + offset[:, None]
    assert np.abs(approx - exact).max() <= (32 * 0.5 / scale.min()) * 1.001
    # the tables are the sign patterns' inner products, shifted and scaled
    t = z.reshape(10, 32, 4).astype(np.float64) @ sign_patterns().T.astype(np.float64)
    np.testing.assert_allclose(tables, np.rint((t - t.min(axis=2, keepdims=True)) * scale[:, None, None]), atol=1)


@pytest.mark.parametrize("bits", [128, 192])  # 128: the last group of six-bit indices padded
def test_six_bit_tables_give_the_asymmetric_score_within_rounding(bits):
    """The same for six-bit tables: 64 entries per index, each the inner product of its six
    projections with a sign pattern; padding bits (zero) add nothing."""
    rng = np.random.default_rng(bits)
    z = rng.standard_normal((10, bits)).astype(np.float32)
    codes = rng.integers(0, 256, (500, bits // 8), dtype=np.uint8)
    tables, scale, offset = fastscan.lookup_tables(z, six_bits=True)
    m = six_bit.index_count(bits)
    assert tables.shape == (10, m, 64) and tables.max() <= fastscan.TABLE_TOP
    raw = tables[:, np.arange(m), _indices(codes, True)].astype(np.int64).sum(axis=2)
    exact = z.astype(np.float64) @ (2 * np.unpackbits(codes, axis=1, bitorder="little").astype(np.float64) - 1).T
    approx = raw / scale[:, None] + offset[:, None]
    assert np.abs(approx - exact).max() <= (m * 0.5 / scale.min()) * 1.001


def test_probe_agrees_with_faiss():
    """probe() through our scan and through FAISS's: the same lists, and top entries that differ
    only where table rounding (ours and FAISS's, half a step per sub-quantizer each) can reorder
    them: each one's exact score reaches the other's k-th best less that rounding."""
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, (20000, 16), dtype=np.uint8)
    stage = _stage(20000, 128, 64, 2, seed=7, codes=codes)  # six-bit lists where this CPU scans them
    faiss_stage = _stage(20000, 128, 64, 2, seed=7, codes=codes, isa=fastscan.AVX2)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    z = rng.standard_normal((30, 128)).astype(np.float32)
    k = 400
    ours = probe(stage.centroids, "ip", stage.ivf, x, z, k, 24, None, stage.list_table())
    with fastscan.disabled():
        assert not fastscan.available()
        theirs = probe(stage.centroids, "ip", faiss_stage.ivf, x, z, k, 24, None, faiss_stage.list_table())
    np.testing.assert_array_equal(ours[2], theirs[2])
    signs = 2 * np.unpackbits(codes, axis=1, bitorder="little").astype(np.float64) - 1
    # half a step per table each: ours (its tables' count and scale), FAISS's (8-bit, finer than ours)
    six = stage.list_table().six_bit
    m = six_bit.index_count(128) if six else 32
    rounding = m / 2 / fastscan.lookup_tables(z, six_bits=six)[1] + 32 / 2 / fastscan.lookup_tables(z)[1]
    for i in range(len(z)):
        exact_ours = signs[ours[0][i]] @ z[i].astype(np.float64)
        exact_theirs = signs[theirs[0][i]] @ z[i].astype(np.float64)
        assert exact_ours.min() >= np.sort(exact_theirs)[::-1][k - 1] - rounding[i]
        assert exact_theirs.min() >= np.sort(exact_ours)[::-1][k - 1] - rounding[i]
        assert np.abs(ours[1][i] - exact_ours).max() <= rounding[i] / 2


@pytest.mark.parametrize("isa", ISAS)
def test_distinct_drops_the_second_finding_of_an_item(isa):
    """Spilled items are found in two lists with one score: with ``distinct`` the kernel keeps the
    first of each id and closes up, as numpy's dedupe does on the full answer, and says how many
    entries (repeats counted) the lists held."""
    rng = np.random.default_rng(17)
    stage = _stage(3000, 128, 48, 2, seed=17, isa=isa)
    table = stage.list_table()._replace(partners=np.empty(0, np.uint64), partner_lists=())  # not told the partners
    tables = _tables(rng, 13, 128, stage)
    lists = np.stack([rng.permutation(48)[:36] for _ in range(13)]).astype(np.int64)
    lists[4, 3:] = -1  # lists that hold fewer than k
    with fastscan.isa_cap(isa):
        for k in (9, 250, 2000):
            ids, scores, held = fastscan.scan_raw(tables, lists, table, k)
            got_ids, got_scores, got_held = fastscan.scan_raw(tables, lists, table, k, distinct=True)
            np.testing.assert_array_equal(got_held, held)
            np.testing.assert_array_equal(held, (ids >= 0).sum(axis=1))
            unique = dedupe(ids)
            keep = np.argsort(unique < 0, axis=1, kind="stable")
            np.testing.assert_array_equal(got_ids, np.take_along_axis(unique, keep, 1))
            want_scores = np.take_along_axis(scores, keep, 1)
            np.testing.assert_array_equal(got_scores[got_ids >= 0], want_scores[got_ids >= 0])
            assert (got_scores[got_ids < 0] == 0).all()
            assert (unique >= 0).sum() < (ids >= 0).sum(), "the case must find some item twice"


@pytest.mark.parametrize("isa", ISAS)
def test_partner_lists_keep_one_finding_of_an_item_and_a_full_top_k(isa):
    """Told each entry's other list, the kernel lets an item found in two of a query's lists
    enter once: its top k are k distinct items, the top k of the scan told nothing with repeats
    dropped (oracle: numpy dedupe of a deeper answer), and none of them repeats."""
    rng = np.random.default_rng(19)
    stage = _stage(4000, 128, 40, 2, seed=19, isa=isa)
    told = stage.list_table()
    assert told.partners.size == stage.nlist
    blind = told._replace(partners=np.empty(0, np.uint64), partner_lists=())
    tables = _tables(rng, 11, 128, stage)
    lists = np.stack([rng.permutation(40)[:30] for _ in range(11)]).astype(np.int64)
    lists[2, 5:] = -1
    with fastscan.isa_cap(isa):
        for k in (5, 120, 900):
            ids, scores, held = fastscan.scan_raw(tables, lists, told, k)
            deep_ids, deep_scores, _ = fastscan.scan_raw(tables, lists, blind, 2 * k, distinct=True)
            _check(ids, scores, _oracle(stage, tables, lists, k, told), k)
            for i in range(len(ids)):
                got = ids[i][ids[i] >= 0]
                assert len(np.unique(got)) == len(got), f"query {i}: an item twice"
                np.testing.assert_array_equal(scores[i][: len(got)], deep_scores[i][: len(got)])
            np.testing.assert_array_equal(held, (ids >= 0).sum(axis=1))


def test_concurrent_scans_keep_their_own_scratch():
    """Threads scan at once (ctypes releases the GIL), each with its own scratch keys."""
    rng = np.random.default_rng(11)
    stage = _stage(8000, 128, 64, 1, seed=11)
    tables = _tables(rng, 16, 128, stage)
    lists = np.stack([rng.permutation(64)[:40] for _ in range(16)]).astype(np.int64)
    expected = {k: fastscan.scan_raw(tables, lists, stage.list_table(), k) for k in (50, 900)}
    errors = []

    def work(k):
        try:
            for _ in range(20):
                ids, scores, _ = fastscan.scan_raw(tables, lists, stage.list_table(), k)
                np.testing.assert_array_equal(scores, expected[k][1])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in (50, 900, 50, 900)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
