"""Synthetic identity galleries: statistics against real LFW figures, streaming, determinism, probes."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from hashindex.training.data.synthetic import (
    HEAVY,
    IDENTITY_BLOCK,
    ITEM_BLOCK,
    PairStats,
    SyntheticGallery,
    SyntheticParams,
    ZipfCounts,
    fit_synthetic_params,
    load_params,
    make_identity_gallery,
    pair_cosine_stats,
)
from hashindex.core.errors import IndexFormatError, InputError

LFW = Path(__file__).resolve().parents[1].parent / "shared/data/lfw/lfw_mfn128_dev.npz"
TOL = 0.05  # the contract: synthetic pair statistics within 0.05 of real LFW


def brute_force_stats(x: np.ndarray, y: np.ndarray) -> PairStats:
    """Oracle: enumerate every pair with its identity-balanced weight."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.unique(y)
    n = {i: int(np.sum(y == i)) for i in ids}
    multi = [i for i in ids if n[i] >= 2]
    pos_v, pos_w, neg_v, neg_w = [], [], [], []
    for a, b in itertools.combinations(range(len(y)), 2):
        c = float(x[a] @ x[b])
        if y[a] == y[b]:
            pos_v.append(c)
            pos_w.append(1.0 / (len(multi) * n[y[a]] * (n[y[a]] - 1) / 2))
        else:  # the unordered pair stands for both ordered identity pairs
            neg_v.append(c)
            neg_w.append(2.0 / (len(ids) * (len(ids) - 1) * n[y[a]] * n[y[b]]))

    def moments(v, w):
        v, w = np.array(v), np.array(w)
        assert abs(w.sum() - 1) < 1e-9
        m = w @ v
        return m, math.sqrt(w @ (v - m) ** 2)

    return PairStats(*moments(pos_v, pos_w), *moments(neg_v, neg_w))


# ----------------------------------------------------------------------------- statistics


def test_pair_stats_match_brute_force():
    rng = np.random.default_rng(3)
    counts = np.array([1, 2, 5, 1, 3, 4, 2, 1])
    y = np.repeat(np.arange(counts.size) * 7 + 2, counts)  # non-contiguous label values
    perm = rng.permutation(y.size)  # unsorted input
    centres = rng.standard_normal((counts.size, 6))
    x = (centres.repeat(counts, axis=0) + 0.7 * rng.standard_normal((y.size, 6))) * rng.uniform(0.5, 3, (y.size, 1))
    got = pair_cosine_stats(x[perm], y[perm])
    want = brute_force_stats(x, y)
    np.testing.assert_allclose(got.as_array(), want.as_array(), atol=1e-10)


def test_pair_stats_large_identity_uses_feature_gram():
    # an identity larger than the dimension takes the X^T X branch
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], [9, 2, 1])
    x = rng.standard_normal((y.size, 4)) + np.repeat(rng.standard_normal((3, 4)), [9, 2, 1], axis=0)
    np.testing.assert_allclose(pair_cosine_stats(x, y).as_array(), brute_force_stats(x, y).as_array(), atol=1e-10)


def test_shipped_params_reproduce_stored_real_figures():
    params = load_params()
    x, y = SyntheticGallery(2000, 4, seed=11).materialize()
    synth = pair_cosine_stats(x, y)
    assert synth.max_abs_diff(params.real_stats) < TOL, (synth, params.real_stats)
    # the stored figures are LFW-like, not placeholders: matched and unmatched faces are far apart
    assert params.real_stats.pos_mean > 0.5 and abs(params.real_stats.neg_mean) < 0.05
    assert params.real_stats.pos_std > 0.1 and params.real_stats.neg_std > 0.05


def test_statistics_match_real_lfw():
    if not LFW.exists():
        pytest.skip(f"LFW development embeddings not found at {LFW}")
    with np.load(LFW, allow_pickle=False) as z:
        real = pair_cosine_stats(z["embeddings"], z["labels"])
    np.testing.assert_allclose(load_params().real_stats.as_array(), real.as_array(), atol=1e-6)
    for per in (4, "heavy"):
        x, y = SyntheticGallery(1500, per, seed=5).materialize()
        synth = pair_cosine_stats(x, y)
        assert synth.max_abs_diff(real) < TOL, (per, synth, real)


def test_rows_are_unit_float32_with_int64_labels():
    x, y = SyntheticGallery(50, 3, seed=2).materialize()
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (150, 128)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(y, np.repeat(np.arange(50), 3))


# ----------------------------------------------------------------------------- determinism, streaming


