"""``hashindex build --features big.npy``: a memory-mapped .npy added a chunk at a time, never
read whole; the index equals one built in memory from the same rows; bad files exit 2 naming them."""

from __future__ import annotations

import numpy as np
import pytest

import hashindex.serving.front as front
from hashindex.cli import main
from hashindex.serving.hashers import make_hasher
from hashindex.serving.index import HashIndex
from hashindex.training.data import EmbeddingSet, save_embeddings
from cli_helpers import run

N, D, BITS, SEED, FIT = 1_000, 16, 8, 3, 400


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_npy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    labels = np.arange(N) % 50
    np.save(root / "big.npy", x)
    np.save(root / "labels.npy", labels)
    return root, x, labels


def build(root, *extra: str) -> list[str]:
    return ["build", "--bits", str(BITS), "--seed", str(SEED), "--fit-sample", str(FIT), "--no-tune", "--quiet", *extra]


def in_memory(x: np.ndarray, labels: np.ndarray | None) -> HashIndex:
    """What ``build`` does, from rows already in memory."""
    index = HashIndex(D, make_hasher("itq", D, BITS), metric="cosine")
    sample = np.random.default_rng(SEED).choice(len(x), size=min(FIT, len(x)), replace=False)
    index.fit(x[np.sort(sample)])
    index.add(x, np.arange(len(x), dtype=np.int64), labels)
    return index


def test_npy_build_equals_the_in_memory_index(rows, tmp_path, monkeypatch):
    root, x, labels = rows
    monkeypatch.setattr(front, "ADD_CHUNK_ROWS", 128)  # the chunked add, on a small file
    assert main(build(root, "--features", str(root / "big.npy"), "--labels", str(root / "labels.npy"),
                      "--out", str(tmp_path / "idx"))) == 0  # fmt: skip
    built = HashIndex.load(tmp_path / "idx")
    ref = in_memory(x, labels)
    np.testing.assert_array_equal(built.ids, ref.ids)
    np.testing.assert_array_equal(built.codes, ref.codes)
    np.testing.assert_array_equal(built.get_labels(ref.ids), labels)
    np.testing.assert_array_equal(built.get_features(ref.ids), ref.get_features(ref.ids))  # unit rows (cosine)
    queries = x[:50] + 0.01 * np.random.default_rng(1).normal(size=(50, D)).astype(np.float32)
    a, b = built.search(queries, k=5), ref.search(queries, k=5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_npz_and_npy_of_the_same_rows_build_the_same_index(rows, tmp_path):
    root, x, labels = rows
    save_embeddings(tmp_path / "same.npz", EmbeddingSet(x, labels))
    assert main(build(root, "--features", str(tmp_path / "same.npz"), "--labels-key", "labels",
                      "--out", str(tmp_path / "from_npz"))) == 0  # fmt: skip
    assert main(build(root, "--features", str(root / "big.npy"), "--labels", str(root / "labels.npy"),
                      "--out", str(tmp_path / "from_npy"))) == 0  # fmt: skip
    a, b = HashIndex.load(tmp_path / "from_npz"), HashIndex.load(tmp_path / "from_npy")
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.get_labels(a.ids), b.get_labels(b.ids))


def test_the_npy_is_memory_mapped_and_added_as_the_map(rows, tmp_path, monkeypatch):
    root, x, _ = rows
    loads, added, fitted = [], [], []
    real_load, real_add, real_fit = np.load, HashIndex.add, HashIndex.fit

    def load(path, *args, **kw):
        loads.append((str(path), kw.get("mmap_mode"), kw.get("allow_pickle")))
        return real_load(path, *args, **kw)

    def add(self, features, *args, **kw):
        added.append((type(features), features.shape))
        return real_add(self, features, *args, **kw)

    def fit(self, features):
        fitted.append(features.shape)
        return real_fit(self, features)

    monkeypatch.setattr(np, "load", load)
    monkeypatch.setattr(HashIndex, "add", add)
    monkeypatch.setattr(HashIndex, "fit", fit)
    assert main(build(root, "--features", str(root / "big.npy"), "--out", str(tmp_path / "idx"))) == 0
    assert [c for c in loads if c[0] == str(root / "big.npy")] == [(str(root / "big.npy"), "r", False)]  # mapped once
    assert added == [(np.memmap, (N, D))]  # one add of the whole map: add() reads it a chunk at a time
    assert fitted == [(FIT, D)]  # fit sees only the sampled rows


