"""Fused face model on real LFW crops: MobileFaceNet (opset 9) + hash head in one graph.

Oracles: the shipped ``embeddings`` of lfw_mfn128_dev.npz (made with the backbone alone and
numpy L2 normalisation), the head model run separately, and the numpy ITQ projection.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx", reason="fusing models needs the train extra (onnx)")

from hashindex.serving.encoder import OnnxEncoder
from hashindex.serving.hashers import ITQHasher
from hashindex.export.onnx import TrainingInfo, export_linear_hasher, fragile_rows, fuse_backbone_and_head
from hashindex.export.graph import IR_VERSION, OPSET
from hashindex.core.preprocess import FACE_PREPROCESSING, load_face_images

LFW = Path(__file__).resolve().parents[1].parent / "shared/data/lfw"
N_IMAGES = 200
BITS = 64

pytestmark = pytest.mark.skipif(
    not (LFW / "MobileFaceNet.onnx").exists() or not (LFW / "lfw_mfn128_dev.npz").exists(),
    reason=f"LFW development data not found at {LFW}",
)


@pytest.fixture(scope="module")
def lfw():
    with np.load(LFW / "lfw_mfn128_dev.npz", allow_pickle=False) as z:
        emb, paths = z["embeddings"], z["paths"]
    idx = np.linspace(0, len(paths) - 1, N_IMAGES).astype(int)
    return emb, idx, [LFW / str(p) for p in paths[idx]]


@pytest.fixture(scope="module")
def fused(lfw, tmp_path_factory):
    emb, idx, paths = lfw
    tmp = tmp_path_factory.mktemp("fused")
    hasher = ITQHasher(128, BITS).fit(emb)
    training = TrainingInfo(loss="none (itq)", data="lfw_mfn128_dev", date="2024-05-06")
    export_linear_hasher(hasher, tmp / "head.onnx", training, note="L2-normalised MobileFaceNet embeddings")
    meta = fuse_backbone_and_head(LFW / "MobileFaceNet.onnx", tmp / "head.onnx", tmp / "face.onnx")
    images = load_face_images(paths)
    out = OnnxEncoder(tmp / "face.onnx").run(images)
    return {"hasher": hasher, "dir": tmp, "meta": meta, "images": images, "out": out, "training": training}


def test_features_match_shipped_embeddings(lfw, fused):
    emb, idx, _ = lfw
    feats = fused["out"].features
    assert feats.shape == (N_IMAGES, 128) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    cosine = (feats * emb[idx]).sum(axis=1)
    assert cosine.min() > 0.999, f"worst cosine {cosine.min():.6f} at image {idx[cosine.argmin()]}"


def test_codes_match_head_on_features(lfw, fused):
    emb, idx, _ = lfw
    out, hasher = fused["out"], fused["hasher"]
    # the same head run as its own model on the fused model's features: identical bytes
    head = ort.InferenceSession(str(fused["dir"] / "head.onnx"), providers=["CPUExecutionProvider"])
    head_codes, head_emb = head.run(["codes", "embedding"], {"features": out.features})
    np.testing.assert_array_equal(out.codes, head_codes)
    np.testing.assert_array_equal(out.embedding, head_emb)
    # numpy ITQ on the same features (rows with bits at the float-rounding threshold reported)
    h = hasher.project(out.features)
    assert fragile_rows(h).size == 0, f"fragile rows {fragile_rows(h).tolist()}"
    np.testing.assert_array_equal(out.codes, hasher.encode(out.features))
    # and the shipped embeddings give the same bits wherever the margin exceeds the feature error
    h_ref = hasher.project(emb[idx])
    bits = np.unpackbits(out.codes, axis=1, bitorder="little").astype(bool)
    confident = np.abs(h_ref) > 1e-3
    disagree = (bits != (h_ref > 0)) & confident
    assert not disagree.any(), f"{disagree.sum()} confident bits differ from the npz embeddings' codes"


def test_fused_metadata_and_graph(fused):
    path = fused["dir"] / "face.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION and {o.domain: o.version for o in model.opset_import}[""] == OPSET
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["codes", "embedding", "features"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["hashindex.bits"] == str(BITS) and props["hashindex.format"] == "1"
    inp = json.loads(props["hashindex.input"])
    assert inp["shape"] == ["N", 3, 112, 112]
    assert inp["preprocessing"] == {
        "type": "image", "size": [112, 112], "channel_order": "BGR",
        "mean": [127.5] * 3, "std": [127.5] * 3, "layout": "NCHW",
    }
    assert json.loads(props["hashindex.training"]) == fused["training"].to_dict()
    backbone = json.loads(props["hashindex.backbone"])
    assert backbone["sha256"] == hashlib.sha256((LFW / "MobileFaceNet.onnx").read_bytes()).hexdigest()
    assert backbone["output_dim"] == 128
    enc = OnnxEncoder(path)
    assert (enc.kind, enc.bits, enc.dim, enc.has_features, enc.input_shape) == ("images", BITS, 128, True, (3, 112, 112))
    assert enc.preprocessing == FACE_PREPROCESSING


def test_dynamic_batch_and_encoder_image_loading(lfw, fused):
    _, _, paths = lfw
    enc = OnnxEncoder(fused["dir"] / "face.onnx", batch_size=1)
    images = enc.load_images(paths[:3])
    np.testing.assert_array_equal(images, fused["images"][:3])
    out = enc.run(images)
    np.testing.assert_array_equal(out.codes, fused["out"].codes[:3])
    np.testing.assert_allclose(out.features, fused["out"].features[:3], atol=1e-6)


def test_fused_torch_head(lfw, fused):
    """A learned HashHead exported with torch fuses the same way; codes = torch head on features."""
    torch = pytest.importorskip("torch", reason="the torch head needs the train extra")
    from hashindex.core.codes import binarize
    from hashindex.training.models import HashHead
    from hashindex.export.onnx import InputSpec, export_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    head = HashHead.create(128, 32, hidden=(96,))
    tmp = fused["dir"]
    export_model(head, tmp / "mlp.onnx", InputSpec.features(128), TrainingInfo("test", "random init"))
    fuse_backbone_and_head(LFW / "MobileFaceNet.onnx", tmp / "mlp.onnx", tmp / "face_mlp.onnx")
    images = fused["images"][:64]
    out = OnnxEncoder(tmp / "face_mlp.onnx").run(images)
    np.testing.assert_allclose(out.features, fused["out"].features[:64], atol=1e-6)
    with torch.no_grad():
        h = head.eval()(torch.from_numpy(out.features)).numpy()
    robust = np.setdiff1d(np.arange(len(h)), fragile_rows(h))
    assert robust.size >= 60, f"too many fragile rows: {fragile_rows(h).tolist()}"
    np.testing.assert_array_equal(out.codes[robust], binarize(h[robust]))
    np.testing.assert_allclose(out.embedding, h, atol=1e-5)
