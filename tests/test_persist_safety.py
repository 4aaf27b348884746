"""Index directories: save replaces only what it owns, loads are snapshot-consistent, manifests
are schema-checked (issue 12, items 1, 2, 8, 11)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hashindex.core.errors import HashIndexError, IndexFormatError
from hashindex.serving import persist
from hashindex.serving.hashers import LinearHasher
from hashindex.serving.index import HashIndex

DIM, BITS = 16, 16


def _index(n: int = 50, seed: int = 0) -> HashIndex:
    rng = np.random.default_rng(seed)
    hasher = LinearHasher("linear", BITS, DIM, rng.standard_normal((BITS, DIM)).astype(np.float32), np.zeros(BITS, np.float32))
    index = HashIndex(DIM, hasher, metric="ip", backend="flat")
    index.add(rng.standard_normal((n, DIM)).astype(np.float32), ids=rng.permutation(10 * n)[:n])
    return index


def _tree(root: Path) -> dict[str, bytes | str]:
    """Everything under root: file bytes, symlink targets, directories."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "<dir>"
        else:
            out[rel] = p.read_bytes()
    return out


# -- item 1: save replaces only what it owns ----------------------------------------------------


def test_save_refuses_a_users_directory_and_leaves_it_untouched(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "thesis.tex").write_text("years of work")
    (docs / "sub" / "notes.md").write_text("notes")
    before = _tree(tmp_path)
    with pytest.raises(IndexFormatError, match="non-empty directory"):
        _index().save(docs)
    assert _tree(tmp_path) == before  # nothing replaced, no temporary sibling left


def test_save_to_the_empty_path_does_not_touch_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    before = _tree(tmp_path)
    for target in ("", ".", Path(".")):
        with pytest.raises(IndexFormatError):
            _index().save(target)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("what", ["file", "symlink-to-dir", "symlink-to-file", "symlink-to-index", "dangling-symlink"])
def test_save_refuses_files_and_symlinks(what, tmp_path):
    target = tmp_path / "target"
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (real_dir / "data.bin").write_bytes(b"\x00\x01")
    if what == "file":
        target.write_text("a user's file")
    elif what == "symlink-to-dir":
        target.symlink_to(real_dir)
    elif what == "symlink-to-file":
        target.symlink_to(real_dir / "data.bin")
    elif what == "symlink-to-index":
        _index(seed=1).save(tmp_path / "an-index")
        target.symlink_to(tmp_path / "an-index")
    else:
        target.symlink_to(tmp_path / "nowhere")
    before = _tree(tmp_path)
    with pytest.raises(IndexFormatError, match="symlink|not a directory"):
        _index().save(target)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "spoil",
    [
        lambda root: (root / "user-notes.txt").write_text("mine"),  # a file its manifest does not list
        lambda root: (root / "subdir").mkdir(),
        lambda root: (root / "manifest.json").write_text(json.dumps({"kind": "someone-else"})),
        lambda root: (root / "manifest.json").write_text("not json"),
    ],
    ids=["extra file", "extra dir", "foreign manifest", "unreadable manifest"],
)
def test_save_refuses_a_directory_that_is_not_wholly_an_index(spoil, tmp_path):
    root = tmp_path / "ix"
    _index(seed=1).save(root)
    spoil(root)
    before = _tree(tmp_path)
    with pytest.raises(IndexFormatError, match="refusing"):
        _index().save(root)
    assert _tree(tmp_path) == before


def test_save_replaces_an_index_an_empty_directory_or_nothing(tmp_path):
    a, b = _index(seed=0), _index(n=70, seed=1)
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "new" / "nested", tmp_path / "empty"):
        a.save(target)
        b.save(target)  # over an index
        loaded = HashIndex.load(target)
        np.testing.assert_array_equal(loaded.ids, b.ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]


def test_refused_save_raises_a_hashindex_error_not_an_os_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(HashIndexError):
        _index().save(tmp_path / "f")


# -- item 11: a backup left by a crash is removed by the next successful save -------------------


@pytest.mark.parametrize("target_exists", [False, True])
def test_next_save_removes_a_stale_previous_backup(target_exists, tmp_path):
    a, b = _index(seed=0), _index(n=70, seed=1)
    target = tmp_path / "ix"
    backup = tmp_path / ".ix.previous"
    a.save(backup)  # what a crash between the fallback renames leaves (target missing) ...
    if target_exists:
        a.save(target)  # ... or a crash after both renames, before the backup was removed
    b.save(target)
    assert not backup.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    np.testing.assert_array_equal(HashIndex.load(target).ids, b.ids)


