"""CLI identity options: build --labels-key, search --group-by / --min-score / --filter-labels,
calibrate; user errors exit 2 with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashindex import HashIndex
from hashindex.cli import main
from hashindex.training.data import EmbeddingSet, save_embeddings


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_identity")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 16))
    labels = np.repeat(np.arange(60), 5)
    x = (centres[labels] + 0.3 * rng.normal(size=(300, 16))).astype(np.float32)
    save_embeddings(root / "people.npz", EmbeddingSet(x, labels))
    np.savez(root / "other_key.npz", embeddings=x, person=labels * 10, bad=np.ones(300, np.float32))
    (root / "allow.txt").write_text("3, 5\n7\n")
    np.save(root / "allow.npy", np.array([3, 5, 7]))
    args = ["build", "--features", str(root / "people.npz"), "--bits", "16", "--quiet"]
    assert main([*args, "--labels-key", "labels", "--out", str(root / "idx")]) == 0
    assert main([*args, "--out", str(root / "plain")]) == 0
    return root


def test_build_with_labels_and_search_by_person(files, tmp_path):
    index = HashIndex.load(files / "idx")
    assert index.has_labels and (index.get_labels(np.arange(300)) == np.repeat(np.arange(60), 5)).all()
    out = tmp_path / "res.npz"
    argv = ["search", "--index", str(files / "idx"), "--queries", str(files / "people.npz"), "-k", "4",
            "--group-by", "label", "--group-size", "2", "--filter-labels", str(files / "allow.txt"),
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    res = np.load(out)
    assert res["ids"].shape == (300, 8) and set(np.unique(res["labels"])) <= {-1, 3, 5, 7}
    assert (res["labels"][:, [0, 2, 4]] >= 0).all() and (res["labels"][:, 6:] == -1).all()  # 3 people, 4 asked
    want = index.search(np.load(files / "people.npz")["embeddings"], k=4, group_by="label", group_size=2,
                        filter_labels=np.load(files / "allow.npy"))  # fmt: skip
    np.testing.assert_array_equal(res["ids"], want.ids)
    assert main([*argv[:-3], "--filter-labels", str(files / "allow.npy"), "--min-score", "0.99", "--out", str(out)]) == 0
    assert (np.load(out)["scores"][np.load(out)["ids"] >= 0] >= 0.99).all()


def test_build_labels_from_another_key(files, tmp_path):
    out = tmp_path / "idx2"
    assert main(["build", "--features", str(files / "other_key.npz"), "--bits", "16", "--labels-key", "person",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    assert (HashIndex.load(out).get_labels([0, 5, 299]) == [0, 10, 590]).all()


def test_calibrate(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "cal.json", tmp_path / "curve.png"
    assert main(["calibrate", "--data", str(files / "people.npz"), "--far", "1e-3", "--out", str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    assert report["far"] <= 1e-3 and 0 < report["tar"] <= 1 and report["n_genuine"] == 60 * 10
    assert png.read_bytes()[:4] == b"\x89PNG" and "--min-score" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["build", "--features", "{d}/other_key.npz", "--labels-key", "nope", "--out", "{d}/x"], "nope"),
    (["build", "--features", "{d}/other_key.npz", "--labels-key", "bad", "--out", "{d}/x"], "integers"),
    (["search", "--index", "{d}/plain", "--queries", "{d}/people.npz", "--group-by", "label"], "no labels"),
    (["search", "--index", "{d}/plain", "--queries", "{d}/people.npz", "--filter-labels", "{d}/allow.txt"], "no labels"),
    (["search", "--index", "{d}/idx", "--queries", "{d}/people.npz", "--min-score", "nan"], "finite"),
    (["search", "--index", "{d}/idx", "--queries", "{d}/people.npz", "--group-by", "id"], "invalid choice"),
    (["search", "--index", "{d}/idx", "--queries", "{d}/people.npz", "--filter-labels", "{d}/people.npz"], "integers"),
    (["search", "--index", "{d}/idx", "--queries", "{d}/people.npz", "--group-size", "2"], "--group-by label"),  # the flag typed, not the API word
    (["calibrate", "--data", "{d}/people.npz", "--far", "2"], "far"),
    (["calibrate", "--data", "{d}/other_key.npz"], "labels"),
])  # fmt: skip
def test_user_errors_exit_2_with_one_line(files, capsys, argv, words):
    capsys.readouterr()
    assert main([a.format(d=files) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and words in err[0], err
