"""The residual hasher (stacked ITQ codes) against a direct numpy oracle, and inside an index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashindex import HashIndex, ITQHasher, ResidualHasher
from hashindex.core.errors import IndexFormatError, InputError
from hashindex.core.codes import pre_tanh
from hashindex.export.onnx import export_linear_hasher
from hashindex.serving.encoder import OnnxEncoder
from hashindex.serving.front import default_bits
from hashindex.serving.hashers import RESIDUAL_ROUNDS, LinearHasher, make_hasher, residual_stages

DIM = 32


@pytest.fixture(scope="module")
def data():
    """Clustered, anisotropic, off-centre rows: a gallery with near neighbours and probes near it."""
    rng = np.random.default_rng(5)
    scales = np.linspace(2.0, 0.4, DIM)
    centres = rng.standard_normal((300, DIM)) * scales
    x = centres[rng.integers(0, 300, 6000)] + 0.5 * rng.standard_normal((6000, DIM)) * scales + 0.7
    q = x[:200] + 0.3 * rng.standard_normal((200, DIM)) * scales
    return x.astype(np.float32), q.astype(np.float32)


def _signs(codes: np.ndarray) -> np.ndarray:
    return np.unpackbits(codes, axis=1, bitorder="little").astype(np.float32) * 2 - 1


def _stage_parts(h: LinearHasher) -> tuple[np.ndarray, list[tuple[float, np.ndarray]]]:
    """The mean and each stage's (scale, orthonormal rotation), read back from W and b."""
    mean = np.linalg.lstsq(h.weight, -h.bias, rcond=None)[0]
    parts, lo = [], 0
    for b in h.stages:
        w = h.weight[lo : lo + b].astype(np.float64)
        a = float(np.linalg.norm(w, axis=1).mean())
        parts.append((a, w / a))
        lo += b
    return mean, parts


def _oracle_codes(h: LinearHasher, x: np.ndarray) -> np.ndarray:
    """Residual quantization written out with explicit residual vectors (no Gram matrix):
    stage by stage on what the earlier stages leave, then re-encode each stage against the
    residual of all the others."""
    mean, parts = _stage_parts(h)
    r = x.astype(np.float64) - mean
    s = []
    for a, rot in parts:
        s.append(np.where(r @ rot.T > 0, 1.0, -1.0))
        r = r - a * s[-1] @ rot
    for _ in range(RESIDUAL_ROUNDS):
        for i, (a, rot) in enumerate(parts):
            r_i = r + a * s[i] @ rot
            s[i] = np.where(r_i @ rot.T > 0, 1.0, -1.0)
            r = r_i - a * s[i] @ rot
    return np.hstack(s)


def test_stage_split():
    assert residual_stages(192, 128) == (128, 64)
    assert residual_stages(256, 128) == (128, 128)
    assert residual_stages(96, 32) == (32, 32, 32)
    assert residual_stages(64, 128) == (64,)
    assert default_bits("residual", 128) == 192 and default_bits("itq", 128) == 128
    assert default_bits("residual", 32) == 48 and default_bits("itq", 512) == 128


@pytest.mark.parametrize("stages", [None, (16, 16, 32)])
def test_fit_gives_orthonormal_stages_and_codes_match_the_oracle(data, stages):
    x, _ = data
    h = (ResidualHasher(DIM, 2 * DIM) if stages is None else LinearHasher("residual", 2 * DIM, DIM, stages=stages)).fit(x)
    assert h.stages == (stages or (DIM, DIM)) and h.weight.shape == (2 * DIM, DIM)
    mean, parts = _stage_parts(h)
    np.testing.assert_allclose(mean, x.mean(axis=0), atol=1e-3)
    for a, rot in parts:
        assert a > 0
        np.testing.assert_allclose(rot @ rot.T, np.eye(rot.shape[0]), atol=1e-4)
    got = _signs(h.encode(x[:1000]))
    want = _oracle_codes(h, x[:1000])
    assert (got == want).mean() > 0.999  # float32 vs float64 ties on a handful of near-zero projections


def test_asymmetric_score_is_the_query_against_the_reconstruction(data):
    x, q = data
    h = ResidualHasher(DIM, 2 * DIM).fit(x)
    mean, _ = _stage_parts(h)
    s = _signs(h.encode(x[:300]))
    recon = s @ h.weight.astype(np.float64)  # x_hat - mean
    np.testing.assert_allclose(h.project(q[:20]) @ s.T, (q[:20] - mean) @ recon.T, rtol=1e-4, atol=1e-3)


