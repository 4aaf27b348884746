"""hashindex.evaluation.metrics against brute-force numpy oracles.

Tie-aware metrics are checked by enumerating every ranking consistent with the Hamming
distances (all permutations of the gallery, stably sorted by distance): the expected value is
the mean over those rankings, "pessimistic" the minimum and "optimistic" the maximum.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from hashindex.evaluation import hamming
from hashindex.evaluation import metrics as M
from hashindex.core.codes import hamming_distances, pack_bits
from hashindex.core.errors import InputError

LFW = Path(__file__).resolve().parents[1].parent / "shared/data/lfw" / "lfw_mfn128_dev.npz"


# -- data and oracles ------------------------------------------------------------------------
def tied_codes(rng: np.random.Generator, n: int, bits: int, n_protos: int = 4, flips: int = 1) -> np.ndarray:
    """Codes drawn near a few prototypes so that Hamming distances tie a lot."""
    protos = rng.integers(0, 2, size=(n_protos, bits))
    b = protos[rng.integers(0, n_protos, size=n)].copy()
    for i in range(n):
        b[i, rng.choice(bits, size=rng.integers(0, flips + 1), replace=False)] ^= 1
    return pack_bits(b)


def orderings(d: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """All rankings of ``candidates`` consistent with distances ``d`` (ties in every order)."""
    perms = np.array(list(itertools.permutations(candidates)))
    idx = np.argsort(d[perms], axis=1, kind="stable")
    return np.take_along_axis(perms, idx, axis=1)


def loo_candidates(nb: int, q: int, exclude: np.ndarray | None) -> np.ndarray:
    return np.array([j for j in range(nb) if exclude is None or j != exclude[q]])


def ap_at_r(rel_in_order: np.ndarray) -> np.ndarray:
    """AP@R of each row of a ``[P, n]`` 0/1 relevance matrix (Musgrave et al. 2020)."""
    r = int(rel_in_order[0].sum())
    top = rel_in_order[:, :r]
    prec = np.cumsum(top, axis=1) / np.arange(1, r + 1)
    return (prec * top).sum(axis=1) / r


def agg(values: np.ndarray, ties: str) -> float:
    return float({"expected": np.mean, "pessimistic": np.min, "optimistic": np.max}[ties](values))


# -- histograms --------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 16, 24, 64])
def test_hamming_histograms_match_bruteforce_with_blocking(bits, monkeypatch):
    rng = np.random.default_rng(bits)
    both = tied_codes(rng, 90, bits, flips=3)
    q, db = both[:37], both[37:]
    ql, dl = rng.integers(0, 5, 37), rng.integers(0, 5, 53)
    exclude = rng.integers(-1, 53, 37)
    monkeypatch.setattr(hamming, "_BLOCK_ELEMS", 100)  # several query blocks
    total, same = M.hamming_histograms(q, db, ql, dl, exclude)
    d = hamming_distances(q, db)
    for i in range(37):
        keep = np.arange(53) != exclude[i]
        np.testing.assert_array_equal(total[i], np.bincount(d[i, keep], minlength=bits + 1))
        np.testing.assert_array_equal(same[i], np.bincount(d[i, keep & (dl == ql[i])], minlength=bits + 1))


def test_histograms_leave_one_out_excludes_self():
    rng = np.random.default_rng(0)
    codes = tied_codes(rng, 20, 16)
    total, same = M.hamming_histograms(codes)
    assert same is None
    np.testing.assert_array_equal(total.sum(axis=1), 19)
    d = hamming_distances(codes, codes)
    np.fill_diagonal(d, 10**6)
    np.testing.assert_array_equal(total[:, 0], (d == 0).sum(axis=1))


# -- Table 1 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 16, 64])
def test_pair_table_matches_double_loop(bits):
    rng = np.random.default_rng(1)
    n = 50
    codes = tied_codes(rng, n, bits, flips=2)
    labels = rng.integers(0, 6, n)
    pos = np.zeros(bits + 1, dtype=np.int64)
    neg = np.zeros(bits + 1, dtype=np.int64)
    bitmat = np.unpackbits(codes, axis=1)
    for i in range(n):
        for j in range(i + 1, n):
            dist = int((bitmat[i] != bitmat[j]).sum())
            (pos if labels[i] == labels[j] else neg)[dist] += 1
    table = M.pair_hamming_table(codes, labels, radii=(0, 1, 2, 5))
    np.testing.assert_array_equal(table.positive_hist, pos)
    np.testing.assert_array_equal(table.negative_hist, neg)
    assert table.n_positive + table.n_negative == n * (n - 1) // 2
    for r in (0, 1, 2, 5):
        assert table.positive_within(r) == pytest.approx(pos[: r + 1].sum() / pos.sum())
        assert table.negative_within(r) == pytest.approx(neg[: r + 1].sum() / neg.sum())
    d = table.to_dict()
    assert [row["radius"] for row in d["within"]] == [0, 1, 2, 5]
    assert "<= 5" in table.format() and "= 0" in table.format()


# -- Table 2 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 16, 64])
def test_candidate_reduction_matches_bruteforce(bits):
    rng = np.random.default_rng(2)
    codes = tied_codes(rng, 60, bits, flips=3)
    d = hamming_distances(codes, codes)
    radii = (0, 1, 2, 3)
    loo = M.candidate_reduction(codes, radii=radii)
    with_self = M.candidate_reduction(codes, codes, radii=radii)
    for i, r in enumerate(radii):
        within = (d <= r).sum(axis=1)  # includes the query itself
        assert loo.fraction[i] == pytest.approx(np.mean((within - 1) / 59))
        assert loo.mean_candidates[i] == pytest.approx(np.mean(within - 1))
        assert loo.empty_fraction[i] == pytest.approx(np.mean(within == 1))
        assert with_self.fraction[i] == pytest.approx(np.mean(within / 60))
        assert with_self.reduction[i] == pytest.approx(60 / np.mean(within))
    assert not loo.count_self and with_self.count_self
    assert len(loo.to_dict()["rows"]) == 4 and "reduction" in loo.format()


def test_candidate_reduction_with_explicit_exclude():
    rng = np.random.default_rng(3)
    db = tied_codes(rng, 40, 16, flips=3)
    rows = rng.choice(40, 10, replace=False)
    got = M.candidate_reduction(db[rows], db, radii=(1,), exclude=rows)
    loo = M.candidate_reduction(db, radii=(1,))
    d = hamming_distances(db[rows], db)
    assert got.fraction[0] == pytest.approx(np.mean(((d <= 1).sum(axis=1) - 1) / 39))
    assert got.n_queries == 10 and loo.n_queries == 40


# -- mAP@R -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 16])
def test_ap_at_r_is_the_mean_over_tie_orders(bits):
    rng = np.random.default_rng(bits + 10)
    n = 8
    codes = tied_codes(rng, n, bits, n_protos=3, flips=1)
    labels = rng.integers(0, 3, n)
    got = M.average_precision_at_r(codes, labels)
    d = hamming_distances(codes, codes)
    for q in range(n):
        cand = loo_candidates(n, q, np.arange(n))
        rel = labels[cand] == labels[q]
        if not rel.any():
            assert np.isnan(got[q])
            continue
        orders = orderings(d[q], cand)
        expected = ap_at_r((labels[orders] == labels[q]).astype(float)).mean()
        assert got[q] == pytest.approx(expected, abs=1e-12)


def test_ap_at_r_without_ties_equals_plain_ranking():
    rng = np.random.default_rng(5)
    bits, nb = 64, 40
    aps = []
    for _ in range(10):
        q = rng.integers(0, 2, (1, bits))
        db = np.repeat(q, nb, axis=0)
        dist = rng.choice(bits + 1, nb, replace=False)  # distinct distances: no ties
        for j, dj in enumerate(dist):
            db[j, rng.choice(bits, dj, replace=False)] ^= 1
        ql, dl = rng.integers(0, 3, 1), rng.integers(0, 3, nb)
        got = M.average_precision_at_r(pack_bits(q), ql, pack_bits(db), dl)
        order = np.argsort(dist)
        want = ap_at_r((dl[order] == ql[0])[None].astype(float))[0] if (dl == ql[0]).any() else np.nan
        np.testing.assert_allclose(got, [want])
        aps.append(want)
    assert len(set(np.round(aps, 6))) > 3  # the cases differ


def test_map_at_r_with_exclude_equals_leave_one_out():
    rng = np.random.default_rng(6)
    codes = tied_codes(rng, 30, 16, flips=4)
    labels = rng.integers(0, 4, 30)
    perm = rng.permutation(30)  # the gallery stores the queries in another order
    got = M.map_at_r(codes, labels, codes[perm], labels[perm], exclude=np.argsort(perm))
    assert got == pytest.approx(M.map_at_r(codes, labels))


# -- precision / recall at a radius ------------------------------------------------------------
@pytest.mark.parametrize("bits, radius", [(8, 0), (16, 2), (64, 2)])
def test_precision_recall_at_radius(bits, radius):
    rng = np.random.default_rng(7)
    both = tied_codes(rng, 70, bits, flips=3)  # shared prototypes: some within radius 2
    q, db = both[:25], both[25:]
    ql, dl = rng.integers(0, 4, 25), rng.integers(0, 4, 45)
    d = hamming_distances(q, db)
    assert 0 < (d <= radius).any(axis=1).mean() < 1  # both empty and non-empty lookups
    res = M.precision_recall_at_radius(q, ql, db, dl, radius=radius)
    inside = d <= radius
    relevant = dl[None, :] == ql[:, None]
    retrieved = inside.sum(axis=1)
    hits = (inside & relevant).sum(axis=1)
    prec = [h / r if r else 0.0 for h, r in zip(hits, retrieved)]
    assert res.precision == pytest.approx(np.mean(prec))
    assert res.precision_nonempty == pytest.approx(np.mean([p for p, r in zip(prec, retrieved) if r]))
    has = relevant.sum(axis=1) > 0
    assert res.recall == pytest.approx(np.mean(hits[has] / relevant.sum(axis=1)[has]))
    assert res.empty_fraction == pytest.approx(np.mean(retrieved == 0))
    assert res.mean_candidates == pytest.approx(retrieved.mean())
    assert res.to_dict()["radius"] == radius


# -- Recall@K -------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", M.TIE_RULES)
@pytest.mark.parametrize("bits", [8, 16])
def test_recall_at_k_codes_over_tie_orders(bits, ties):
    rng = np.random.default_rng(bits)
    n = 8
    codes = tied_codes(rng, n, bits, n_protos=3, flips=1)
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])  # 3 is a singleton
    ks = (1, 2, 3, 5)
    got = M.recall_at_k(codes, labels, ks, ties=ties)
    got_all = M.recall_at_k(codes, labels, ks, ties=ties, only_with_positives=False)
    d = hamming_distances(codes, codes)
    per_query = {k: [] for k in ks}
    for q in range(n):
        orders = orderings(d[q], loo_candidates(n, q, np.arange(n)))
        for k in ks:
            per_query[k].append(agg((labels[orders[:, :k]] == labels[q]).any(axis=1), ties))
    for k in ks:
        assert got[k] == pytest.approx(np.mean(per_query[k][:7]), abs=1e-12)
        assert got_all[k] == pytest.approx(np.mean(per_query[k]), abs=1e-12)


@pytest.mark.parametrize("metric", M.FEATURE_METRICS)
def test_recall_at_k_features_bruteforce(metric):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(80, 12)).astype(np.float32)
    labels = rng.integers(0, 10, 80)
    got = M.recall_at_k(x, labels, (1, 2, 4, 8), metric=metric)
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        score = xn @ xn.T
    elif metric == "ip":
        score = x @ x.T
    else:
        score = -((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(score, -np.inf)
    order = np.argsort(-score, axis=1)
    hit = labels[order] == labels[:, None]
    keep = np.bincount(labels)[labels] > 1
    for k in (1, 2, 4, 8):
        assert got[k] == pytest.approx(hit[keep, :k].any(axis=1).mean())


# -- recall against the candidate budget -------------------------------------------------------
def exact_nn(qf, dbf, exclude):
    s = (qf / np.linalg.norm(qf, axis=1, keepdims=True)) @ (dbf / np.linalg.norm(dbf, axis=1, keepdims=True)).T
    if exclude is not None:
        s[np.arange(len(qf)), exclude] = -np.inf
    return s.argmax(axis=1)


@pytest.mark.parametrize("ties", M.TIE_RULES)
def test_recall_vs_candidates_over_tie_orders(ties):
    rng = np.random.default_rng(9)
    n, bits = 8, 8
    codes = tied_codes(rng, n, bits, n_protos=3, flips=1)
    feats = rng.normal(size=(n, 6)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    fractions = (0.1, 0.3, 0.5, 0.8, 1.0)
    curve = M.recall_vs_candidates(codes, None, feats, None, labels, fractions=fractions, ties=ties)
    d = hamming_distances(codes, codes)
    nn = exact_nn(feats, feats, np.arange(n))
    nn_found = np.zeros((n, len(fractions)))
    id_found = []
    for q in range(n):
        orders = orderings(d[q], loo_candidates(n, q, np.arange(n)))
        depths = [math.ceil(c * (n - 1)) for c in fractions]
        nn_found[q] = [agg((orders[:, :L] == nn[q]).any(axis=1), ties) for L in depths]
        if (np.delete(labels, q) == labels[q]).any():
            id_found.append([agg((labels[orders[:, :L]] == labels[q]).any(axis=1), ties) for L in depths])
    np.testing.assert_allclose(curve.nn_recall, nn_found.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(curve.identity_recall, np.mean(id_found, axis=0), atol=1e-12)
    assert curve.n_identity_queries == len(id_found)
    assert curve.to_dict()["ties"] == ties and "NN recall" in curve.format()


@pytest.mark.parametrize("bits", [16, 64])
def test_recall_vs_candidates_separate_gallery_with_exclude(bits):
    rng = np.random.default_rng(bits)
    nb, nq = 120, 30
    db = tied_codes(rng, nb, bits, flips=4)
    dbf = rng.normal(size=(nb, 8)).astype(np.float32)
    rows = rng.choice(nb, nq, replace=False)
    exclude = rows.copy()
    exclude[::3] = -1  # some queries may find themselves
    fractions = (0.01, 0.05, 0.2, 0.6)
    curve = M.recall_vs_candidates(db[rows], db, dbf[rows], dbf, fractions=fractions, exclude=exclude)
    assert curve.identity_recall is None
    d = hamming_distances(db[rows], db)
    has = exclude >= 0
    unit = dbf / np.linalg.norm(dbf, axis=1, keepdims=True)
    s = unit[rows] @ unit.T
    s[np.flatnonzero(has), exclude[has]] = -np.inf
    nn = s.argmax(axis=1)
    expected = []
    for c in fractions:
        per = []
        for i in range(nq):
            keep = np.ones(nb, bool)
            if exclude[i] >= 0:
                keep[exclude[i]] = False
            di = d[i, keep]
            dstar = d[i, nn[i]]
            closer, tied = (di < dstar).sum(), (di == dstar).sum()
            L = math.ceil(c * keep.sum())
            per.append(np.clip((L - closer) / tied, 0, 1))
        expected.append(np.mean(per))
    np.testing.assert_allclose(curve.nn_recall, expected, atol=1e-12)


@pytest.mark.parametrize("ties", M.TIE_RULES)
@pytest.mark.parametrize("bits", [8, 16, 64])
def test_candidate_fraction_needed_bruteforce(bits, ties):
    rng = np.random.default_rng(11)
    n = 70
    codes = tied_codes(rng, n, bits, flips=3)
    feats = rng.normal(size=(n, 5)).astype(np.float32)
    got = M.candidate_fraction_needed(codes, None, feats, None, ties=ties)
    d = hamming_distances(codes, codes).astype(float)
    np.fill_diagonal(d, np.inf)
    nn = exact_nn(feats, feats, np.arange(n))
    dstar = d[np.arange(n), nn][:, None]
    closer, tied = (d < dstar).sum(axis=1), (d == dstar).sum(axis=1)
    rank = {"optimistic": closer + 1, "pessimistic": closer + tied, "expected": closer + (tied + 1) / 2}[ties]
    np.testing.assert_allclose(got, rank / (n - 1))
    # the pessimistic rank is exactly where the pessimistic curve reaches each query
    if ties == "pessimistic":
        c = float(np.quantile(got, 0.5))
        curve = M.recall_vs_candidates(codes, None, feats, None, fractions=(c,), ties=ties)
        assert curve.nn_recall[0] == pytest.approx(np.mean(got <= math.ceil(c * (n - 1)) / (n - 1)))


def test_recall_at_k_vs_exact():
    rng = np.random.default_rng(12)
    exact = np.array([rng.permutation(50)[:10] for _ in range(40)])
    result = np.array([rng.permutation(50)[:10] for _ in range(40)])
    result[::4] = exact[::4][:, ::-1]  # same set, other order
    result[1, 5:] = -1
    exact[2, 8:] = -1
    exact[3, :] = -1  # skipped
    for k in (1, 5, 10):
        per = []
        for r, e in zip(result[:, :k], exact[:, :k]):
            valid = {int(v) for v in e if v >= 0}
            if valid:
                per.append(len(valid & {int(v) for v in r if v >= 0}) / len(valid))
        assert M.recall_at_k_vs_exact(result, exact, k) == pytest.approx(np.mean(per))
    assert M.recall_at_k_vs_exact(exact[:3], exact[:3], 10) == pytest.approx(1.0)


# -- NMI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "a, b",
    [
        ([0, 0, 1, 1], [1, 1, 0, 0]),
        ([0, 0, 0, 0], [0, 1, 2, 3]),
        ([5, 5, 5], [2, 2, 2]),
        ([0, 1, 2, 3], [0, 0, 0, 0]),
        (["a", "b", "a", "c"], [3, 1, 3, 3]),
    ],
)
def test_nmi_limit_cases_match_sklearn(a, b):
    assert M.nmi(np.array(a), np.array(b)) == pytest.approx(normalized_mutual_info_score(a, b))


def test_nmi_random_labelings_match_sklearn():
    rng = np.random.default_rng(13)
    for n, ka, kb in [(50, 3, 4), (500, 40, 7), (2000, 300, 300)]:
        a = rng.integers(0, ka, n) * 7 - 3  # arbitrary label values
        b = np.where(rng.random(n) < 0.5, a, rng.integers(0, kb, n))
        assert M.nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)


def test_nmi_kmeans_separated_clusters():
    rng = np.random.default_rng(14)
    centers = rng.normal(size=(5, 16)) * 20
    labels = np.repeat(np.arange(5), 40)
    x = (centers[labels] + rng.normal(size=(200, 16))).astype(np.float32)
    assert M.nmi_kmeans(x, labels) == pytest.approx(1.0)
    # codes: prototypes far apart in Hamming space, a couple of flipped bits each
    protos = rng.integers(0, 2, (5, 64))
    bits = protos[labels].copy()
    bits[np.arange(200), rng.integers(0, 64, 200)] ^= 1
    assert M.nmi_kmeans(pack_bits(bits), labels) == pytest.approx(1.0)
    shuffled = rng.permutation(labels)
    assert M.nmi_kmeans(x, shuffled) < 0.2


# -- errors ------------------------------------------------------------------------------------
def test_bad_inputs_raise_input_error():
    rng = np.random.default_rng(15)
    codes = tied_codes(rng, 10, 16)
    labels = np.arange(10) % 3
    with pytest.raises(InputError, match="uint8"):
        M.pair_hamming_table(codes.astype(np.int32), labels)
    with pytest.raises(InputError, match="labels"):
        M.pair_hamming_table(codes, labels[:5])
    with pytest.raises(InputError, match="tie rule"):
        M.recall_at_k(codes, labels, ties="random")
    with pytest.raises(InputError, match="exclude"):
        M.map_at_r(codes, labels, codes, labels, exclude=np.full(10, 10))
    with pytest.raises(InputError, match="exclude is implied"):
        M.map_at_r(codes, labels, exclude=np.arange(10))
    with pytest.raises(InputError, match="bytes"):
        M.candidate_reduction(codes, tied_codes(rng, 10, 8))
    with pytest.raises(InputError, match="fractions"):
        M.recall_vs_candidates(codes, None, rng.normal(size=(10, 4)), None, fractions=(0.0,))
    with pytest.raises(InputError, match="radius"):
        M.precision_recall_at_radius(codes, labels, radius=-1)
    with pytest.raises(InputError, match="metric"):
        M.recall_at_k(rng.normal(size=(10, 4)).astype(np.float32), labels, metric="hamming")
    with pytest.raises(InputError, match="db_labels"):
        M.map_at_r(codes, labels, codes)


def test_metrics_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, hashindex.evaluation.metrics; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0


# -- real data ---------------------------------------------------------------------------------
def test_lfw_reference_figures():
    if not LFW.exists():
        pytest.skip(f"LFW development split not found at {LFW}")
    with np.load(LFW, allow_pickle=False) as z:
        x, labels = z["embeddings"], z["labels"]
    # README: exact cosine NN is the same person 97.1% of the time (queries with 2+ images)
    assert M.recall_at_k(x, labels, (1,))[1] == pytest.approx(0.971, abs=5e-4)
    from hashindex.serving.hashers import ITQHasher

    codes = ITQHasher(128, 64).fit(x).encode(x)
    table = M.pair_hamming_table(codes, labels)
    counts = np.bincount(labels)
    assert table.n_positive == int((counts * (counts - 1) // 2).sum())
    assert table.n_positive + table.n_negative == len(x) * (len(x) - 1) // 2
    # the learned-free codes already separate identities: positives are far closer
    assert table.positive_within(2) > 100 * table.negative_within(2)
