"""Reliability defects of issue 21, one test each (both backends where the front is shared):

- item 2: fit() during add() must never leave codes of a replaced hasher in the index;
- item 9: rows too large for float32 scores are refused with a named limit; rows inside the
  limit fit and score finitely (the hasher is fitted scale-safely);
- item 15: one rule (2 * bits rows) for fit(), the first add() and ``hashindex build``;
- item 16: an image model's feature dimension is checked when the index is built;
- pickling / copying an index raises a HashIndexError that says how to share it.
"""

from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest

from hashindex import HashIndex
from hashindex.core.errors import HashIndexError, InputError, NotFittedError, UnsupportedError
from hashindex.serving.hashers import ITQHasher, make_hasher


def _unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- item 2: fit() during add() ------------------------------------------------------------------
def test_fit_during_add_never_stores_codes_of_the_replaced_hasher(make_index, monkeypatch):
    """add() is paused after encoding (before inserting) while fit() refits the hasher on other
    data: the stored codes must be those of the hasher the index ends up with."""
    dim, bits = 16, 16
    index = make_index(dim, bits=bits)
    index.fit(_unit_rows(400, dim, seed=1))
    other = _unit_rows(400, dim, seed=2) * np.linspace(0.1, 3.0, dim, dtype=np.float32) + 0.5  # another distribution
    x = _unit_rows(60, dim, seed=3)
    codes_before = index.hasher.encode(x)

    encoded, resume = threading.Event(), threading.Event()
    real_encode = index.hasher.encode

    def encode_then_pause(features):
        codes = real_encode(features)
        if not encoded.is_set():  # only the add's first encode waits
            encoded.set()
            resume.wait(10)
        return codes

    monkeypatch.setattr(index.hasher, "encode", encode_then_pause)
    errors: list[BaseException] = []

    def run(fn):
        try:
            fn()
        except HashIndexError as e:  # a fit refused because the add won the lock is fine
            errors.append(e)

    adder = threading.Thread(target=run, args=(lambda: index.add(x),))
    adder.start()
    assert encoded.wait(10), "add() never encoded"
    fitter = threading.Thread(target=run, args=(lambda: index.fit(other),))
    fitter.start()
    fitter.join(2)  # where fit() waits for the add's lock instead, the add resumes below
    resume.set()
    adder.join(10)
    fitter.join(10)
    assert not adder.is_alive() and not fitter.is_alive()
    assert all(isinstance(e, InputError) and "already holds codes" in str(e) for e in errors), errors
    assert len(index) == len(x)

    stored = index.get_codes(index.ids)
    current = real_encode(index.get_features(index.ids))
    if not errors:  # the fit went through: the hasher really changed (the test is meaningful)
        assert (real_encode(x) != codes_before).any()
    np.testing.assert_array_equal(stored, current)


def test_add_encoding_while_fit_is_under_way_stores_codes_of_the_new_hasher(make_index, monkeypatch):
    """The other overlap: fit() holds the lock and is still fitting when add() encodes (with
    the hasher fit() is about to replace); add() must not store those codes."""
    dim, bits = 16, 16
    index = make_index(dim, bits=bits)
    index.fit(_unit_rows(400, dim, seed=1))
    other = _unit_rows(400, dim, seed=2) * np.linspace(0.1, 3.0, dim, dtype=np.float32) + 0.5
    x = _unit_rows(60, dim, seed=3)
    codes_before = index.hasher.encode(x)

    fitting, encoded = threading.Event(), threading.Event()
    real_fit, real_encode = index.hasher.fit, index.hasher.encode

    def wait_then_fit(features):
        fitting.set()
        encoded.wait(10)  # the add encodes with the old hasher meanwhile
        return real_fit(features)

    def encode_and_tell(features):
        codes = real_encode(features)
        encoded.set()
        return codes

    monkeypatch.setattr(index.hasher, "fit", wait_then_fit)
    monkeypatch.setattr(index.hasher, "encode", encode_and_tell)
    fitter = threading.Thread(target=index.fit, args=(other,))
    fitter.start()
    assert fitting.wait(10), "fit() never started"
    adder = threading.Thread(target=index.add, args=(x,))
    adder.start()
    fitter.join(10)
    adder.join(10)
    assert not adder.is_alive() and not fitter.is_alive()
    assert len(index) == len(x)
    assert (real_encode(x) != codes_before).any()  # the hasher really changed
    np.testing.assert_array_equal(index.get_codes(index.ids), real_encode(index.get_features(index.ids)))


