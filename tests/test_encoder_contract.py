"""OnnxEncoder refuses models that break the output contract at run time (issue 12, item 4).

Bad models are built with onnx.helper: the real packing tail (core.onnx_contract) plus one
defect each: fewer code (or embedding) rows than inputs, codes that are not
``packbits(embedding > 0)``, an embedding holding NaN. Oracle: the contract itself.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building test models needs the train extra (onnx)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from hashindex.core.errors import HashIndexError, ModelMismatchError  # noqa: E402
from hashindex.export.graph import code_packing_nodes  # noqa: E402
from hashindex.export.onnx import save_model  # noqa: E402
from hashindex.serving.encoder import OnnxEncoder  # noqa: E402
from hashindex.serving.index import HashIndex  # noqa: E402

DIM = BITS = 16
PROPS = {
    "hashindex.format": "1",
    "hashindex.bits": str(BITS),
    "hashindex.input": f'{{"name": "features", "shape": ["N", {DIM}], "dtype": "float32"}}',
    "hashindex.training": '{"loss": "x", "data": "y", "date": "2024-01-01"}',
}


def _model(defect: str, path) -> OnnxEncoder:
    """``embedding = features`` (identity, with the defect), ``codes`` = the real packing tail."""
    nodes, inits = [], []
    emb_src = "features"
    if defect == "nan embedding":
        nan = np.zeros(DIM, np.float32)
        nan[3] = np.nan
        inits.append(numpy_helper.from_array(nan, "nan"))
        nodes.append(helper.make_node("Add", ["features", "nan"], ["with_nan"]))
        emb_src = "with_nan"
    nodes.append(helper.make_node("Identity", [emb_src], ["emb_full"]))
    pack_from = "negated" if defect == "codes of -embedding" else "emb_full"
    if defect == "codes of -embedding":
        nodes.append(helper.make_node("Neg", ["emb_full"], ["negated"]))
    pack, pack_inits = code_packing_nodes(BITS, h=pack_from, codes="codes_full")
    nodes += pack
    inits += pack_inits
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("one", [1]), ("big", [1 << 62]), ("axis0", [0]))]
    drop_codes, drop_emb = defect == "one code row short", defect == "one embedding row short"
    nodes.append(helper.make_node("Slice", ["codes_full", "one", "big", "axis0"], ["codes"]) if drop_codes
                 else helper.make_node("Identity", ["codes_full"], ["codes"]))
    nodes.append(helper.make_node("Slice", ["emb_full", "one", "big", "axis0"], ["embedding"]) if drop_emb
                 else helper.make_node("Identity", ["emb_full"], ["embedding"]))
    graph = helper.make_graph(
        nodes, "bad",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", DIM])],
        [helper.make_tensor_value_info("codes", TensorProto.UINT8, ["N", BITS // 8]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", BITS])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    helper.set_model_props(model, PROPS)
    save_model(model, path)
    return OnnxEncoder(path, providers="cpu")


def _x(n: int = 20) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)


def test_the_unspoilt_model_passes_its_own_checks(tmp_path):
    enc = _model("none", tmp_path / "ok.onnx")
    x = _x()
    out = enc.run(x)
    np.testing.assert_array_equal(out.codes, np.packbits(x > 0, axis=1, bitorder="little"))
    index = HashIndex(DIM, encoder=enc)
    np.testing.assert_array_equal(index.add(x), np.arange(20))


DEFECTS = {
    "one code row short": "output 'codes' is uint8 \\(19, 2\\) for 20 inputs",
    "one embedding row short": "output 'embedding' is float32 \\(19, 16\\) for 20 inputs",
    "codes of -embedding": "not packbits\\(embedding > 0\\)",
    "nan embedding": "holds NaN",
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_a_model_breaking_the_contract_is_refused_on_every_path(defect, tmp_path):
    enc = _model(defect, tmp_path / "bad.onnx")
    x = _x()
    for call in (enc.run, enc.encode, enc.project):
        with pytest.raises(ModelMismatchError, match=DEFECTS[defect]):
            call(x)
    small_batches = OnnxEncoder(tmp_path / "bad.onnx", providers="cpu", batch_size=7)
    with pytest.raises(ModelMismatchError):
        small_batches.run(x)


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_an_index_is_left_unchanged_by_a_bad_model(defect, tmp_path):
    enc = _model(defect, tmp_path / "bad.onnx")
    index = HashIndex(DIM, encoder=enc)
    before = (len(index), index.ids.copy())
    with pytest.raises(HashIndexError):
        index.add(_x())
    assert (len(index), index.ids.tolist()) == (before[0], before[1].tolist())
    with pytest.raises(HashIndexError):
        index.search(_x(3), k=2)
