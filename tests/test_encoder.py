"""OnnxEncoder: metadata, validation, batching, thread safety, bad files.

Oracles: the fitted numpy hasher (codes, projection), a bare onnxruntime session on the same
file, hashlib on the file bytes. Models are built without torch (linear hashers, and a tiny
hand-made Conv backbone fused with a linear head for the image kind).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx", reason="building test models needs the train extra (onnx)")

from hashindex.serving.encoder import EncoderOutput, OnnxEncoder, resolve_providers
from hashindex.core.errors import IndexFormatError, InputError
from hashindex.serving.hashers import Hasher, make_hasher
from hashindex.export.onnx import export_linear_hasher, fragile_rows, fuse_backbone_and_head, save_model
from hashindex.core.preprocess import ImagePreprocessing

REPO = Path(__file__).resolve().parents[1]
DIM, BITS = 24, 16


@pytest.fixture(scope="module")
def hasher():
    rng = np.random.default_rng(0)
    return make_hasher("itq", DIM, BITS).fit(rng.standard_normal((500, DIM)).astype(np.float32))


@pytest.fixture(scope="module")
def head_path(hasher, tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "itq.onnx"
    export_linear_hasher(hasher, path)
    return path


@pytest.fixture(scope="module")
def queries(hasher):
    pool = np.random.default_rng(1).standard_normal((1100, DIM)).astype(np.float32)
    keep = np.setdiff1d(np.arange(len(pool)), fragile_rows(hasher.project(pool)))[:1000]
    assert keep.size == 1000
    return pool[keep]


def tiny_backbone(size: int = 8, out_dim: int = DIM) -> "onnx.ModelProto":
    """Conv(3 -> out_dim, 3x3) -> GlobalAveragePool -> Flatten, opset 13 (converted on fusion)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(7).standard_normal((out_dim, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_dim])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


@pytest.fixture(scope="module")
def image_path(head_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("img")
    onnx.save(tiny_backbone(), tmp / "backbone.onnx")
    prep = ImagePreprocessing(size=(8, 8), channel_order="BGR", mean=(127.5,) * 3, std=(127.5,) * 3)
    fuse_backbone_and_head(tmp / "backbone.onnx", head_path, tmp / "fused.onnx", preprocessing=prep)
    return tmp / "fused.onnx"


def bare_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


# -- description -------------------------------------------------------------------------------
def test_features_model_attributes(head_path, hasher):
    enc = OnnxEncoder(head_path)
    assert isinstance(enc, Hasher)
    assert (enc.bits, enc.kind, enc.input_name, enc.input_shape, enc.dim) == (BITS, "features", "features", (DIM,), DIM)
    assert enc.has_features is False
    assert enc.path == Path(head_path)
    assert enc.sha256 == hashlib.sha256(Path(head_path).read_bytes()).hexdigest()
    assert enc.metadata.bits == BITS and enc.metadata_props["hashindex.bits"] == str(BITS)
    assert enc.providers[-1] == "CPUExecutionProvider"


def test_image_model_attributes(image_path):
    enc = OnnxEncoder(image_path, providers="cpu")
    assert (enc.kind, enc.input_name, enc.input_shape, enc.dim, enc.has_features) == ("images", "images", (3, 8, 8), DIM, True)
    assert enc.preprocessing == ImagePreprocessing(size=(8, 8), channel_order="BGR", mean=(127.5,) * 3, std=(127.5,) * 3)
    assert enc.metadata.backbone is not None and enc.metadata.backbone.output_dim == DIM


# -- encoding ----------------------------------------------------------------------------------
def test_encode_matches_numpy_hasher(head_path, hasher, queries):
    enc = OnnxEncoder(head_path)
    np.testing.assert_array_equal(enc.encode(queries), hasher.encode(queries))
    out = enc.run(queries)
    assert isinstance(out, EncoderOutput) and out.features is None
    np.testing.assert_allclose(out.embedding, np.tanh(hasher.project(queries)), atol=1e-5)
    np.testing.assert_allclose(enc.project(queries), hasher.project(queries), rtol=1e-4, atol=1e-5)
    # float64 input is accepted and cast
    np.testing.assert_array_equal(enc.encode(queries.astype(np.float64)), out.codes)


def test_image_model_run(image_path):
    enc = OnnxEncoder(image_path)
    x = np.random.default_rng(2).uniform(-1, 1, (50, 3, 8, 8)).astype(np.float32)
    out = enc.run(x)
    codes, emb, feats = bare_run(image_path, x)
    np.testing.assert_array_equal(out.codes, codes)
    np.testing.assert_array_equal(out.features, feats)
    np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, atol=1e-5)
    assert out.codes.shape == (50, BITS // 8) and out.embedding.shape == (50, BITS)


def test_batch_splitting_gives_same_result(head_path, image_path, queries):
    whole = OnnxEncoder(head_path).run(queries)
    split = OnnxEncoder(head_path, batch_size=7, progress=True).run(queries)
    np.testing.assert_array_equal(split.codes, whole.codes)
    np.testing.assert_array_equal(split.embedding, whole.embedding)
    x = np.random.default_rng(3).uniform(-1, 1, (30, 3, 8, 8)).astype(np.float32)
    a, b = OnnxEncoder(image_path).run(x), OnnxEncoder(image_path, batch_size=4).run(x)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.features, b.features)


