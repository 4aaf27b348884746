"""Every CLI user error exits 2 with one line on stderr naming the problem, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from hashindex.cli import main
from hashindex.training.data import EmbeddingSet, save_embeddings
from cli_helpers import run


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
    line = run(capsys, ["build", "--features", str(files / "gallery.npz"), "--hasher", "itq", "--bits", "64", "--out", str(files / "y")])
    assert "bits" in line
    line = run(capsys, ["export", "--hasher", "itq", "--out", str(files / "m.onnx")])
    assert "--data" in line


# -- issue 21: tracebacks (12), order of checks (13), file kinds (17), user words ------------------
def test_filter_ids_beyond_int64_is_one_line(files, capsys):
    (files / "huge_ids.txt").write_text("3 99999999999999999999\n")
    line = run(capsys, search(files, "--filter-ids", str(files / "huge_ids.txt")))
    assert "--filter-ids" in line and "99999999999999999999" in line and "64-bit" in line


@pytest.mark.parametrize("extra, words", [
    (["--plot", "out.xyz"], "'.xyz'"),
    (["--seed", "-1"], "--seed"),
    (["--plot", "{a_dir}"], "is a directory"),
    (["--plot", "{a_file}/curve.png"], "is not a directory"),
])  # fmt: skip
def test_calibrate_bad_plot_and_seed_are_refused_first(files, capsys, extra, words):
    extra = [e.format(a_dir=files / "a_dir", a_file=files / "a_file") for e in extra]
    line = run(capsys, ["calibrate", "--data", str(files / "gallery.npz"), *extra])
    assert words in line
    assert not list(files.glob("*.xyz"))


def test_calibrate_plot_names_the_file_it_wrote(files, capsys, tmp_path):
    capsys.readouterr()
    assert main(["calibrate", "--data", str(files / "gallery.npz"), "--plot", str(tmp_path / "figs" / "curve")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "figs" / "curve.png").is_file()  # a missing folder is made, as before
    assert f"wrote {tmp_path / 'figs' / 'curve.png'}" in out.splitlines()


def test_build_into_a_user_directory_is_refused_before_any_work(files, capsys, tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.txt").write_text("mine")
    capsys.readouterr()
    assert main(["build", "--features", str(files / "gallery.npz"), "--bits", "8", "--out", str(tmp_path / "thesis")]) == 2
    cap = capsys.readouterr()
    assert "thesis" in cap.err and "refusing" in cap.err
    assert "fitted" not in cap.out and "tuned" not in cap.out  # no fit, add or tune before the refusal
    assert (tmp_path / "thesis" / "chapter1.txt").read_text() == "mine"


def test_search_out_in_a_missing_folder_is_named_before_searching(files, capsys, tmp_path):
    target = tmp_path / "nodir" / "r.npz"
    capsys.readouterr()
    assert main(search(files, "--out", str(target), "--quiet")) == 2
    cap = capsys.readouterr()
    assert str(target) in cap.err and "does not exist" in cap.err and ".tmp" not in cap.err
    assert "queries in" not in cap.out  # refused before the search ran


def test_atomic_write_errors_name_the_target_not_its_temporary_file(tmp_path):
    from hashindex.core.io import atomic_write_bytes

    target = tmp_path / "nodir" / "r.npz"
    with pytest.raises(FileNotFoundError) as e:
        atomic_write_bytes(target, b"x")
    assert e.value.filename == str(target) and ".tmp" not in str(e.value)


def test_a_text_file_is_not_an_npz_of_features(files, capsys):
    (files / "notes.md").write_text("# not features\n")
    line = run(capsys, ["build", "--features", str(files / "notes.md"), "--out", str(files / "x")])
    assert "notes.md" in line and "not an .npz" in line
    assert "pickle" not in line and "unsafely" not in line
    np.savez(files / "objects.npz", embeddings=np.array([1, "a"], dtype=object))
    line = run(capsys, ["build", "--features", str(files / "objects.npz"), "--out", str(files / "x")])
    assert "objects.npz" in line and "unsafely" not in line and "allow_pickle" not in line


def test_library_errors_use_the_flags_the_user_typed(files, capsys):
    line = run(capsys, search(files, "--group-size", "2"))
    assert "--group-size needs --group-by label" in line and "group_by" not in line
    line = run(capsys, search(files, "--group-by", "label"))  # idx was built without --labels-key
    assert line.endswith("--group-by label: this index has no labels (build it with --labels-key)"), line
    line = run(capsys, search(files, "--min-score", "nan"))
    assert "--min-score" in line and "min_score" not in line


def test_user_words_only_translate_flags_the_command_has():
    from hashindex.cli.main import user_words

    flags = {"--group-by", "--nprobe", "--candidates", "--radius", "--recall", "--ranking"}
    assert user_words("nprobe=5 exceeds the partition stage's 4 lists", flags) == "--nprobe 5 exceeds the partition stage's 4 lists"
    assert user_words("ranking='hamming' is not supported", flags) == "--ranking hamming is not supported"
    assert user_words("takes radius= or candidates=", flags) == "takes --radius or --candidates"
    assert user_words("bits=8 disagrees with the hasher's 16 bits", flags) == "bits=8 disagrees with the hasher's 16 bits"
    path = "cannot read /data/group_by/x.npz or group_by.npz (group_by=\"label\")"
    assert user_words(path, flags) == "cannot read /data/group_by/x.npz or group_by.npz (--group-by label)"


def test_too_few_identities_for_p_names_the_flag_to_lower():
    from hashindex.cli.main import _flags_of, build_parser, user_words

    flags = _flags_of(build_parser(), "train")
    line = user_words("P x K sampling needs at least p=32 identities with >= 1 rows, found 18", flags)
    assert line == "P x K sampling needs at least --p 32 identities with >= 1 rows, found 18: lower --p (at most 18 here)"


def test_version(capsys):
    import hashindex

    capsys.readouterr()
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hashindex {hashindex.__version__}"
    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "hashindex.__version__"' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, flags=re.M)  # one place, not two
    changelog = (root / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(hashindex.__version__)}\b", changelog, flags=re.M), "CHANGELOG lacks this version"
