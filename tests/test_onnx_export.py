"""ONNX export: onnxruntime codes are byte-identical to the reference implementation.

Oracles: numpy ``x @ W.T + b`` for linear hashers, the torch module in eager mode for torch
models, ``np.packbits(h > 0, bitorder="little")`` and a hand-computed one-hot table for the
bit order. Rows with some ``|h_i| < 1e-6`` (fragile under float rounding) are removed from
the test set and reported; the comparison set is asserted free of them.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="exporting torch models needs the train extra (torch)")
nn = torch.nn
torch.set_num_threads(1)

from hashindex.core.errors import InputError, NotFittedError
from hashindex.serving.hashers import LinearHasher, make_hasher
from hashindex.export.onnx import (
    InputSpec,
    TrainingInfo,
    export_linear_hasher,
    export_model,
    fragile_rows,
    read_metadata,
)
from hashindex.core.onnx_contract import FORMAT_VERSION
from hashindex.export.graph import IR_VERSION, OPSET
from hashindex.core.preprocess import ImagePreprocessing

N_TEST = 1000
TRAINING = TrainingInfo(loss="test-loss", data="synthetic", date="2024-01-02")


def oracle_pack(h: np.ndarray) -> np.ndarray:
    return np.packbits(h > 0, axis=-1, bitorder="little")


def robust_subset(x: np.ndarray, h: np.ndarray, n: int = N_TEST) -> tuple[np.ndarray, np.ndarray]:
    """First ``n`` rows of a candidate pool whose reference h has no ``|h_i| < 1e-6``."""
    bad = fragile_rows(h)
    if bad.size:
        print(f"excluded {bad.size} of {len(h)} candidate rows with some |h_i| < 1e-6: {bad[:10].tolist()}")
    keep = np.setdiff1d(np.arange(len(h)), bad)[:n]
    assert keep.size == n, f"only {keep.size} robust rows, need {n}"
    assert fragile_rows(h[keep]).size == 0
    return x[keep], h[keep]


def run_onnx(path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()][:2] == ["codes", "embedding"]
    codes, emb = session.run(["codes", "embedding"], {session.get_inputs()[0].name: x})
    return codes, emb


def assert_matches_reference(path, x: np.ndarray, h_ref: np.ndarray, atol: float = 1e-5) -> None:
    codes, emb = run_onnx(path, x)
    assert codes.dtype == np.uint8 and codes.shape == (len(x), h_ref.shape[1] // 8)
    np.testing.assert_array_equal(codes, oracle_pack(h_ref))
    np.testing.assert_allclose(emb, h_ref, rtol=0, atol=atol)
    # dynamic batch axis: a single row and the full batch agree with the reference
    c1, e1 = run_onnx(path, x[:1])
    np.testing.assert_array_equal(c1, oracle_pack(h_ref[:1]))
    assert e1.shape == (1, h_ref.shape[1])


def assert_contract(path, bits: int, input_name: str, sample_shape: tuple[int, ...]) -> dict:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION
    assert {o.domain: o.version for o in model.opset_import}[""] == OPSET
    props = {p.key: p.value for p in model.metadata_props}
    # format 2 only where the codes are residual (older readers keep reading every other model)
    assert props["hashindex.format"] == ("2" if "hashindex.stages" in props else "1") and FORMAT_VERSION == 2
    assert props["hashindex.bits"] == str(bits)
    inp = json.loads(props["hashindex.input"])
    assert inp["name"] == input_name and inp["dtype"] == "float32"
    assert inp["shape"] == ["N", *sample_shape]
    training = json.loads(props["hashindex.training"])
    assert set(training) >= {"loss", "data", "date"}
    graph_in = model.graph.input
    assert [i.name for i in graph_in] == [input_name]
    assert graph_in[0].type.tensor_type.shape.dim[0].dim_param == "N"
    outs = {o.name: o for o in model.graph.output}
    assert outs["codes"].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in outs["codes"].type.tensor_type.shape.dim] == ["N", bits // 8]
    assert [d.dim_param or d.dim_value for d in outs["embedding"].type.tensor_type.shape.dim] == ["N", bits]
    return props


# -- bit order, hand-computed ------------------------------------------------------------------
def test_bit_order_one_hot_table(tmp_path):
    """Only h_i > 0 for one i: byte i // 8 must be 1 << (i % 8), every other byte 0."""
    bits = 24
    hasher = LinearHasher("linear", bits, bits, np.eye(bits, dtype=np.float32), np.zeros(bits, np.float32))
    path = tmp_path / "eye.onnx"
    export_linear_hasher(hasher, path)
    x = np.where(np.eye(bits, dtype=bool), 1.0, -1.0).astype(np.float32)
    x = np.vstack([x, np.zeros((1, bits), np.float32)])  # h == 0 exactly: bit 0
    codes, _ = run_onnx(path, x)
    expected = np.zeros((bits + 1, bits // 8), np.uint8)
    for i in range(bits):
        expected[i, i // 8] = 1 << (i % 8)
    np.testing.assert_array_equal(codes, expected)


# -- linear hashers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def correlated_data():
    rng = np.random.default_rng(42)
    mixing = rng.standard_normal((32, 32)).astype(np.float32)
    train = rng.standard_normal((2000, 32)).astype(np.float32) @ mixing + 0.5
    pool = rng.standard_normal((1300, 32)).astype(np.float32) @ mixing + 0.5
    return train, pool


@pytest.mark.parametrize("kind,bits", [("sign", 32), ("pca", 16), ("itq", 24)])
def test_linear_hasher_codes_byte_identical(tmp_path, correlated_data, kind, bits):
    train, pool = correlated_data
    hasher = make_hasher(kind, 32, bits).fit(train)
    path = tmp_path / f"{kind}.onnx"
    meta = export_linear_hasher(hasher, path, note="raw synthetic vectors")
    assert meta.bits == bits
    h_pool = pool.astype(np.float64) @ hasher.weight.T.astype(np.float64) + hasher.bias  # numpy oracle
    x, h = robust_subset(pool, h_pool)
    assert_matches_reference(path, x, np.tanh(h), atol=1e-5)  # the embedding is the tanh code (§3)
    props = assert_contract(path, bits, "features", (32,))
    assert json.loads(props["hashindex.input"])["preprocessing"] == "raw synthetic vectors"
    assert kind in json.loads(props["hashindex.training"])["loss"]
    assert read_metadata(path) == meta


def test_unfitted_hasher_is_refused(tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        export_linear_hasher(make_hasher("pca", 16, 8), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


# -- torch models ------------------------------------------------------------------------------


def torch_reference(model, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).double().numpy()


def mlp_sequential():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 64), nn.Tanh())


def hash_head():
    from hashindex.training.models import HashHead

    torch.manual_seed(1)
    return HashHead.create(32, 64, hidden=(48,), batch_norm=True)


@pytest.mark.parametrize("make,dynamo", [(mlp_sequential, True), (mlp_sequential, False), (hash_head, True)],
                         ids=["sequential-dynamo", "sequential-legacy", "hashhead-dynamo"])
def test_torch_head_codes_byte_identical(tmp_path, correlated_data, make, dynamo):
    _, pool = correlated_data
    model = make()
    model.train()
    path = tmp_path / "head.onnx"
    meta = export_model(model, path, InputSpec.features(32), TRAINING, dynamo=dynamo)
    assert model.training, "export must restore the module's training mode"
    assert meta.bits == 64
    x, h = robust_subset(pool, torch_reference(model, pool))
    assert_matches_reference(path, x, h)
    props = assert_contract(path, 64, "features", (32,))
    assert json.loads(props["hashindex.training"]) == TRAINING.to_dict()


class TinyConvHasher(nn.Module):
    """Conv-BN-ReLU-Conv-Pool-Linear-Tanh image model with non-trivial BatchNorm statistics."""

    def __init__(self, bits: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, bits), nn.Tanh(),
        )
        bn = self.net[1]
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)

    def forward(self, images):
        return self.net(images)


def test_image_model_codes_byte_identical(tmp_path):
    torch.manual_seed(2)
    model = TinyConvHasher(32)
    prep = ImagePreprocessing(size=(16, 16), channel_order="RGB", mean=(127.5,) * 3, std=(64.0,) * 3)
    path = tmp_path / "conv.onnx"
    export_model(model, path, InputSpec.images(prep), TRAINING)
    pool = np.random.default_rng(3).standard_normal((1200, 3, 16, 16)).astype(np.float32)
    x, h = robust_subset(pool, torch_reference(model, pool))
    assert_matches_reference(path, x, h)
    props = assert_contract(path, 32, "images", (3, 16, 16))
    assert json.loads(props["hashindex.input"])["preprocessing"] == json.loads(json.dumps(prep.to_dict()))
    assert read_metadata(path).input.preprocessing == prep


def test_image_hash_net_resnet(tmp_path):
    """The project's ResNet-18 image model (small input to keep it fast)."""
    from hashindex.training.models import ImageHashNet

    torch.manual_seed(4)
    model = ImageHashNet.create(16, preprocess=ImagePreprocessing(size=(32, 32)))
    path = tmp_path / "resnet.onnx"
    export_model(model, path, model.input_spec, TRAINING)
    pool = np.random.default_rng(5).standard_normal((160, 3, 32, 32)).astype(np.float32)
    x, h = robust_subset(pool, torch_reference(model, pool), n=128)
    assert_matches_reference(path, x, h, atol=1e-4)
    assert_contract(path, 16, "images", (3, 32, 32))


def test_bad_models_are_refused(tmp_path):
    with pytest.raises(InputError, match="multiple of 8"):
        export_model(nn.Linear(8, 12), tmp_path / "a.onnx", InputSpec.features(8), TRAINING)
    with pytest.raises(InputError, match="fails on an input"):
        export_model(nn.Linear(8, 16), tmp_path / "b.onnx", InputSpec.features(5), TRAINING)
    with pytest.raises(InputError, match=r"continuous code h \[N, K\]"):
        export_model(nn.Flatten(0), tmp_path / "c.onnx", InputSpec.features(8), TRAINING)
    assert not list(tmp_path.iterdir())
