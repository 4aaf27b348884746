"""export/node/encode.js (onnxruntime-node) gives the same code bytes as Python onnxruntime.

The Node program is the reference consumer in another runtime (ARCHITECTURE.md §3: any
runtime gets the same ``codes``). Its dependencies are installed from the committed
package-lock.json with ``npm ci --ignore-scripts`` when node_modules is missing (the install
script of onnxruntime-node only fetches optional GPU binaries).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx", reason="building test models needs the train extra (onnx)")

from hashindex.serving.hashers import make_hasher
from hashindex.export.onnx import export_linear_hasher, fragile_rows, fuse_backbone_and_head

NODE_DIR = Path(__file__).resolve().parents[1] / "export" / "node"
LFW = Path(__file__).resolve().parents[1].parent / "shared/data/lfw"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="node and npm are not installed"
)


@pytest.fixture(scope="module")
def node_kit():
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600)
    return NODE_DIR / "encode.js"


def python_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["codes", "embedding"], {session.get_inputs()[0].name: x})


def node_run(encode_js, model, x, tmp_path, batch=None):
    inputs, codes, emb = tmp_path / "x.f32", tmp_path / "codes.u8", tmp_path / "emb.f32"
    np.ascontiguousarray(x, dtype="<f4").tofile(inputs)
    cmd = ["node", str(encode_js), str(model), str(inputs), str(codes), "--embedding", str(emb)]
    if batch:
        cmd += ["--batch", str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    bits = summary["bits"]
    return (
        summary,
        np.fromfile(codes, np.uint8).reshape(-1, bits // 8),
        np.fromfile(emb, "<f4").reshape(-1, bits),
    )


def robust_inputs(model, pool, n):
    """First n rows whose Python embedding has no |h_i| < 1e-6 (fragile rows are reported)."""
    _, h = python_run(model, pool)
    bad = fragile_rows(h)
    if bad.size:
        print(f"excluded fragile rows {bad.tolist()}")
    keep = np.setdiff1d(np.arange(len(pool)), bad)[:n]
    assert keep.size == n
    return pool[keep]


@pytest.mark.parametrize("kind,bits", [("itq", 32), ("sign", 48), ("residual", 96)])
def test_node_codes_identical_to_python_linear(node_kit, tmp_path, kind, bits):
    rng = np.random.default_rng(11)
    train = rng.standard_normal((3000, 48)).astype(np.float32)
    model = tmp_path / "m.onnx"
    export_linear_hasher(make_hasher(kind, 48, bits).fit(train), model)
    x = robust_inputs(model, rng.standard_normal((1300, 48)).astype(np.float32), 1200)
    summary, codes, emb = node_run(node_kit, model, x, tmp_path, batch=500)
    assert summary == {"n": 1200, "bits": bits, "input": "features", "sampleShape": [48]}
    py_codes, py_emb = python_run(model, x)
    np.testing.assert_array_equal(codes, py_codes)
    np.testing.assert_allclose(emb, py_emb, rtol=0, atol=1e-6)


def test_node_codes_identical_to_python_torch_head(node_kit, tmp_path):
    torch = pytest.importorskip("torch", reason="the torch head needs the train extra")
    from hashindex.training.models import HashHead
    from hashindex.export.onnx import InputSpec, TrainingInfo, export_model

    torch.set_num_threads(1)
    torch.manual_seed(3)
    model = tmp_path / "head.onnx"
    export_model(HashHead.create(128, 64, hidden=(256,)), model, InputSpec.features(128), TrainingInfo("test", "random"))
    pool = np.random.default_rng(12).standard_normal((1200, 128)).astype(np.float32)
    x = robust_inputs(model, pool / np.linalg.norm(pool, axis=1, keepdims=True), 1000)
    _, codes, emb = node_run(node_kit, model, x, tmp_path)
    py_codes, py_emb = python_run(model, x)
    np.testing.assert_array_equal(codes, py_codes)
    np.testing.assert_allclose(emb, py_emb, rtol=0, atol=1e-6)


@pytest.mark.skipif(not (LFW / "MobileFaceNet.onnx").exists(), reason=f"MobileFaceNet.onnx not found in {LFW}")
def test_node_fused_image_model(node_kit, tmp_path):
    """4-D input path: the fused face model on preprocessed-range random images."""
    rng = np.random.default_rng(13)
    head = tmp_path / "head.onnx"
    export_linear_hasher(make_hasher("pca", 128, 32).fit(rng.standard_normal((500, 128)).astype(np.float32)), head)
    fuse_backbone_and_head(LFW / "MobileFaceNet.onnx", head, tmp_path / "face.onnx")
    x = rng.uniform(-1, 1, (24, 3, 112, 112)).astype(np.float32)
    summary, codes, _ = node_run(node_kit, tmp_path / "face.onnx", x, tmp_path, batch=10)
    assert summary["sampleShape"] == [3, 112, 112] and summary["input"] == "images"
    np.testing.assert_array_equal(codes, python_run(tmp_path / "face.onnx", x)[0])


def test_node_rejects_bad_input(node_kit, tmp_path):
    model = tmp_path / "m.onnx"
    export_linear_hasher(make_hasher("pca", 16, 8).fit(np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)), model)
    (tmp_path / "bad.f32").write_bytes(np.zeros(17, "<f4").tobytes())
    done = subprocess.run(["node", str(node_kit), str(model), str(tmp_path / "bad.f32"), str(tmp_path / "o.u8")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not a whole number of [16] samples" in done.stderr