def test_same_seed_same_data_other_seed_other_data():
    a = SyntheticGallery(300, 4, seed=7).materialize()[0]
    b = SyntheticGallery(300, 4, seed=7).materialize()[0]
    c = SyntheticGallery(300, 4, seed=8).materialize()[0]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


@pytest.mark.parametrize("per", [4, "heavy"])
def test_chunks_are_identical_for_any_chunk_size(per):
    g = SyntheticGallery(3 * ITEM_BLOCK // 4 + 37, per, seed=1)
    full_x, full_y = g.materialize()
    assert full_x.shape[0] == g.n_items == g.identity_counts.sum()
    for chunk in (1000, ITEM_BLOCK + 1, g.n_items + 5):
        parts = list(g.iter_chunks(chunk))
        assert all(len(py) == chunk for _, py in parts[:-1]) and 0 < len(parts[-1][1]) <= chunk
        np.testing.assert_array_equal(np.concatenate([p for p, _ in parts]), full_x)
        np.testing.assert_array_equal(np.concatenate([q for _, q in parts]), full_y)
    np.testing.assert_array_equal(np.bincount(full_y, minlength=g.n_identities), g.identity_counts)


@pytest.mark.parametrize("dim", [128, 200])  # 200: the random lift is one more product
@pytest.mark.parametrize("small", [100, 333, 2100])  # 400 / 1332 rows: inside one product; 8400: past an item block
def test_smaller_gallery_is_a_prefix_of_a_larger_one(small, dim):
    # bit-identical, not close: every matrix product has the same shape whatever the gallery size
    small_x, small_y = SyntheticGallery(small, 4, dim=dim, seed=9).materialize()
    big_x, big_y = SyntheticGallery(2 * ITEM_BLOCK // 4 + 7, 4, dim=dim, seed=9).materialize()
    np.testing.assert_array_equal(small_x, big_x[: 4 * small])
    np.testing.assert_array_equal(small_y, big_y[: 4 * small])


def test_streaming_memory_is_bounded_by_the_chunk():
    g = SyntheticGallery(100_000, 4, seed=0)  # 400k x 128 float32 = 205 MB if held whole
    total_bytes = g.n_items * g.dim * 4
    tracemalloc.start()
    n = 0
    for x, _ in g.iter_chunks(10_000):
        n += x.shape[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == g.n_items
    assert peak < 40e6 < total_bytes / 5, f"peak {peak / 1e6:.1f} MB"


# ----------------------------------------------------------------------------- probes


def test_probes_are_fresh_images_of_the_right_identities():
    g = SyntheticGallery(600, 4, seed=3)  # spans several identity blocks
    gx, gy = g.materialize()
    px, py = g.probes(300, seed=1)
    assert px.dtype == np.float32 and py.dtype == np.int64 and px.shape == (300, 128)
    assert py.min() >= 0 and py.max() < 600 and np.unique(py).size > 200
    sims = px @ gx.T
    assert sims.max() < 0.999  # never a copy of a gallery vector
    same = py[:, None] == gy[None, :]
    stats = load_params().real_stats
    assert abs(sims[same].mean() - stats.pos_mean) < TOL
    assert abs(sims[~same].mean() - stats.neg_mean) < TOL
    assert np.mean(gy[sims.argmax(axis=1)] == py) > 0.9  # LFW's own nearest-neighbour rate is 0.971


def test_probes_deterministic_per_seed():
    g = SyntheticGallery(100, 4, seed=3)
    a, b, c = g.probes(50, seed=1), g.probes(50, seed=1), g.probes(50, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


# ----------------------------------------------------------------------------- 512-d lift


def test_orthogonal_lift_keeps_every_inner_product():
    g128, g512 = SyntheticGallery(200, 4, seed=4), SyntheticGallery(200, 4, dim=512, seed=4)
    x128, y128 = g128.materialize()
    x512, y512 = g512.materialize()
    assert x512.shape == (800, 512)
    np.testing.assert_array_equal(y128, y512)
    np.testing.assert_allclose(x512 @ x512.T, x128 @ x128.T, atol=2e-5)
    np.testing.assert_allclose(g512.probes(20)[0] @ x512.T, g128.probes(20)[0] @ x128.T, atol=2e-5)
    np.testing.assert_allclose(
        pair_cosine_stats(x512, y512).as_array(), pair_cosine_stats(x128, y128).as_array(), atol=1e-5
    )
    # the 128-d signal is spread over all 512 coordinates, not copied into the first 128
    assert np.abs(x512[:, 128:]).mean() > 0.02


# ----------------------------------------------------------------------------- heavy-tailed counts


def test_heavy_counts_have_the_documented_mean():
    h = math.fsum(1 / k for k in range(1, 1001))
    h2 = math.fsum(1 / k**2 for k in range(1, 1001))
    assert HEAVY.mean == pytest.approx(h / h2, rel=1e-12)
    assert round(HEAVY.mean, 3) == 4.553  # the figure in the docstring
    counts = SyntheticGallery(200_000, "heavy", seed=0).identity_counts
    sem = math.sqrt(math.fsum(k * k / k**2 for k in range(1, 1001)) / h2 - HEAVY.mean**2) / math.sqrt(counts.size)
    assert abs(counts.mean() - HEAVY.mean) < 4 * sem
    assert abs(np.mean(counts == 1) - 1 / h2) < 0.005
    assert counts.min() == 1 and counts.max() <= 1000 and counts.max() > 200
    other = ZipfCounts(exponent=3.0, max_count=50)
    c = SyntheticGallery(100_000, other, seed=1).identity_counts
    assert abs(c.mean() - other.mean) < 0.02 and c.max() <= 50


# ----------------------------------------------------------------------------- params, fitting


def test_params_round_trip(tmp_path):
    p = load_params()
    p.save(tmp_path / "p.npz")
    q = load_params(tmp_path / "p.npz")
    for name in ("mean", "between_factor", "within_factor"):
        np.testing.assert_array_equal(getattr(p, name), getattr(q, name))
    assert (q.between_scale, q.within_scale, q.noise_sigma) == (p.between_scale, p.within_scale, p.noise_sigma)
    assert q.real_stats == p.real_stats and q.synthetic_stats == p.synthetic_stats and q.source == p.source
    assert q.mean.dtype == np.float32 and not q.mean.flags.writeable


def test_fit_recovers_statistics_of_a_known_generator():
    x, y = SyntheticGallery(400, "heavy", seed=21).materialize()
    fitted = fit_synthetic_params(x, y, calibration_identities=800, check_identities=800)
    np.testing.assert_allclose(fitted.real_stats.as_array(), pair_cosine_stats(x, y).as_array(), atol=1e-12)
    assert fitted.synthetic_stats.max_abs_diff(fitted.real_stats) < 0.02
    assert isinstance(fitted, SyntheticParams) and fitted.between_factor.dtype == np.float32


def test_make_identity_gallery():
    x, y = make_identity_gallery(30, 5, dim=256, seed=6)
    gx, gy = SyntheticGallery(30, 5, dim=256, seed=6).materialize()
    assert x.shape == (150, 256)
    np.testing.assert_array_equal(x, gx)
    np.testing.assert_array_equal(y, gy)


def test_module_does_not_import_torch():
    code = "import sys, hashindex.training.data.synthetic as s; s.make_identity_gallery(3, 2); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_identities=0),
        dict(n_identities=-3),
        dict(n_identities=2.5),
        dict(n_identities=True),
        dict(n_identities=10, images_per_identity=0),
        dict(n_identities=10, images_per_identity="lots"),
        dict(n_identities=10, images_per_identity=1.5),
        dict(n_identities=10, dim=64),
        dict(n_identities=10, seed=-1),
        dict(n_identities=10, seed=1.0),
        dict(n_identities=10, params={"mean": 0}),
    ],
)
def test_bad_gallery_arguments_raise(kwargs):
    with pytest.raises(InputError):
        SyntheticGallery(**kwargs)


def test_bad_call_arguments_raise(tmp_path):
    g = SyntheticGallery(10, 2)
    with pytest.raises(InputError, match="chunk_size"):
        next(g.iter_chunks(0))
    with pytest.raises(InputError, match="n must"):
        g.probes(0)
    with pytest.raises(InputError, match="seed"):
        g.probes(5, seed=-2)
    with pytest.raises(InputError, match="max_items"):
        g.materialize(max_items=19)
    with pytest.raises(InputError):
        ZipfCounts(exponent=0)
    with pytest.raises(InputError):
        ZipfCounts(max_count=0)
    with pytest.raises(InputError, match="2 identities"):
        pair_cosine_stats(np.ones((3, 4)), np.zeros(3, dtype=int))
    with pytest.raises(InputError, match="2\\+ images"):
        pair_cosine_stats(np.eye(3), np.arange(3))
    with pytest.raises(InputError, match="labels"):
        pair_cosine_stats(np.eye(3), np.arange(2))
    with pytest.raises(InputError, match="at least 3 identities"):
        fit_synthetic_params(np.eye(4), np.array([0, 0, 1, 1]))
    np.savez(tmp_path / "foreign.npz", mean=np.zeros(3))
    with pytest.raises(IndexFormatError, match="missing"):
        load_params(tmp_path / "foreign.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(IndexFormatError):
        load_params(tmp_path / "junk.npz")
