"""``hashindex build --images DIR`` / ``search --images DIR`` with a tiny fused image model
(issue 21 item 19), and image progress (item 20).

Oracle: the same images run through ``HashIndex.add_images`` / ``search_images`` in memory, in
one batch. The model is a hand-made Conv backbone fused with an ITQ head (no torch); the images
are a few small PNGs, three per person.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building the test model needs the train extra (onnx)")
Image = pytest.importorskip("PIL.Image", reason="decoding images needs Pillow (train extra)")

from hashindex import HashIndex  # noqa: E402
from hashindex.cli import main  # noqa: E402
from hashindex.core.preprocess import ImagePreprocessing, load_images  # noqa: E402
from hashindex.export.onnx import export_linear_hasher, fuse_backbone_and_head  # noqa: E402
from hashindex.serving.encoder import OnnxEncoder  # noqa: E402
from hashindex.serving.hashers import make_hasher  # noqa: E402
from hashindex.training.data import EmbeddingSet, save_embeddings  # noqa: E402

DIM, BITS, SIZE = 24, 16, 8
PEOPLE, PER_PERSON = 4, 3


def _backbone():
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(7).standard_normal((DIM, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", DIM])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_images")
    rng = np.random.default_rng(0)
    head = make_hasher("itq", DIM, BITS).fit(rng.standard_normal((200, DIM)).astype(np.float32))
    export_linear_hasher(head, root / "head.onnx")
    onnx.save(_backbone(), root / "backbone.onnx")
    prep = ImagePreprocessing(size=(SIZE, SIZE), channel_order="BGR", mean=(127.5,) * 3, std=(127.5,) * 3)
    fuse_backbone_and_head(root / "backbone.onnx", root / "head.onnx", root / "fused.onnx", preprocessing=prep)
    for p in range(PEOPLE):
        colour = rng.integers(0, 256, 3)
        (root / "faces" / f"person{p}").mkdir(parents=True)
        for i in range(PER_PERSON):
            pixels = np.clip(colour + rng.integers(-60, 60, (12, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "faces" / f"person{p}" / f"{i}.png")  # resized to 8 x 8 on load
    save_embeddings(root / "feats.npz", EmbeddingSet(rng.standard_normal((50, DIM)).astype(np.float32)))
    return root


def _paths(files):
    return sorted((files / "faces").glob("*/*.png"))


def test_build_and_search_an_image_folder(files, tmp_path, capsys, monkeypatch):
    import hashindex.cli.image_folder as image_folder

    monkeypatch.setattr(image_folder, "CHUNK_IMAGES", 5)  # 12 images: three chunks, one of 2
    idx, res = tmp_path / "faces.idx", tmp_path / "res.npz"
    argv = ["build", "--images", str(files / "faces"), "--model", str(files / "fused.onnx"), "--out", str(idx)]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "12/12" in cap.err and "image" in cap.err  # one bar counting images
    assert f"built {idx}: 12 items, {PEOPLE} labels" in cap.out
    index = HashIndex.load(idx)
    assert len(index) == PEOPLE * PER_PERSON
    assert (index.get_labels(np.arange(12)) == np.repeat(np.arange(PEOPLE), PER_PERSON)).all()

    # the oracle: every image in memory at once, through the library
    enc = OnnxEncoder(files / "fused.onnx")
    images = enc.load_images(_paths(files))
    oracle = HashIndex(DIM, encoder=enc)
    oracle.add_images(images, labels=np.repeat(np.arange(PEOPLE), PER_PERSON))
    np.testing.assert_array_equal(index.get_codes(np.arange(12)), oracle.get_codes(np.arange(12)))
    np.testing.assert_allclose(index.get_features(np.arange(12)), oracle.get_features(np.arange(12)), atol=1e-6)

    argv = ["search", "--index", str(idx), "--images", str(files / "faces"), "-k", "2", "--group-by", "label",
            "--out", str(res)]  # fmt: skip
    assert main(argv) == 0
    got = np.load(res, allow_pickle=False)
    want = oracle.search_images(images, k=2, group_by="label")
    np.testing.assert_array_equal(got["ids"], want.ids)
    np.testing.assert_array_equal(got["labels"][:, 0], np.repeat(np.arange(PEOPLE), PER_PERSON))
    assert [str(p) for p in got["paths"]] == [str(p) for p in _paths(files)]
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--images", str(files / "faces" / "person1"), "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert f"query {files / 'faces' / 'person1' / '0.png'}: 3(" in out  # results name the user's files


def test_image_index_errors_name_the_users_inputs(files, tmp_path, capsys):
    idx = tmp_path / "flat.idx"
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in _paths(files)[:3]:
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    assert main(["build", "--images", str(flat), "--model", str(files / "fused.onnx"), "--out", str(idx), "--quiet"]) == 0
    assert not HashIndex.load(idx).has_labels  # a flat folder has no labels

    def err(argv):
        capsys.readouterr()
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
        return lines[0]

    line = err(["search", "--index", str(idx), "--queries", str(files / "feats.npz")])
    assert "--images" in line and "4096" not in line and "4-D" not in line
    line = err(["search", "--index", str(idx), "--images", str(flat), "--recall", "0.9", "--quiet"])
    assert "--recall" in line and "--candidates" in line and "4-D" not in line
    line = err(["build", "--features", str(files / "feats.npz"), "--model", str(files / "fused.onnx"), "--out", str(tmp_path / "x")])
    assert "takes images" in line and "--images" in line
    line = err(["build", "--images", str(flat), "--out", str(tmp_path / "x")])
    assert "--model" in line
    line = err(["build", "--images", str(flat), "--model", str(files / "head.onnx"), "--out", str(tmp_path / "x")])
    assert "feature rows" in line
    line = err(["build", "--images", str(tmp_path / "absent"), "--model", str(files / "fused.onnx"), "--out", str(tmp_path / "x")])
    assert "absent" in line and "does not exist" in line
    (tmp_path / "empty").mkdir()
    line = err(["search", "--index", str(idx), "--images", str(tmp_path / "empty")])
    assert "no images" in line
    (flat / "zz_broken.png").write_bytes(b"not a png")
    line = err(["search", "--index", str(idx), "--images", str(flat), "--quiet"])
    assert "zz_broken.png" in line
    plain = tmp_path / "plain.idx"
    assert main(["build", "--features", str(files / "feats.npz"), "--bits", "8", "--out", str(plain), "--quiet"]) == 0
    line = err(["search", "--index", str(plain), "--images", str(flat)])
    assert "--queries" in line


def test_search_errors_name_the_users_rows_not_a_chunk(files, tmp_path, capsys):
    plain = tmp_path / "plain.idx"
    assert main(["build", "--features", str(files / "feats.npz"), "--bits", "8", "--out", str(plain), "--quiet"]) == 0
    q = np.random.default_rng(1).standard_normal((5000, DIM)).astype(np.float32)
    q[4500] = 0  # a zero vector has no cosine: found by the chunk that holds it
    np.savez(tmp_path / "q.npz", embeddings=q)
    capsys.readouterr()
    assert main(["search", "--index", str(plain), "--queries", str(tmp_path / "q.npz"), "--quiet"]) == 2
    line = capsys.readouterr().err.strip()
    assert "q.npz" in line and "rows [4500]" in line and "404" not in line, line  # 404: its row in the chunk


def test_load_images_draws_a_bar_per_image(files, capsys):
    capsys.readouterr()
    x = load_images(_paths(files), OnnxEncoder(files / "fused.onnx").preprocessing, progress=True)
    assert x.shape == (12, 3, SIZE, SIZE)
    assert "12/12" in capsys.readouterr().err


def test_tuning_an_image_index_says_what_to_pass_instead(files):
    """tune() / search_images(recall=) search stored features, which an image model cannot take:
    one UnsupportedError naming what to pass (was "images must be 4-D ... (0, 128)")."""
    from hashindex.core.errors import UnsupportedError

    enc = OnnxEncoder(files / "fused.onnx")
    images = enc.load_images(_paths(files))
    index = HashIndex(DIM, encoder=enc)
    index.add_images(images)
    with pytest.raises(UnsupportedError, match="candidates="):
        index.tune(recall=0.9, k=2, progress=False)
    with pytest.raises(UnsupportedError, match="candidates="):
        index.search_images(images[:2], k=2, recall=0.9)
    assert (index.search_images(images[:2], k=1).ids[:, 0] == [0, 1]).all()  # the default search still runs