def test_a_float64_npy_builds(rows, tmp_path):
    root, x, _ = rows
    np.save(tmp_path / "wide.npy", x.astype(np.float64))
    assert main(build(root, "--features", str(tmp_path / "wide.npy"), "--out", str(tmp_path / "idx"))) == 0
    np.testing.assert_array_equal(HashIndex.load(tmp_path / "idx").codes, in_memory(x, None).codes)


def bad_files(root):
    x = np.random.default_rng(0).normal(size=(40, D)).astype(np.float32)
    np.save(root / "one_d.npy", x[0])
    np.save(root / "three_d.npy", x.reshape(40, 4, 4))
    np.save(root / "objects.npy", np.array([[1.0, "a"]], dtype=object), allow_pickle=True)
    np.save(root / "ints.npy", (x * 10).astype(np.int32))
    np.save(root / "no_rows.npy", np.zeros((0, D), np.float32))
    np.save(root / "no_columns.npy", np.zeros((5, 0), np.float32))
    np.save(root / "records.npy", np.zeros(5, dtype=[("a", "f4"), ("b", "f4")]))
    np.save(root / "truncated.npy", x)
    data = (root / "truncated.npy").read_bytes()
    (root / "truncated.npy").write_bytes(data[: len(data) // 2])
    nan = x.copy()
    nan[7, 3] = np.nan
    np.save(root / "nan.npy", nan)


@pytest.mark.parametrize("name, words", [
    ("one_d.npy", "2-D"),
    ("three_d.npy", "2-D"),
    ("objects.npy", "object (pickled)"),
    ("ints.npy", "float32"),
    ("no_rows.npy", "no rows"),
    ("no_columns.npy", "no columns"),
    ("records.npy", "dtype"),
    ("truncated.npy", "truncated"),
    ("nan.npy", "NaN"),
])  # fmt: skip
def test_a_bad_npy_exits_2_naming_the_file(tmp_path, capsys, name, words):
    bad_files(tmp_path)
    line = run(capsys, build(tmp_path, "--features", str(tmp_path / name), "--out", str(tmp_path / "idx")))
    assert line.startswith(f"hashindex build: error: {tmp_path / name}: "), line
    assert words in line, line
    assert not (tmp_path / "idx").exists()


def test_bits_beyond_the_npy_dimension_name_the_file(rows, tmp_path, capsys):
    root, _, _ = rows
    line = run(capsys, ["build", "--features", str(root / "big.npy"), "--hasher", "itq", "--bits", "64", "--out", str(tmp_path / "x")])
    assert str(root / "big.npy") in line and "64" in line


def test_labels_go_with_their_kind_of_file(rows, tmp_path, capsys):
    root, x, labels = rows
    npy, npz = str(root / "big.npy"), str(tmp_path / "g.npz")
    save_embeddings(npz, EmbeddingSet(x, labels))
    line = run(capsys, build(root, "--features", npy, "--labels-key", "labels", "--out", str(tmp_path / "i")))
    assert "--labels FILE.npy" in line and npy in line
    line = run(capsys, build(root, "--features", npz, "--labels", str(root / "labels.npy"), "--out", str(tmp_path / "i")))
    assert "--labels-key labels" in line and npz in line
    np.save(tmp_path / "short.npy", labels[:-1])
    line = run(capsys, build(root, "--features", npy, "--labels", str(tmp_path / "short.npy"), "--out", str(tmp_path / "i")))
    assert "short.npy" in line and f"{N - 1:,} labels" in line
    np.save(tmp_path / "negative.npy", labels - 1)
    line = run(capsys, build(root, "--features", npy, "--labels", str(tmp_path / "negative.npy"), "--out", str(tmp_path / "i")))
    assert "negative.npy" in line and "non-negative" in line
    (tmp_path / "labels.txt").write_text("1 2 3")
    line = run(capsys, build(root, "--features", npy, "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "i")))
    assert "labels.txt" in line and ".npy" in line
    assert not (tmp_path / "i").exists()


def test_string_labels_in_a_npy_are_mapped(rows, tmp_path):
    root, x, labels = rows
    np.save(tmp_path / "names.npy", np.array([f"person{v:03d}" for v in labels]))
    assert main(build(root, "--features", str(root / "big.npy"), "--labels", str(tmp_path / "names.npy"),
                      "--out", str(tmp_path / "idx"))) == 0  # fmt: skip
    index = HashIndex.load(tmp_path / "idx")
    np.testing.assert_array_equal(index.get_labels(index.ids), labels)  # sorted names map to 0..49 in order