def test_a_users_file_named_like_a_backup_is_left_alone(tmp_path):
    (tmp_path / ".ix.previous").mkdir()
    (tmp_path / ".ix.previous" / "mine.txt").write_text("not a backup")
    _index().save(tmp_path / "ix")
    assert (tmp_path / ".ix.previous" / "mine.txt").read_text() == "not a backup"


# -- item 8: manifests are schema-checked before use ------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved") / "ix"
    _index(n=40).save(root)
    return root


def _set(key, value):
    def mutate(m):
        m[key] = value

    return mutate


def _set_in(outer, key, value):
    def mutate(m):
        m[outer][key] = value

    return mutate


BAD_MANIFESTS = {
    "bits as string": _set("bits", "16"),
    "bits not a multiple of 8": _set("bits", 12),
    "bits as bool": _set("bits", True),
    "bits huge": _set("bits", 10**30),
    "dim zero": _set("dim", 0),
    "dim float": _set("dim", 16.0),
    "count negative": _set("count", -1),
    "count as list": _set("count", [40]),
    "next_id negative": _set("next_id", -5),
    "next_id beyond int64": _set("next_id", 2**63),
    "metric unknown": _set("metric", "hamming"),
    "metric as number": _set("metric", 3),
    "feature_dtype object": _set("feature_dtype", "object"),
    "backend as dict": _set("backend", {"a": 1}),
    "hasher as list": _set("hasher", ["linear"]),
    "hasher type unknown": _set_in("hasher", "type", "pickle"),
    "hasher type as list": _set_in("hasher", "type", ["linear"]),
    "hasher bits differ": _set_in("hasher", "bits", 24),
    "hasher dim as string": _set_in("hasher", "dim", "16"),
    "model_sha256 on a linear index": _set("model_sha256", "0" * 64),
    "files as list": _set("files", ["codes.npy"]),
    "file entry as string": _set_in("files", "codes.npy", "abc"),
    "file bytes as string": lambda m: m["files"]["ids.npy"].update(bytes="12"),
    "file sha256 not hex": lambda m: m["files"]["ids.npy"].update(sha256="zz" * 32),
    "codes.npy not listed": lambda m: m["files"].pop("codes.npy"),
    "hasher.npz not listed": lambda m: m["files"].pop("hasher.npz"),
    "extra file listed": lambda m: m["files"].update({"../escape": {"sha256": "0" * 64, "bytes": 0}}),
    "required field missing": lambda m: m.pop("dim"),
    "format as bool": _set("format", True),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_hostile_but_checksummed_manifests_are_refused(case, saved, tmp_path, rewrite_manifest):
    root = shutil.copytree(saved, tmp_path / "ix")
    rewrite_manifest(root, BAD_MANIFESTS[case])
    with pytest.raises(IndexFormatError):
        HashIndex.load(root)
    with pytest.raises(IndexFormatError):
        persist.read_manifest(root)


def test_unlisted_codes_file_cannot_be_swapped_in(saved, tmp_path, rewrite_manifest):
    """The reported attack: drop codes.npy from the file list (re-checksummed) and replace it."""
    root = shutil.copytree(saved, tmp_path / "ix")
    codes = np.load(root / "codes.npy")
    np.save(root / "codes.npy", codes ^ 0xFF)
    rewrite_manifest(root, lambda m: m["files"].pop("codes.npy"))
    with pytest.raises(IndexFormatError, match="codes.npy"):
        HashIndex.load(root, verify=True)


@pytest.mark.parametrize("bad_id", [-1, -(2**63), 2**63 - 1])
def test_ids_outside_the_id_range_are_refused(bad_id, saved, tmp_path, rewrite_manifest):
    root = shutil.copytree(saved, tmp_path / "ix")
    ids = np.load(root / "ids.npy")
    ids[3] = bad_id
    np.save(root / "ids.npy", ids)
    rewrite_manifest(root, lambda m: None)  # checksums match the hostile file
    with pytest.raises(IndexFormatError, match="ids outside"):
        HashIndex.load(root)


def test_repeated_ids_are_refused(saved, tmp_path, rewrite_manifest):
    root = shutil.copytree(saved, tmp_path / "ix")
    ids = np.load(root / "ids.npy")
    ids[1] = ids[0]
    np.save(root / "ids.npy", ids)
    rewrite_manifest(root, lambda m: None)
    with pytest.raises(IndexFormatError, match="repeated"):
        HashIndex.load(root)


@pytest.mark.parametrize("depth", [50, 5_000, 200_000])
def test_deeply_nested_manifest_is_refused_cleanly(depth, saved, tmp_path):
    root = shutil.copytree(saved, tmp_path / "ix")
    (root / "manifest.json").write_text('{"kind": "hashindex.index", "x": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(IndexFormatError):
        HashIndex.load(root)


def test_oversized_manifest_is_refused_without_parsing(saved, tmp_path, rewrite_manifest):
    root = shutil.copytree(saved, tmp_path / "ix")
    rewrite_manifest(root, _set("padding", "x" * (persist.MAX_MANIFEST_BYTES + 10)))
    with pytest.raises(IndexFormatError, match="larger"):
        HashIndex.load(root)


# -- item 2: snapshot-consistent loads while another process saves ------------------------------

SAVER = Path(__file__).resolve().parent / "alternating_saver.py"
WRITER_ARGS = ["--seed", "200", "--n", "6000", "--dim", "32", "--ready-after", "1"]


def _which_version(ids, codes, features, versions) -> list[int]:
    return [
        v
        for v, ref in enumerate(versions)
        if np.array_equal(ids, ref.ids) and np.array_equal(codes, ref.codes) and np.array_equal(features, ref.get_features(ref.ids))
    ]


def _concurrent_loads(tmp_path, load, min_loads=60, min_each=5, max_loads=3000):
    """Load ``min_loads`` times (and until each version was seen ``min_each`` times) while a writer
    process saves the two versions alternately; return (versions seen, failures)."""
    import runpy

    build = runpy.run_path(str(SAVER))["build"]
    versions = [build(v, seed=200, n=6000, dim=32) for v in (0, 1)]
    target, stop = tmp_path / "ix", tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, str(SAVER), str(target), "--stop", str(stop), *WRITER_ARGS], stdout=subprocess.PIPE, text=True
    )
    seen, failures = [], []
    try:
        assert proc.stdout.readline().strip() == "saved", "writer died before its second save"
        while len(seen) + len(failures) < max_loads and (
            len(seen) + len(failures) < min_loads or min(seen.count(0), seen.count(1)) < min_each
        ):
            try:
                ids, codes, features = load(target)
            except IndexFormatError as e:
                failures.append(str(e))
                continue
            match = _which_version(ids, codes, features, versions)
            if len(match) != 1:
                failures.append(f"load {len(seen) + len(failures)}: {len(ids)} ids, matches no single version")
            else:
                seen.append(match[0])
    finally:
        stop.touch()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == 0
    return seen, failures


