"""End-to-end image training (issue 14): a tiny run on a few LFW identities, its checkpoint,
export through the ONNX contract into OnnxEncoder and HashIndex, the teacher path, and bad input.

Small on purpose (seconds): 6 identities x 4 faces, a width-8 ResNet-18 working at 32x32,
2 epochs, 1 thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from hashindex.core.errors import HashIndexError  # noqa: E402
from hashindex.training.image_training import (  # noqa: E402
    ImageOptions,
    check_image_folder,
    identity_folds,
    train_images,
)
from hashindex.training.checkpoints import load_checkpoint  # noqa: E402
from hashindex.training.config import TrainConfig  # noqa: E402

LFW = Path(__file__).resolve().parents[2] / "shared/data/lfw"
FACES, TEACHER = LFW / "faces", LFW / "MobileFaceNet.onnx"
pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason=f"LFW development split not found at {LFW}")


def _copy_identities(dst: Path, n_ids: int = 6, per_id: int = 4) -> Path:
    """The first ``n_ids`` identities (sorted) with >= per_id faces, ``per_id`` faces each."""
    dst.mkdir(parents=True, exist_ok=True)
    taken = 0
    for d in sorted(FACES.iterdir()):
        files = sorted(d.glob("*.jpg"))
        if len(files) >= per_id:
            (dst / d.name).mkdir()
            for f in files[:per_id]:
                shutil.copy(f, dst / d.name / f.name)
            taken += 1
            if taken == n_ids:
                break
    return dst


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return _copy_identities(tmp_path_factory.mktemp("faces") / "faces")


def _config(**kw) -> TrainConfig:
    base = dict(bits=16, loss="csq", epochs=2, p=2, k=2, lr=1e-3, seed=0, device="cpu", val_fraction=0.0,
                patience=None, num_threads=1)
    return TrainConfig(**{**base, **kw})


def _options(**kw) -> ImageOptions:
    base = dict(width=8, work_size=32, folds=0, eval_batch_size=32, crop_scale=(0.9, 1.0))
    return ImageOptions(**{**base, **kw})


def test_identity_folds_are_disjoint_and_cover():
    labels = np.repeat(np.arange(7), 3)
    folds = identity_folds(labels, 3, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(labels.size))
    ids = [set(labels[f]) for f in folds]
    assert all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1:])
    with pytest.raises(HashIndexError):
        identity_folds(labels, 8)


def test_tiny_run_exports_serves_and_searches(faces, tmp_path):
    from hashindex.core.preprocess import load_face_images
    from hashindex.export.images import export_image_model_dir
    from hashindex.export.onnx import read_metadata
    from hashindex.serving.encoder import OnnxEncoder
    from hashindex.serving.index import HashIndex

    out = tmp_path / "model"
    result = train_images(faces, _config(), _options(), out_dir=out, progress=False)
    assert result.shipped == "learned" and len(result.history) == 3
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "model.pt"]
    assert not out.with_name("model.partial").exists()

    # checkpoint round trip: same weights, same codes
    model, config, metrics = load_checkpoint(out)
    assert model.kind == "image_hash_net" and config.bits == 16 and metrics["shipped"] == "learned"
    paths, labels, _ = check_image_folder(faces)
    x = load_face_images(paths)
    with torch.no_grad():
        h = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(h, result.model(torch.from_numpy(x)).numpy(), atol=1e-6)

    onnx_path = tmp_path / "model.onnx"
    export_image_model_dir(out, onnx_path)
    meta = read_metadata(onnx_path)
    assert meta.bits == 16 and meta.input.name == "images" and meta.input.sample_shape == (3, 112, 112)
    enc = OnnxEncoder(onnx_path, providers="cpu", threads=1)
    assert enc.has_features and enc.dim == model.in_dim
    np.testing.assert_allclose(enc.run(x).embedding, h, atol=1e-3)

    index = HashIndex(enc.dim, encoder=enc)
    ids = index.add_images(enc.load_images(paths))
    res = index.search_images(enc.load_images(paths[:4]), k=1, candidates=len(paths))
    np.testing.assert_array_equal(res.ids[:, 0], ids[:4])  # each image finds itself after reranking


def test_resume_continues_an_interrupted_run(faces, tmp_path):
    out = tmp_path / "model"
    full = train_images(faces, _config(epochs=2), _options(), out_dir=out, progress=False)
    # an interrupted run: epoch 1 finished, its resume state left in <out>.partial
    import hashindex.training.image_training as it

    calls = {"n": 0}
    real = it._save_resume

    def stop_after_first(*a, **kw):
        real(*a, **kw)
        calls["n"] += 1
        raise KeyboardInterrupt

    it._save_resume = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            train_images(faces, _config(epochs=2), _options(), out_dir=tmp_path / "again", progress=False)
    finally:
        it._save_resume = real
    assert (tmp_path / "again.partial" / "resume.pt").exists() and not (tmp_path / "again").exists()
    resumed = train_images(faces, _config(epochs=2), _options(), out_dir=tmp_path / "again", progress=False, resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not TEACHER.exists(), reason="MobileFaceNet.onnx not found")
def test_teacher_distillation_and_start_fallback(faces, tmp_path):
    """With the MobileFaceNet teacher (112x112 BGR (x - 127.5) / 127.5, README): its features
    are the distillation target and the exported features; 2 folds judge the student against
    teacher + ITQ, and a 2-epoch student from scratch does not beat it: the start ships."""
    from hashindex.core.preprocess import load_face_images
    from hashindex.export.images import export_image_model, export_image_model_dir
    from hashindex.core.onnx_contract import TrainingInfo
    from hashindex.serving.encoder import OnnxEncoder
    from hashindex.training.teacher import OnnxTeacher

    paths, _, _ = check_image_folder(faces)
    teacher = OnnxTeacher(TEACHER)
    assert teacher.dim == 128
    t = teacher.features(paths)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)

    out = tmp_path / "model"
    result = train_images(faces, _config(bits=8), _options(teacher=str(TEACHER), folds=2), out_dir=out, progress=False,
                          teacher_features=t)
    assert len(result.folds) == 2 and all("p95_candidates" in f["learned"] for f in result.folds)
    if result.shipped == "start":
        assert result.model.kind == "hash_head" and "start" in result.note
    onnx_path = tmp_path / "model.onnx"
    export_image_model_dir(out, onnx_path)
    enc = OnnxEncoder(onnx_path, providers="cpu", threads=1)
    got = enc.run(load_face_images(paths[:6]))
    np.testing.assert_allclose(got.features, t[:6], atol=1e-4)  # the teacher's features, fused

    # a learned student with a teacher: student codes, teacher features, one graph
    student = train_images(faces, _config(epochs=1), _options(teacher=str(TEACHER)), progress=False, teacher_features=t)
    assert student.shipped == "learned"
    fused = tmp_path / "student.onnx"
    meta = export_image_model(student.model, fused, TrainingInfo("csq", "faces"), teacher=TEACHER)
    assert meta.backbone.name == "MobileFaceNet.onnx"
    out2 = OnnxEncoder(fused, providers="cpu", threads=1).run(load_face_images(paths[:6]))
    np.testing.assert_allclose(out2.features, t[:6], atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(out2.embedding, student.model(torch.from_numpy(load_face_images(paths[:6]))).numpy(), atol=1e-3)


def test_teacher_whose_output_is_not_n_by_d(faces, tmp_path):
    onnx = pytest.importorskip("onnx")
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Identity", ["x"], ["y"])], "bad_teacher",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 112, 112])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 112, 112])],
    )
    bad = tmp_path / "bad_teacher.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), bad)
    with pytest.raises(HashIndexError, match="bad_teacher.onnx.*\\[N, D\\]"):
        train_images(faces, _config(), _options(teacher=str(bad)), out_dir=tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(HashIndexError, match="junk.onnx"):
        train_images(faces, _config(), _options(teacher=str(junk)), out_dir=tmp_path / "m", progress=False)


def test_bad_folders_name_the_problem_and_leave_nothing(faces, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(next(faces.iterdir()), one / "only_person")
    with pytest.raises(HashIndexError, match="identities"):
        train_images(one, _config(), _options(), out_dir=tmp_path / "m1", progress=False)

    singles = tmp_path / "singles"
    for d in list(faces.iterdir())[:3]:
        (singles / d.name).mkdir(parents=True)
        f = next(d.iterdir())
        shutil.copy(f, singles / d.name / f.name)
    with pytest.raises(HashIndexError, match=">= 2 images"):
        train_images(singles, _config(), _options(), out_dir=tmp_path / "m2", progress=False)

    bad = tmp_path / "bad"
    shutil.copytree(faces, bad)
    ident = sorted(bad.iterdir())[0]
    (ident / "notes.txt").write_text("not a face")
    with pytest.raises(HashIndexError, match="notes.txt"):
        train_images(bad, _config(), _options(), out_dir=tmp_path / "m3", progress=False)
    (ident / "notes.txt").unlink()
    (ident / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(HashIndexError, match="broken.jpg"):
        train_images(bad, _config(), _options(), out_dir=tmp_path / "m4", progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("m")]


def test_weights_that_do_not_match_the_backbone(faces, tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    with pytest.raises(HashIndexError, match="wrong.pt"):
        train_images(faces, _config(), _options(weights=str(wrong)), out_dir=tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_start_from_weights_and_freeze(faces, tmp_path):
    from hashindex.training.models import ImageHashNet

    src = ImageHashNet.create(16, width=8)
    weights = tmp_path / "backbone.pt"
    torch.save({k: v for k, v in src.backbone.state_dict().items()}, weights)
    result = train_images(faces, _config(epochs=1), _options(weights=str(weights), freeze_epochs=1),
                          progress=False)
    trained = result.model.backbone.state_dict()
    for k, v in src.backbone.state_dict().items():  # frozen for its only epoch: backbone unchanged
        assert torch.equal(trained[k], v), k
    assert result.history[1]["frozen"] is True


def test_recipe_judged_on_held_out_folds_falls_back_to_its_itq_start(tmp_path):
    """The `learned` recipe is shipped only when it beats ITQ in every held-out identity fold;
    otherwise the ITQ start ships, and its codes are ITQ's bit for bit."""
    from hashindex.core.codes import binarize
    from hashindex.serving.hashers import make_hasher
    from hashindex.training.judge import fit_recipe_judged
    from hashindex.training.loop import predict

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    y = np.repeat(np.arange(40), 5)
    x = centres[y] + 0.8 * rng.normal(size=(200, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    out = tmp_path / "head"
    res = fit_recipe_judged("learned", x, y, 16, folds=3, seed=0, out_dir=out, epochs=1, num_threads=1, p=8)
    assert len(res.folds) == 3 and all({"learned", "start", "ratio"} <= set(f) for f in res.folds)
    assert res.shipped == ("learned" if all(f["ratio"] < 1 for f in res.folds) else "start")
    model, _, metrics = load_checkpoint(out)
    assert metrics["shipped"] == res.shipped and len(metrics["folds"]) == 3
    if res.shipped == "start":
        itq = make_hasher("itq", 32, 16).fit(x)
        np.testing.assert_array_equal(binarize(predict(model, x)), itq.encode(x))


def test_cli_train_eval_export_images(faces, tmp_path, capsys):
    """`hashindex train --images`, `eval --images`, `export --head` on an image model directory."""
    from hashindex.cli import main
    from hashindex.serving.encoder import OnnxEncoder

    out = tmp_path / "cli_model"
    argv = ["train", "--images", str(faces), "--out", str(out), "--bits", "16", "--loss", "csq", "--epochs", "1",
            "--p", "2", "--k", "2", "--width", "8", "--work-size", "32", "--folds", "0", "--val-fraction", "0",
            "--threads", "1", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    assert "shipping the learned model" in capsys.readouterr().out
    assert main(["eval", "--model", str(out), "--images", str(faces), "--radii", "0,1,2"]) == 0
    report = capsys.readouterr().out
    assert "Pair distances (Table 1)" in report and "Recall vs candidates" in report
    onnx_path = tmp_path / "cli_model.onnx"
    assert main(["export", "--head", str(out), "--out", str(onnx_path)]) == 0
    enc = OnnxEncoder(onnx_path, providers="cpu")
    assert enc.kind == "images" and enc.bits == 16 and enc.has_features


def test_cli_image_errors_exit_2_naming_the_file(faces, tmp_path, capsys):
    from hashindex.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(faces, bad)
    (sorted(bad.iterdir())[0] / "broken.png").write_bytes(b"garbage")
    base = ["--bits", "16", "--epochs", "1", "--p", "2", "--k", "2", "--width", "8", "--quiet", "--folds", "0"]
    capsys.readouterr()
    assert main(["train", "--images", str(bad), "--out", str(tmp_path / "m"), *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0]
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_folds_too_small_for_p_x_k_leave_nothing(faces, tmp_path):
    """6 identities pass the folder check for p=4, but 3 folds leave 4 training identities, of
    which the epoch-selection split keeps fewer than 4: a clear error, no directory."""
    with pytest.raises(HashIndexError, match="p=4"):
        train_images(faces, _config(p=4, val_fraction=0.3), _options(folds=3), out_dir=tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_cli_images_chooses_p_from_the_folder(faces, tmp_path, capsys):
    """6 identities and no --p: P comes from the data (the default 32 cannot be met)."""
    from hashindex.cli import main

    out = tmp_path / "m"
    argv = ["train", "--images", str(faces), "--out", str(out), "--bits", "16", "--loss", "csq", "--epochs", "1",
            "--k", "2", "--width", "8", "--work-size", "32", "--folds", "0", "--val-fraction", "0", "--threads", "1",
            "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    assert load_checkpoint(out)[1].p == 6


def test_p_too_large_for_the_folds_names_the_largest_p(faces, tmp_path):
    """3 folds of 6 identities with a 0.3 validation split leave 3 training identities: p=4 is
    refused before anything trains, naming p=3 as the largest that works."""
    with pytest.raises(HashIndexError, match=r"p=4.*--p 3"):
        train_images(faces, _config(p=4, val_fraction=0.3), _options(folds=3), out_dir=tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()