# -- item 9: huge finite rows ----------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rows_whose_scores_overflow_float32_are_refused(make_index, metric):
    index = make_index(16, bits=16, metric=metric)
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    for scale in (1e37, 1e20):
        with pytest.raises(InputError, match=r"norm above 2\*\*62"):
            index.add(x * np.float32(scale))  # was FAISS's sgesvd RuntimeError / inf scores
        assert len(index) == 0
    index.add(x)
    with pytest.raises(InputError, match=r"queries have rows with L2 norm above 2\*\*62"):
        index.search(x[:2] * np.float32(1e20), k=3)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rows_just_inside_the_norm_limit_fit_and_score_finitely(make_index, metric, oracle):
    """1,000 rows of norm 4e18 (< 2**62): FAISS's float32 PCA covariance of them overflows, so
    the hasher must be fitted on rescaled rows. Oracle: a fit on the same rows divided by 2**62
    (exact in floating point, and small) gives the same codes."""
    dim = 16
    x = _unit_rows(1000, dim, seed=4) * np.float32(4e18)
    index = make_index(dim, "pca", bits=16, metric=metric)
    ids = index.add(x)
    small = np.ldexp(x, -62)
    reference = make_hasher("pca", dim, 16).fit(small)
    agree = (np.unpackbits(index.get_codes(ids), axis=1) == np.unpackbits(reference.encode(small), axis=1)).mean()
    assert agree >= 0.99, f"only {agree:.3f} of the bits agree with a fit on the rows / 2**62"
    res = index.search(x[:20], k=5, candidates=len(x))
    assert np.isfinite(res.scores).all()
    np.testing.assert_array_equal(res.ids[:, 0], ids[:20])
    exact = oracle.scores(x[:20], x, metric)
    best = np.sort(exact, axis=1)[:, :5] if metric == "l2" else -np.sort(-exact, axis=1)[:, :5]
    np.testing.assert_allclose(res.scores, best, rtol=1e-3, atol=1e33)


@pytest.mark.parametrize("kind", ["pca", "itq"])
def test_a_hasher_fits_tiny_and_huge_rows_as_it_fits_unit_rows(kind):
    """Scaling the training rows by a power of two (exact) changes no code: FAISS's float32
    covariance underflowed (2**-100) or overflowed (2**100) before the fit rescaled them."""
    unit = _unit_rows(600, 16, seed=5) + 0.25
    codes = make_hasher(kind, 16, 16).fit(unit).encode(unit)
    for exp in (-100, 100):
        scaled = np.ldexp(unit, exp)
        h = make_hasher(kind, 16, 16).fit(scaled)
        assert np.isfinite(h.weight).all() and np.isfinite(h.bias).all()
        np.testing.assert_array_equal(h.encode(scaled), codes)


# -- item 15: too few rows to fit ----------------------------------------------------------------
def test_one_rule_for_the_rows_a_hasher_needs(make_index):
    index = make_index(128, bits=128)  # ITQ, 128 bits: 256 rows (the residual default: 2 * 192)
    for n in (5, 127, 200, 255):  # < 128 crashed inside FAISS's PCA; 128-255 were accepted by fit only
        with pytest.raises(InputError, match=r"itq hasher \(128 bits\) needs at least 2 \* bits = 256 rows, got " + str(n)):
            index.fit(_unit_rows(n, 128))
        assert not index.hasher.is_fitted
        with pytest.raises(NotFittedError, match=r"needs at least 2 \* bits = 256 rows, got " + str(n)):
            index.add(_unit_rows(n, 128))
        assert len(index) == 0
    # a bare hasher (training fits its ITQ starts on fewer rows) refuses only what FAISS cannot fit
    with pytest.raises(InputError, match=r"pca hasher \(128 bits\) needs at least 128 rows, got 100"):
        make_hasher("pca", 128, 128).fit(_unit_rows(100, 128))
    assert make_hasher("pca", 128, 128).fit(_unit_rows(200, 128)).is_fitted
    index.fit(_unit_rows(256, 128))
    assert index.hasher.is_fitted