def test_empty_batch(head_path, image_path):
    out = OnnxEncoder(head_path).run(np.empty((0, DIM), np.float32))
    assert out.codes.shape == (0, BITS // 8) and out.codes.dtype == np.uint8 and out.embedding.shape == (0, BITS)
    out = OnnxEncoder(image_path).run(np.empty((0, 3, 8, 8), np.float32))
    assert out.features.shape == (0, DIM)


def test_thread_safety(head_path, queries):
    enc = OnnxEncoder(head_path, batch_size=64)
    chunks = [queries[i : i + 37 + i % 50] for i in range(0, len(queries), 37)]
    sequential = [enc.encode(c) for c in chunks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(enc.encode, chunks * 3))
    for i, got in enumerate(concurrent):
        np.testing.assert_array_equal(got, sequential[i % len(chunks)])


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x,match",
    [
        (np.zeros(DIM, np.float32), r"2-D \[N, D\].*x\[None, :\]"),
        (np.zeros((3, DIM + 1), np.float32), f"dimension {DIM + 1}, expected {DIM}"),
        (np.zeros((3, DIM), np.int32), "floating point"),
        (np.full((3, DIM), np.nan, np.float32), "NaN or inf"),
        (np.array([[0.0] * (DIM - 1) + [np.inf]], np.float32), "NaN or inf"),
    ],
    ids=["1-D", "wrong-dim", "int", "nan", "inf"],
)
def test_bad_features_raise(head_path, x, match):
    with pytest.raises(InputError, match=match):
        OnnxEncoder(head_path).encode(x)


@pytest.mark.parametrize(
    "x,match",
    [
        (np.zeros((3, 8, 8), np.float32), r"4-D.*single image as x\[None\]"),
        (np.zeros((2, 8, 8, 3), np.float32), r"per-sample shape \(8, 8, 3\).*\(3, 8, 8\)"),
        (np.zeros((2, 3, 8, 8), np.uint8), "floating point"),
        (np.stack([np.zeros((3, 8, 8)), np.full((3, 8, 8), np.nan)]).astype(np.float32), r"NaN or inf \(rows \[1\]"),
    ],
    ids=["3-D", "NHWC", "uint8", "nan"],
)
def test_bad_images_raise(image_path, x, match):
    with pytest.raises(InputError, match=match):
        OnnxEncoder(image_path).run(x)


def test_bad_arguments(head_path):
    with pytest.raises(InputError, match="batch_size"):
        OnnxEncoder(head_path, batch_size=0)
    with pytest.raises(InputError, match="not available"):
        OnnxEncoder(head_path, providers=["NoSuchExecutionProvider"])
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(InputError, match="known preprocessing"):
        OnnxEncoder(head_path).load_images(["x.jpg"])


# -- bad files ---------------------------------------------------------------------------------
def _with_props(src, dst, **changes):
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    props = {k: v for k, v in props.items() if v is not None}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