def _load_arrays_via_open_index_dir(target):
    with persist.open_index_dir(target, verify=True) as d:
        m = d.manifest
        n, nb = m["count"], m["bits"] // 8
        return (
            d.load_array("ids.npy", np.int64, (n,)),
            d.load_array("codes.npy", np.uint8, (n, nb)),
            d.load_array("features.npy", np.float32, (n, m["dim"]), mmap=True),
        )


def test_open_index_dir_sees_one_whole_version_while_another_process_saves(tmp_path):
    seen, failures = _concurrent_loads(tmp_path, _load_arrays_via_open_index_dir)
    assert not failures, f"{len(failures)} of {len(seen) + len(failures)} loads failed or mixed versions: {failures[:3]}"
    assert seen.count(0) >= 5 and seen.count(1) >= 5


@pytest.mark.parametrize("mmap", [True, False])
def test_hashindex_load_sees_one_whole_version_while_another_process_saves(mmap, tmp_path):
    def load(target):
        ix = HashIndex.load(target, mmap=mmap, verify=True)
        return ix.ids, np.array(ix.codes), ix.get_features(ix.ids)

    seen, failures = _concurrent_loads(tmp_path, load)
    assert not failures, f"{len(failures)} of {len(seen) + len(failures)} loads failed or mixed versions: {failures[:3]}"
    assert seen.count(0) >= 5 and seen.count(1) >= 5