def test_build_on_a_tiny_file_names_the_rows_needed(tmp_path, capsys):
    from hashindex.cli import main
    from hashindex.training.data import EmbeddingSet, save_embeddings

    save_embeddings(tmp_path / "five.npz", EmbeddingSet(np.random.default_rng(0).normal(size=(5, 128)).astype(np.float32)))
    capsys.readouterr()
    assert main(["build", "--features", str(tmp_path / "five.npz"), "--out", str(tmp_path / "idx"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "needs at least 2 * bits = 384 rows, got 5" in err and "residual" in err  # the default: 192 bits


# -- item 16: an image model's dimension at construction -------------------------------------------
def _tiny_image_model(tmp_path, feature_dim: int = 16, bits: int = 8):
    """A fused image model ``images [N, 3, 112, 112] -> features [N, feature_dim]`` built from a
    one-layer backbone (mean colour, then a matrix) and an ITQ head: cheap, no data needed."""
    onnx = pytest.importorskip("onnx", reason="fusing models needs the train extra (onnx)")
    from onnx import TensorProto, helper, numpy_helper

    from hashindex.export.graph import IR_VERSION, OPSET
    from hashindex.export.onnx import TrainingInfo, export_linear_hasher, fuse_backbone_and_head
    from hashindex.serving.encoder import OnnxEncoder

    w = np.random.default_rng(0).standard_normal((3, feature_dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["output"])],  # fmt: skip
        "tiny_backbone",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", feature_dim])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.save(model, tmp_path / "backbone.onnx")
    head = ITQHasher(feature_dim, bits).fit(_unit_rows(200, feature_dim, seed=6))
    export_linear_hasher(head, tmp_path / "head.onnx", TrainingInfo(loss="none (itq)", data="random", date="2026-12-03"))
    fuse_backbone_and_head(tmp_path / "backbone.onnx", tmp_path / "head.onnx", tmp_path / "tiny_face.onnx")
    return OnnxEncoder(tmp_path / "tiny_face.onnx")


def test_an_image_model_of_another_dimension_is_refused_at_construction(make_index, tmp_path):
    encoder = _tiny_image_model(tmp_path, feature_dim=16)
    assert encoder.kind == "images" and encoder.dim == 16
    for dim in (8, 64):
        with pytest.raises(InputError, match=r"outputs 16-d features, index has dim=" + str(dim)):
            make_index(dim, encoder=encoder)
    index = make_index(16, encoder=encoder)
    images = np.random.default_rng(1).uniform(-1, 1, (4, 3, 112, 112)).astype(np.float32)
    ids = index.add_images(images)
    assert len(index) == 4
    assert (index.search_images(images, k=1, ranking="hamming").ids[:, 0] == ids).all()


# -- pickling and copying ----------------------------------------------------------------------------
def test_pickling_or_copying_an_index_says_how_to_share_it(make_index):
    index = make_index(16, bits=16)
    index.add(_unit_rows(100, 16))
    how = "HashIndex.load(path, mmap=True)" if make_index.backend == "faiss" else "MilvusHashIndex(dim, uri="
    for copier in (pickle.dumps, copy.deepcopy, copy.copy):
        with pytest.raises(UnsupportedError, match=r"cannot be pickled or copied") as e:
            copier(index)
        assert how in str(e.value)
    assert len(index) == 100  # still usable