def test_bad_files_raise_index_format_error(head_path, tmp_path):
    with pytest.raises(IndexFormatError, match="cannot read"):
        OnnxEncoder(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01garbage" * 100)
    with pytest.raises(IndexFormatError, match="not a loadable ONNX model"):
        OnnxEncoder(tmp_path / "junk.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(Path(head_path).read_bytes()[:300])
    with pytest.raises(IndexFormatError):
        OnnxEncoder(truncated)
    cases = {
        "no-metadata": ({"hashindex.bits": None, "hashindex.format": None}, "not a hashindex model"),
        "future": ({"hashindex.format": "99"}, "newer than this hashindex"),
        "bits-mismatch": ({"hashindex.bits": str(BITS * 2)}, "output 'codes' should be"),
        "bad-json": ({"hashindex.input": "{not json"}, "malformed"),
        "input-mismatch": ({"hashindex.input": '{"name": "features", "shape": ["N", 5], "dtype": "float32"}'}, "graph input shape"),
    }
    for name, (changes, match) in cases.items():
        with pytest.raises(IndexFormatError, match=match):
            OnnxEncoder(_with_props(head_path, tmp_path / f"{name}.onnx", **changes))


def test_model_without_code_outputs_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["embedding"])], "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    helper.set_model_props(model, {
        "hashindex.format": "1", "hashindex.bits": "8",
        "hashindex.input": '{"name": "features", "shape": ["N", 8], "dtype": "float32"}',
        "hashindex.training": '{"loss": "x", "data": "y", "date": "z"}',
    })
    save_model(model, tmp_path / "m.onnx")
    with pytest.raises(IndexFormatError, match="output 'codes' should be tensor\\(uint8\\) \\[N, 1\\], got missing"):
        OnnxEncoder(tmp_path / "m.onnx")


def test_serving_imports_neither_torch_nor_onnx():
    code = "import sys, hashindex.serving.encoder; bad = {'torch', 'onnx'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# -- issue 21 item 10: a failure inside onnxruntime is a ModelMismatchError naming the model -------
def _failing_at_runtime(src, dst):
    """``src`` with its input reshaped to [N + 1, D] first: valid to onnxruntime's loader (the
    shape is computed), impossible for every batch at run time."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    for node in g.node:
        node.input[:] = ["features_r" if i == "features" else i for i in node.input]
    g.initializer.append(numpy_helper.from_array(np.array([1, 0], np.int64), "plus_one_row"))
    g.node.insert(0, helper.make_node("Reshape", ["features", "bad_shape"], ["features_r"]))
    g.node.insert(0, helper.make_node("Add", ["shape", "plus_one_row"], ["bad_shape"]))
    g.node.insert(0, helper.make_node("Shape", ["features"], ["shape"]))
    onnx.save(model, str(dst))
    return dst


def test_runtime_failure_is_a_model_mismatch_naming_the_model(head_path, queries, tmp_path):
    from hashindex import HashIndex
    from hashindex.core.errors import ModelMismatchError

    path = _failing_at_runtime(head_path, tmp_path / "broken.onnx")
    enc = OnnxEncoder(path)  # loads: the failure is only at run time
    with pytest.raises(ModelMismatchError, match="broken.onnx.*failed inside onnxruntime"):
        enc.run(queries[:5])
    index = HashIndex(DIM, encoder=enc)
    with pytest.raises(ModelMismatchError, match="broken.onnx"):
        index.add(queries[:5])
    assert len(index) == 0
    with pytest.raises(ModelMismatchError, match="broken.onnx"):
        index.search(queries[:2], k=1)


# -- issue 21 item 20: the bar moves per row, image models run in small batches --------------------
def test_progress_counts_rows_and_image_batches_are_small(image_path, head_path, capsys):
    enc = OnnxEncoder(image_path, progress=True)
    assert enc.batch_size <= 64  # an image batch of 4,096 is 0.6 GB at 112 x 112 and moves the bar rarely
    assert OnnxEncoder(head_path).batch_size == 4096  # features stay in large batches
    capsys.readouterr()
    enc.run(np.zeros((70, 3, 8, 8), np.float32))
    err = capsys.readouterr().err
    assert "70/70" in err and "image" in err, err