def test_more_stages_reconstruct_better_and_rank_better_than_one(data):
    x, q = data
    itq = ITQHasher(DIM, DIM).fit(x)
    res = ResidualHasher(DIM, 2 * DIM).fit(x)

    def reconstruction_error(h: LinearHasher) -> float:
        mean = np.linalg.lstsq(h.weight, -h.bias, rcond=None)[0]
        s = _signs(h.encode(x))
        # best least-squares reconstruction from the codes for the one-stage hasher too
        coef = np.linalg.lstsq(s, x - mean, rcond=None)[0]
        return float(((x - mean - s @ coef) ** 2).sum(axis=1).mean())

    assert reconstruction_error(res) < 0.7 * reconstruction_error(itq)

    exact = np.argmax(q @ x.T, axis=1)

    def found_within(h: LinearHasher, c: int) -> float:
        scores = h.project(q) @ _signs(h.encode(x)).T
        top = np.argsort(-scores, axis=1)[:, :c]
        return float((top == exact[:, None]).any(axis=1).mean())

    assert found_within(res, 10) > found_within(itq, 10)


def test_codes_do_not_depend_on_the_feature_scale(data):
    x, _ = data
    a = ResidualHasher(DIM, 2 * DIM).fit(x)
    b = ResidualHasher(DIM, 2 * DIM).fit(x * 2.0**30)  # the fit rescales by a power of two
    assert (a.encode(x) == b.encode(x * 2.0**30)).mean() > 0.999
    np.testing.assert_allclose(b.weight, a.weight * 2.0**30, rtol=1e-3, atol=1e-3 * 2.0**30 * np.abs(a.weight).max())


def test_save_load_round_trip_and_format(data, tmp_path):
    x, _ = data
    h = ResidualHasher(DIM, 2 * DIM).fit(x)
    h.save(tmp_path / "r.npz")
    g = LinearHasher.load(tmp_path / "r.npz")
    assert (g.kind, g.bits, g.stages) == ("residual", 2 * DIM, (DIM, DIM))
    np.testing.assert_array_equal(g.encode(x), h.encode(x))
    with np.load(tmp_path / "r.npz") as z:
        assert json.loads(str(z["meta"]))["format"] == 2  # older readers refuse it ("newer")
    ITQHasher(DIM, 16).fit(x).save(tmp_path / "i.npz")
    with np.load(tmp_path / "i.npz") as z:
        assert json.loads(str(z["meta"]))["format"] == 1  # one-stage files stay readable by older readers

    for stages in ([DIM, DIM + 8], [DIM, "x"], "64"):
        meta = {"format": 2, "kind": "residual", "bits": 2 * DIM, "dim": DIM, "stages": stages}
        np.savez(tmp_path / "bad.npz", meta=np.array(json.dumps(meta)), weight=h.weight, bias=h.bias)
        with pytest.raises(IndexFormatError):
            LinearHasher.load(tmp_path / "bad.npz")


def test_bad_stages_are_refused():
    with pytest.raises(InputError, match="stages"):
        LinearHasher("residual", 64, DIM, stages=(32, 16))
    with pytest.raises(InputError, match="stages"):
        LinearHasher("residual", 64, DIM, stages=(60, 4))


@pytest.mark.parametrize("bits", [2 * DIM, 3 * DIM - 8])
def test_onnx_export_gives_the_same_codes_and_projection(data, tmp_path, bits):
    x, q = data
    h = make_hasher("residual", DIM, bits).fit(x)
    export_linear_hasher(h, tmp_path / "r.onnx")
    enc = OnnxEncoder(tmp_path / "r.onnx")
    assert enc.bits == bits
    rows = np.vstack([x[:500], q])
    np.testing.assert_array_equal(enc.encode(rows), h.encode(rows))
    z, want = pre_tanh(enc.run(rows).embedding), h.project(rows)
    unsaturated = np.abs(want) < 4  # float32 tanh saturates beyond (pre_tanh clips there)
    assert unsaturated.mean() > 0.9
    np.testing.assert_allclose(z[unsaturated], want[unsaturated], rtol=1e-3, atol=1e-4)


def test_index_with_residual_codes_searches_and_reopens(data, make_index, tmp_path):
    x, q = data
    faiss_backend = make_index.backend == "faiss"
    index = make_index(DIM, "residual", **({"partitions": None} if faiss_backend else {"name": "res"}))
    assert index.bits == default_bits("residual", DIM)
    index.add(x)
    how = {"ranking": "asymmetric", "candidates": 60} if faiss_backend else {"candidates": 300}  # Milvus: Hamming
    got = index.search(q, k=5, **how)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    exact = np.argmax(unit(q) @ unit(x).T, axis=1)
    assert np.mean(got.ids[:, 0] == exact) >= 0.95
    if faiss_backend:
        index.save(tmp_path / "ix")
        again = HashIndex.load(tmp_path / "ix")
    else:  # reattach to the collection: the hasher comes from its stored record
        again = make_index(DIM, name="res")
    assert again.hasher.stages == index.hasher.stages == (DIM, DIM // 2)
    np.testing.assert_array_equal(again.search(q, k=5, **how).ids, got.ids)
