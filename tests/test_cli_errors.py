"""Every CLI user error exits 2 with one line on stderr naming the problem, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from hashindex.cli import main
from hashindex.training.data import EmbeddingSet, save_embeddings


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    save_embeddings(root / "gallery.npz", EmbeddingSet(x, np.repeat(np.arange(50), 4)))
    save_embeddings(root / "empty.npz", EmbeddingSet(np.zeros((0, 16), np.float32)))
    (root / "junk.npz").write_bytes(b"not an npz")
    (root / "a_file").write_text("x")
    (root / "a_dir").mkdir()
    assert main(["build", "--features", str(root / "gallery.npz"), "--bits", "8", "--out", str(root / "idx"), "--quiet"]) == 0
    return root


def run(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("hashindex")
    return lines[0]


def search(files, *extra: str) -> list[str]:
    return ["search", "--index", str(files / "idx"), "--queries", str(files / "gallery.npz"), *extra]


@pytest.mark.parametrize("flag, value, words", [
    ("-k", "0", "positive integer"),
    ("-k", "-3", "positive integer"),
    ("-k", "ten", "positive integer"),
    ("-k", str(2**31), "too large"),
    ("--candidates", "0", "positive integer"),
    ("--radius", "-1", "non-negative"),
    ("--radius", str(2**40), "too large"),
])  # fmt: skip
def test_bad_search_numbers(files, capsys, flag, value, words):
    line = run(capsys, search(files, flag, value))
    assert flag in line and words in line


def test_bad_build_numbers(files, capsys):
    line = run(capsys, ["build", "--features", str(files / "gallery.npz"), "--fit-sample", "0", "--out", str(files / "x")])
    assert "--fit-sample" in line
    assert "--bits" in run(capsys, ["build", "--features", str(files / "gallery.npz"), "--bits", "-8", "--out", str(files / "x")])


def test_unknown_command_and_missing_argument(capsys):
    assert "invalid choice" in run(capsys, ["frobnicate"])
    assert "--queries" in run(capsys, ["search", "--index", "x"])


def test_zero_row_queries_file(files, capsys):
    line = run(capsys, ["search", "--index", str(files / "idx"), "--queries", str(files / "empty.npz")])
    assert "empty.npz" in line and "no rows" in line


def test_missing_and_unreadable_files(files, capsys):
    assert "absent.npz" in run(capsys, ["build", "--features", str(files / "absent.npz"), "--out", str(files / "x")])
    assert "junk.npz" in run(capsys, search(files)[:3] + ["--queries", str(files / "junk.npz")])
    assert "no_index" in run(capsys, ["search", "--index", str(files / "no_index"), "--queries", str(files / "gallery.npz")])
    assert "no_index" in run(capsys, ["info", str(files / "no_index")])


def test_out_of_the_wrong_kind(files, capsys):
    line = run(capsys, ["build", "--features", str(files / "gallery.npz"), "--bits", "8", "--out", str(files / "a_file")])
    assert "a_file" in line and "directory" in line
    line = run(capsys, search(files, "--out", str(files / "a_dir")))
    assert "a_dir" in line and "is a directory" in line
    line = run(capsys, ["export", "--hasher", "itq", "--bits", "8", "--data", str(files / "gallery.npz"),
                        "--out", str(files / "a_dir")])  # fmt: skip
    assert "a_dir" in line
    line = run(capsys, ["eval", "--hasher", "itq", "--bits", "8", "--data", str(files / "gallery.npz"),
                        "--out", str(files / "a_file")])  # fmt: skip
    assert "a_file" in line


def test_library_errors_are_one_line(files, capsys):
    # the hasher rejects more bits than the feature dimension
    line = run(capsys, ["build", "--features", str(files / "gallery.npz"), "--bits", "64", "--out", str(files / "y")])
    assert "bits" in line
    line = run(capsys, ["export", "--hasher", "itq", "--out", str(files / "m.onnx")])
    assert "--data" in line
