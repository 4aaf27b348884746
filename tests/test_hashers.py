"""hashindex.serving.hashers: sign / PCA-sign / ITQ against numpy and FAISS oracles."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from hashindex.core.errors import IndexFormatError, InputError, NotFittedError
from hashindex.serving.hashers import (
    HASHER_FORMAT,
    ITQHasher,
    LinearHasher,
    PCASignHasher,
    SignHasher,
    make_hasher,
)

DIM = 32


@pytest.fixture(scope="module")
def train():
    """Anisotropic, off-centre data so PCA directions and the mean matter."""
    rng = np.random.default_rng(0)
    scales = np.linspace(3.0, 0.3, DIM)
    mix = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
    x = (rng.standard_normal((2000, DIM)) * scales) @ mix.T + rng.standard_normal(DIM)
    return x.astype(np.float32)


def _bits_of(codes: np.ndarray) -> np.ndarray:
    return np.unpackbits(codes, axis=1, bitorder="little")


@pytest.mark.parametrize(
    "make, bits",
    [(lambda: SignHasher(DIM), DIM), (lambda: PCASignHasher(DIM, 16), 16), (lambda: ITQHasher(DIM, 24), 24)],
    ids=["sign", "pca", "itq"],
)
def test_fit_encode_shapes(make, bits, train):
    h = make()
    assert not h.is_fitted and h.bits == bits
    assert h.fit(train) is h and h.is_fitted
    assert h.weight.shape == (bits, DIM) and h.bias.shape == (bits,)
    codes = h.encode(train[:7])
    assert codes.dtype == np.uint8 and codes.shape == (7, bits // 8)
    proj = h.project(train[:7])
    assert proj.shape == (7, bits)
    # encode is exactly the sign (h > 0) of project, in FAISS bit order
    np.testing.assert_array_equal(_bits_of(codes), (proj > 0).astype(np.uint8))
    # float64 input encodes like its float32 cast
    np.testing.assert_array_equal(h.encode(train[:7].astype(np.float64)), codes)


def test_sign_hasher_thresholds_at_the_training_mean(train):
    h = SignHasher(DIM).fit(train)
    mean = train.astype(np.float64).mean(axis=0)
    q = train[:300]
    expected = (q > mean).astype(np.uint8)
    # rows within float rounding of the mean may legitimately differ
    clear = np.abs(q - mean) > 1e-5
    np.testing.assert_array_equal(_bits_of(h.encode(q))[clear], expected[clear])


def test_pca_projection_is_the_principal_subspace(train):
    """Projections are centred, decorrelated, with the top eigenvalues of the covariance."""
    bits = 16
    h = PCASignHasher(DIM, bits).fit(train)
    p = h.project(train).astype(np.float64)
    np.testing.assert_allclose(p.mean(axis=0), 0, atol=1e-3)
    cov = np.cov(p, rowvar=False, bias=True)
    evals = np.sort(np.linalg.eigvalsh(np.cov(train.astype(np.float64), rowvar=False, bias=True)))[::-1]
    np.testing.assert_allclose(np.diag(cov), evals[:bits], rtol=1e-3)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 1e-3 * evals[0]
    # each bit splits the data near its median for this symmetric distribution
    frac = _bits_of(h.encode(train)).mean(axis=0)
    assert ((frac > 0.4) & (frac < 0.6)).all(), frac


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_itq_codes_agree_with_faiss_itq_transform(bits, train):
    h = ITQHasher(DIM, bits).fit(train)
    itq = faiss.ITQTransform(DIM, bits, True)
    itq.train(train)
    ref = (itq.apply(train) > 0).astype(np.uint8)
    agree = (_bits_of(h.encode(train)) == ref).mean()
    assert agree >= 0.999, f"only {agree:.5f} of bits agree with faiss.ITQTransform"


def test_itq_quantization_error_not_worse_than_pca(train):
    """ITQ's objective (Gong & Lazebnik 2011): ||B - V R||^2 over the normalised, centred
    PCA projection V; the learnt rotation must not do worse than no rotation (PCA-sign)."""
    bits = 16

    def quantization_error(h: LinearHasher) -> float:
        v = h.project(train).astype(np.float64)
        v /= np.linalg.norm(train - train.mean(0), axis=1, keepdims=True)  # both are linear in x - mean
        return float(((np.where(v > 0, 1.0, -1.0) / np.sqrt(bits) - v) ** 2).sum())

    itq = ITQHasher(DIM, bits).fit(train)
    pca = PCASignHasher(DIM, bits).fit(train)
    assert quantization_error(itq) <= quantization_error(pca)


@pytest.mark.parametrize("kind, bits", [("sign", DIM), ("pca", 16), ("itq", 32)])
def test_save_load_round_trip(kind, bits, train, tmp_path):
    h = make_hasher(kind, DIM, bits).fit(train)
    path = tmp_path / f"{kind}.npz"
    h.save(path)
    g = LinearHasher.load(path)
    assert (g.kind, g.bits, g.dim) == (kind, bits, DIM)
    np.testing.assert_array_equal(g.weight, h.weight)
    np.testing.assert_array_equal(g.bias, h.bias)
    np.testing.assert_array_equal(g.encode(train), h.encode(train))
    np.testing.assert_array_equal(g.project(train), h.project(train))


def test_load_refuses_garbage_and_future_format(train, tmp_path):
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(IndexFormatError):
        LinearHasher.load(bad)

    h = ITQHasher(DIM, 8).fit(train)
    future = tmp_path / "future.npz"
    meta = {"format": HASHER_FORMAT + 1, "kind": "itq", "bits": 8, "dim": DIM}
    np.savez(future, meta=np.array(json.dumps(meta)), weight=h.weight, bias=h.bias)
    with pytest.raises(IndexFormatError, match="newer"):
        LinearHasher.load(future)

    mismatched = tmp_path / "mismatched.npz"
    meta = {"format": HASHER_FORMAT, "kind": "itq", "bits": 16, "dim": DIM}
    np.savez(mismatched, meta=np.array(json.dumps(meta)), weight=h.weight, bias=h.bias)
    with pytest.raises(IndexFormatError):
        LinearHasher.load(mismatched)


@pytest.mark.parametrize("kind", ["pca", "itq"])
def test_bits_above_dim_is_refused(kind, train):
    with pytest.raises(InputError, match="exceed"):
        make_hasher(kind, DIM, DIM + 8).fit(train)


def test_sign_bits_must_equal_dim(train):
    with pytest.raises(InputError, match="one bit per dimension"):
        SignHasher(DIM, 16).fit(train)


@pytest.mark.parametrize("kind", ["sign", "pca", "itq"])
def test_unfitted_hasher_refuses_to_encode(kind, train, tmp_path):
    h = make_hasher(kind, DIM, DIM if kind == "sign" else 16)
    with pytest.raises(NotFittedError):
        h.encode(train[:3])
    with pytest.raises(NotFittedError):
        h.project(train[:3])
    with pytest.raises(NotFittedError):
        h.save(tmp_path / "h.npz")


def test_constructor_and_fit_input_errors(train):
    with pytest.raises(InputError, match="multiple of 8"):
        ITQHasher(DIM, 12)
    with pytest.raises(InputError):
        LinearHasher("itq", 0, DIM)
    with pytest.raises(InputError, match="unknown hasher"):
        make_hasher("lsh", DIM, 16)
    with pytest.raises(InputError, match="needs bits"):
        make_hasher("pca", DIM)
    h = ITQHasher(DIM, 16)
    with pytest.raises(InputError, match="dimension"):
        h.fit(train[:, :-1])
    with pytest.raises(InputError, match=r"itq hasher \(16 bits\) needs at least 16 rows, got 15"):
        h.fit(train[:15])  # FAISS's PCA needs a row per direction
    with pytest.raises(InputError, match="NaN"):
        h.fit(np.where(np.eye(len(train), DIM, dtype=bool), np.nan, train))
    h.fit(train)
    with pytest.raises(InputError):
        h.encode(train[0])  # a 1-D vector must be passed as [1, D]
    with pytest.raises(InputError):
        h.encode(train[:3, :8])
