"""HashIndex with an ONNX encoder: model round trip, swapped-model refusal, fused image model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="ONNX export needs the train extra (onnx)")

from hashindex import HashIndex, InputError, ModelMismatchError, OnnxEncoder  # noqa: E402
from hashindex.core.codes import hamming_distances  # noqa: E402
from hashindex.serving.hashers import ITQHasher, PCASignHasher  # noqa: E402
from hashindex.export.onnx import export_linear_hasher, fuse_backbone_and_head  # noqa: E402

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def itq_model(tmp_path):
    rng = np.random.default_rng(0)
    x = _normalised(rng, 3000, 32)
    hasher = ITQHasher(32, 16).fit(x)
    path = tmp_path / "itq.onnx"
    export_linear_hasher(hasher, path)
    return hasher, path, x


def test_index_with_encoder_matches_linear_hasher_and_round_trips(itq_model, tmp_path):
    hasher, path, x = itq_model
    by_model = HashIndex(32, encoder=OnnxEncoder(path))
    by_model.add(x)
    by_numpy = HashIndex(32, hasher)
    by_numpy.add(x)
    np.testing.assert_array_equal(by_model.codes, by_numpy.codes)

    q = x[:50] + 0.01
    before = by_model.search(q, k=5, radius=2)
    by_model.save(tmp_path / "idx")
    loaded = HashIndex.load(tmp_path / "idx")
    assert isinstance(loaded.hasher, OnnxEncoder)
    assert loaded.hasher.sha256 == OnnxEncoder(path).sha256
    after = loaded.search(q, k=5, radius=2)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)


def test_swapped_model_is_refused(itq_model, tmp_path):
    _, path, x = itq_model
    index = HashIndex(32, encoder=OnnxEncoder(path))
    index.add(x)
    index.save(tmp_path / "idx")

    other = tmp_path / "other.onnx"
    export_linear_hasher(PCASignHasher(32, 16).fit(x), other)
    with pytest.raises(ModelMismatchError, match="SHA-256"):
        HashIndex.load(tmp_path / "idx", encoder=OnnxEncoder(other))

    wider = tmp_path / "wider.onnx"
    export_linear_hasher(ITQHasher(32, 24).fit(x), wider)
    with pytest.raises(ModelMismatchError):
        HashIndex.load(tmp_path / "idx", encoder=OnnxEncoder(wider))


def test_bad_encoder_input_is_refused_and_index_unchanged(itq_model):
    _, path, x = itq_model
    index = HashIndex(32, encoder=OnnxEncoder(path))
    index.add(x[:100])
    with pytest.raises(InputError):
        index.add(x[:10, :31])
    with pytest.raises(InputError):
        index.add(x[:10].astype(np.int32))
    with pytest.raises(InputError):
        index.add_images(np.zeros((1, 3, 112, 112), np.float32))  # not a fused model
    assert len(index) == 100


@pytest.mark.skipif(not LFW.exists(), reason=f"LFW development data not found at {LFW}")
def test_fused_face_model_indexes_images_directly(itq_model, tmp_path):
    from hashindex.core.preprocess import load_face_images

    data = np.load(LFW / "lfw_mfn128_dev.npz", allow_pickle=False)
    emb, paths = data["embeddings"], data["paths"]
    hasher = ITQHasher(128, 32).fit(emb)
    head = tmp_path / "head.onnx"
    export_linear_hasher(hasher, head)
    fused = tmp_path / "face_hasher.onnx"
    fuse_backbone_and_head(LFW / "MobileFaceNet.onnx", head, fused)

    pick = np.arange(0, 9201, 230)[:40]
    images = load_face_images([LFW / p for p in paths[pick]])
    index = HashIndex(128, encoder=OnnxEncoder(fused))
    ids = index.add_images(images)
    # stored features are the npz embeddings (the same model, the same preprocessing)
    cos = np.sum(index.get_features(ids) * emb[pick], axis=1)
    assert cos.min() > 0.999
    res = index.search_images(images[:10], k=1, candidates=len(pick))
    np.testing.assert_array_equal(res.ids[:, 0], ids[:10])
    head_only = HashIndex(128, hasher)
    head_only.add(emb[pick])  # ids 0..39, as add_images gave
    by_features = head_only.search(emb[pick][:10], k=3, candidates=8, ranking="asymmetric")
    by_images = index.search_images(images[:10], k=3, candidates=8, ranking="asymmetric")
    np.testing.assert_array_equal(by_images.ids[:, 0], ids[:10])
    assert (np.mean(by_images.ids == by_features.ids)) >= 0.9  # same people; near-ties may swap
    # codes agree with the head on the npz embeddings except for near-zero projections
    h = hasher.project(emb[pick])
    stable = (np.abs(h) > 1e-3).all(axis=1)
    assert stable.sum() >= 30
    d = hamming_distances(index.codes[stable], hasher.encode(emb[pick][stable]))
    assert (np.diag(d) == 0).all()


def test_asymmetric_ranking_through_the_encoder_matches_the_linear_hasher(itq_model):
    """The ONNX ``embedding`` is tanh(x W^T + b); the encoder's projection undoes the tanh,
    so an ONNX-served index ranks asymmetrically exactly as the numpy hasher does."""
    hasher, path, x = itq_model
    encoder = OnnxEncoder(path)
    np.testing.assert_allclose(encoder.project(x[:200]), hasher.project(x[:200]), rtol=1e-4, atol=1e-5)
    by_model = HashIndex(32, encoder=encoder)
    by_model.add(x)
    by_numpy = HashIndex(32, hasher)
    by_numpy.add(x)
    q = x[:40] + 0.02
    a = by_model.search(q, k=5, candidates=60, ranking="asymmetric")
    b = by_numpy.search(q, k=5, candidates=60, ranking="asymmetric")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.hamming, b.hamming)
