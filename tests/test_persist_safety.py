"""Index directories: save replaces only what it owns, loads are snapshot-consistent, manifests
are schema-checked (issue 12, items 1, 2, 8, 11), and hostile or unlucky conditions (issue 21,
items 4-8: loads during fallback saves, saves that load refused, saves deleting what was not
theirs, raw errors from save paths, hostile index directories; each test failed before its
fix). Hangs are tested in a subprocess with a time limit; ``HASHINDEX_STRESS_LOADS`` lengthens
the concurrent-load test of the fallback swap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hashindex.core.errors import HashIndexError, IndexFormatError, InputError
from hashindex.serving import persist
from hashindex.serving.hashers import LinearHasher
from hashindex.serving.index import HashIndex

DIM, BITS = 16, 16
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


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
        elif p.is_fifo():
            out[rel] = "<fifo>"
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


def _which_version(ids, codes, features, versions) -> list[int]:
    return [
        v
        for v, ref in enumerate(versions)
        if np.array_equal(ids, ref.ids) and np.array_equal(codes, ref.codes) and np.array_equal(features, ref.get_features(ref.ids))
    ]


def _concurrent_loads(tmp_path, load, min_loads=60, min_each=5, max_loads=3000, seed=200, n=6000, dim=32, rename=False):
    """Load ``min_loads`` times (and until each version was seen ``min_each`` times) while a writer
    process saves the two versions alternately (``rename``: with the fallback swap, no atomic
    exchange); return (versions seen, failures)."""
    import runpy

    build = runpy.run_path(str(SAVER))["build"]
    versions = [build(v, seed=seed, n=n, dim=dim) for v in (0, 1)]
    target, stop = tmp_path / "ix", tmp_path / "stop"
    args = ["--seed", str(seed), "--n", str(n), "--dim", str(dim), "--ready-after", "1"] + (["--rename"] if rename else [])
    proc = subprocess.Popen(
        [sys.executable, str(SAVER), str(target), "--stop", str(stop), *args], stdout=subprocess.PIPE, text=True
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


def test_loads_during_fallback_saves_never_fail(tmp_path):
    """Issue 21 item 4: with the rename-aside swap (no RENAME_EXCHANGE) a load used to fail ~1 in
    1,200 ("not a directory", "file listed in the manifest is missing"); every load now gets one
    whole version. A small index: many swaps per second. ``HASHINDEX_STRESS_LOADS=4000`` for a
    longer run (it found 2 failures in 4,000 loads before the fix, 0 after)."""
    n_loads = int(os.environ.get("HASHINDEX_STRESS_LOADS", "600"))

    def load(target):
        ix = HashIndex.load(target, mmap=True, verify=True)
        return ix.ids, np.array(ix.codes), ix.get_features(ix.ids)

    seen, failures = _concurrent_loads(tmp_path, load, n_loads, 1, n_loads, seed=300, n=400, dim=16, rename=True)
    assert not failures, f"{len(failures)} of {len(seen) + len(failures)} loads failed or mixed versions: {failures[:3]}"
    assert seen.count(0) and seen.count(1)


def _hasher(dim=DIM, bits=BITS, kind="linear", seed=0) -> LinearHasher:
    rng = np.random.default_rng(seed)
    return LinearHasher(kind, bits, dim, rng.standard_normal((bits, dim)).astype(np.float32), np.zeros(bits, np.float32))


def _dead_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(out.stdout)


def _run(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=ENV, timeout=timeout)


# -- issue 21 item 4: loads during fallback saves ------------------------------------------------


def _load_with_hook(monkeypatch, target, name, when, act, before=False):
    """HashIndex.load(target) while ``os.<name>`` runs ``act()`` once, right after (``before``:
    right before) the first call whose path satisfies ``when``: a save's step landing at that
    moment of the load."""
    real, done = getattr(os, name), []

    def hook(path, *args, **kw):
        fire = not done and not isinstance(path, int) and when(os.fspath(path))
        if fire and before:
            done.append(1)
            act()
        out = real(path, *args, **kw)
        if fire and not before:
            done.append(1)
            act()
        return out

    monkeypatch.setattr(os, "supports_dir_fd", os.supports_dir_fd | {hook})
    monkeypatch.setattr(os, name, hook)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = HashIndex.load(target)
    assert done, f"os.{name} never saw the path the hook waits for"
    return loaded


def test_a_load_racing_the_first_fallback_rename_gets_a_whole_index(tmp_path, monkeypatch):
    """The path is a directory when a load looks, and renamed aside (the fallback save's first
    rename) a moment later: the load must not report "not a directory" but load a whole one."""
    a = _index(seed=0)
    target, backup = tmp_path / "ix", tmp_path / ".ix.previous"
    a.save(target)
    loaded = _load_with_hook(monkeypatch, target, "stat", lambda p: p == str(target), lambda: os.rename(target, backup))
    np.testing.assert_array_equal(loaded.ids, a.ids)


def test_load_retries_when_the_backup_it_opened_is_removed(tmp_path, monkeypatch):
    """A fallback save renames the index aside, renames the new one in and removes the old one.
    A load that resolved to the backup (the path was momentarily missing) and meets a file the
    finishing save already removed must start again on the new index, never fail."""
    a, b = _index(seed=0), _index(n=70, seed=1)
    target, backup, side = tmp_path / "ix", tmp_path / ".ix.previous", tmp_path / "side"
    a.save(target)
    b.save(side)
    os.rename(target, backup)  # the fallback save between its two renames

    def finish_save():  # mid-load from the backup: the save renames the new index in ...
        os.rename(side, target)
        os.unlink(backup / "codes.npy")  # ... and its removal of the backup has begun

    loaded = _load_with_hook(monkeypatch, target, "open", lambda p: p == "codes.npy", finish_save, before=True)
    np.testing.assert_array_equal(loaded.ids, b.ids)


# -- issue 21 item 5: the constructor and load accept the same set -------------------------------------


SAME_SET_CASES = {
    "partition_spill=17": (lambda: HashIndex(DIM, _hasher(), partition_spill=17), {"partition_spill": 17}),
    "hasher kind 'itq v2'": (lambda: HashIndex(DIM, _hasher(kind="itq v2")), None),
    "partitions=2**41": (lambda: HashIndex(DIM, _hasher(), partitions=2**41), {"partitions": 2**41}),
    "dim 2**20 + 8": (lambda: HashIndex(2**20 + 8, _hasher(dim=2**20 + 8, bits=8)), None),
    "bits 2**16 + 8": (lambda: HashIndex(8, _hasher(dim=8, bits=2**16 + 8)), None),
}


@pytest.mark.parametrize("case", sorted(SAME_SET_CASES))
def test_what_the_constructor_accepts_loads_and_what_it_refuses_does_not(case, tmp_path, rewrite_manifest):
    make, manifest_change = SAME_SET_CASES[case]
    try:
        index = make()
    except InputError:
        if manifest_change is not None:  # and load refuses a manifest claiming the same
            root = tmp_path / "ix"
            _index().save(root)
            rewrite_manifest(root, lambda m: m.update(manifest_change))
            with pytest.raises(IndexFormatError):
                HashIndex.load(root)
        return
    index.save(tmp_path / "ix")
    loaded = HashIndex.load(tmp_path / "ix")
    assert (loaded.dim, loaded.bits, loaded.partitions, loaded.partition_spill) == (
        index.dim, index.bits, index.partitions, index.partition_spill
    )
    assert getattr(loaded.hasher, "kind", None) == getattr(index.hasher, "kind", None)


# -- issue 21 item 6: save removes only what this library provably wrote -------------------------------


def test_a_users_directory_named_like_a_dead_save_is_left_alone(tmp_path):
    user = tmp_path / f".g.idx.tmp-{_dead_pid()}-mine"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    _index().save(tmp_path / "g.idx")
    assert (user / "thesis.txt").read_text() == "years of work"


def test_a_save_killed_while_removing_the_backup_does_not_block_the_next(tmp_path, monkeypatch):
    """Fallback swap: the old index, renamed to the backup, is half removed when the save dies;
    the next save removes the rest (the backup carries the dead save's marker) and succeeds."""
    monkeypatch.setattr(persist, "_exchange", lambda a, b: False)
    target, backup = tmp_path / "ix", tmp_path / ".ix.previous"
    _index(seed=0).save(target)
    real_unlink, calls = os.unlink, []

    def dying_unlink(path, *args, **kw):
        if Path(path).parent.name == backup.name:
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt("killed while removing the backup")
        real_unlink(path, *args, **kw)

    monkeypatch.setattr(os, "unlink", dying_unlink)
    with pytest.raises(KeyboardInterrupt):
        _index(n=60, seed=1).save(target)
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert backup.is_dir() and len(os.listdir(backup)) >= 2  # half removed, the marker still there
    c = _index(n=70, seed=2)
    c.save(target)
    assert sorted(os.listdir(tmp_path)) == ["ix"]
    np.testing.assert_array_equal(HashIndex.load(target).ids, c.ids)


def test_only_stale_empty_directories_named_exactly_as_a_save_names_them_are_removed(tmp_path):
    """A save killed between creating its directory and its marker leaves it empty: removed once
    a minute old (rmdir), never a fresh one (a save about to fill it) nor another name."""
    import time

    pid = _dead_pid()
    stale, fresh, other = (tmp_path / f".g.idx.tmp-{pid}-{t}" for t in ("0123456789ab", "ba9876543210", "mine"))
    for d in (stale, fresh, other):
        d.mkdir()
    for d in (stale, other):
        os.utime(d, (time.time() - 3600,) * 2)
    _index().save(tmp_path / "g.idx")
    assert not stale.exists() and fresh.is_dir() and other.is_dir()


@pytest.mark.parametrize("swap", ["exchange", "rename"])
def test_an_empty_user_directory_named_like_a_backup_is_left_alone(swap, tmp_path, monkeypatch):
    if swap == "rename":
        monkeypatch.setattr(persist, "_exchange", lambda a, b: False)
    target = tmp_path / "g.idx"
    _index(seed=0).save(target)
    (tmp_path / ".g.idx.previous").mkdir()
    b = _index(n=70, seed=1)
    try:
        b.save(target)
        np.testing.assert_array_equal(HashIndex.load(target).ids, b.ids)
    except HashIndexError as e:  # refusing is fine; deleting is not
        assert ".g.idx.previous" in str(e)
    assert (tmp_path / ".g.idx.previous").is_dir()


def test_a_manifest_listing_a_users_file_does_not_make_it_replaceable(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "thesis.txt").write_text("years of work")
    manifest = {"kind": "hashindex.index", "format": 1, "files": {"thesis.txt": {"sha256": "0" * 64, "bytes": 13}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    before = _tree(tmp_path)
    with pytest.raises(IndexFormatError, match="refusing"):
        _index().save(root)
    assert _tree(tmp_path) == before


def test_a_live_save_from_another_pid_namespace_keeps_its_temporary_directory(tmp_path):
    """The other save's PID means nothing here (another container on a shared volume): it is
    simulated by a process whose save names its temporary directory after a dead PID."""
    target, stop = tmp_path / "g.idx", tmp_path / "stop"
    code = f"""
        import os, time, numpy as np
        from pathlib import Path
        from hashindex.serving.hashers import LinearHasher
        from hashindex.serving.index import HashIndex
        os.getpid = lambda: {_dead_pid()}
        rng = np.random.default_rng(1)
        h = LinearHasher("linear", {BITS}, {DIM}, rng.standard_normal(({BITS}, {DIM})).astype(np.float32), np.zeros({BITS}, np.float32))
        ix = HashIndex({DIM}, h, metric="ip", backend="flat")
        ix.add(rng.standard_normal((30, {DIM})).astype(np.float32))
        real = LinearHasher.save
        def slow(self, path):
            print("writing", flush=True)
            while not Path({str(stop)!r}).exists():
                time.sleep(0.01)
            real(self, path)
        LinearHasher.save = slow
        ix.save({str(target)!r})
        print("saved", flush=True)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout.readline().strip() == "writing"
        _index(seed=5).save(target)  # must not remove the other save's directory
        stop.touch()
        assert proc.stdout.readline().strip() == "saved"
    finally:
        stop.touch()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == 0
    assert len(HashIndex.load(target)) == 30


def test_save_to_a_name_with_glob_characters_leaves_other_paths_debris(tmp_path, killed_save):
    debris = killed_save(tmp_path / "ab")
    _index().save(tmp_path / "a*")
    assert debris.exists()
    assert len(HashIndex.load(tmp_path / "a*")) == 50
    _index().save(tmp_path / "ab")  # the path it belongs to cleans it up
    assert not debris.exists()


# -- issue 21 item 7: save paths give clear errors -----------------------------------------------------


BAD_PATHS = {
    "parent is a file": lambda tmp: tmp / "afile" / "ix",
    "name over 255 bytes": lambda tmp: tmp / ("x" * 300),
    "NUL in the name": lambda tmp: str(tmp / "a\0b"),
    "None": lambda tmp: None,
    "int": lambda tmp: 5,
}


@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_unusable_save_paths_raise_a_hashindex_error_and_change_nothing(case, tmp_path):
    (tmp_path / "afile").write_text("x")
    index = _index()
    ids_before = index.ids
    before = _tree(tmp_path)
    with pytest.raises(HashIndexError) as info:
        index.save(BAD_PATHS[case](tmp_path))
    assert str(info.value)
    assert _tree(tmp_path) == before
    np.testing.assert_array_equal(index.ids, ids_before)
    assert len(index.search(np.ones((1, DIM), np.float32), k=3).ids[0]) == 3


@pytest.mark.parametrize("case", ["NUL in the name", "None", "int"])
def test_unusable_load_paths_raise_a_hashindex_error(case, tmp_path):
    with pytest.raises(HashIndexError):
        HashIndex.load(BAD_PATHS[case](tmp_path))


@pytest.mark.parametrize("name", ["a**b", "[x]*?", "star*"])
def test_names_with_glob_characters_save_and_load(name, tmp_path):
    index = _index()
    index.save(tmp_path / name)
    index.save(tmp_path / name)
    np.testing.assert_array_equal(HashIndex.load(tmp_path / name).ids, index.ids)


# -- issue 21 item 8: hostile index directories (the ``saved`` fixture above) -------------------


@pytest.mark.parametrize("name", ["manifest.json", "codes.npy"])
@pytest.mark.parametrize("op", ["load", "save"])
def test_a_fifo_in_an_index_directory_never_blocks(name, op, saved, tmp_path):
    root = shutil.copytree(saved, tmp_path / "ix")
    (root / name).unlink()
    os.mkfifo(root / name)
    call = f"HashIndex.load({str(root)!r})" if op == "load" else f"ix.save({str(root)!r})"
    code = f"""
        import numpy as np
        from hashindex.core.errors import IndexFormatError
        from hashindex.serving.hashers import LinearHasher
        from hashindex.serving.index import HashIndex
        rng = np.random.default_rng(0)
        h = LinearHasher("linear", {BITS}, {DIM}, rng.standard_normal(({BITS}, {DIM})).astype(np.float32), np.zeros({BITS}, np.float32))
        ix = HashIndex({DIM}, h, metric="ip", backend="flat")
        ix.add(rng.standard_normal((30, {DIM})).astype(np.float32))
        try:
            {call}
        except IndexFormatError as e:
            print("refused:", e)
    """
    try:
        out = _run(code, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{op} blocked on a FIFO named {name}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout and name in out.stdout
    assert (root / name).is_fifo()


def _npz_with_huge_header(path: Path) -> None:
    """A hasher.npz whose ``weight`` header claims 2**40 floats (the data is 16 bytes)."""
    meta = np.array(json.dumps({"format": 1, "kind": "linear", "bits": BITS, "dim": DIM}))
    with zipfile.ZipFile(path, "w") as z:
        for name, arr in (("meta", meta), ("bias", np.zeros(BITS, np.float32))):
            with z.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, arr)
        header = {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**20)}
        with z.open("weight.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 16)


def _point(**change):
    p = {"nprobe": None, "candidates": 50, "recall": 0.99, "seconds_per_query": 1e-4, "target": 0.99,
         "k": 10, "nlist": None, "items": 40, "sample": 10}  # fmt: skip
    p.update(change)
    return {"0.99": {"10": p}}


HOSTILE = {
    "listed file is a directory": lambda root: (os.unlink(root / "ids.npy"), os.mkdir(root / "ids.npy")),
    "truncated hasher.npz": lambda root: (root / "hasher.npz").write_bytes((root / "hasher.npz").read_bytes()[:200]),
    "hasher.npz header claims 2**40 floats": lambda root: _npz_with_huge_header(root / "hasher.npz"),
}
HOSTILE_POINTS = {
    "items: Infinity": _point(items=float("inf")),
    "sample: -Infinity": _point(sample=float("-inf")),
    "items: NaN": _point(items=float("nan")),
    "nprobe: 1e300": _point(nprobe=1e300, nlist=4),
    "k: Infinity": _point(k=float("inf")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_are_refused_naming_the_file(case, saved, tmp_path, rewrite_manifest):
    root = shutil.copytree(saved, tmp_path / "ix")
    HOSTILE[case](root)
    if case != "listed file is a directory":
        rewrite_manifest(root, lambda m: None)  # checksums match the hostile file
    name = "ids.npy" if "directory" in case else "hasher.npz"
    with pytest.raises(IndexFormatError, match=name.replace(".", r"\.")):
        HashIndex.load(root)


@pytest.mark.parametrize("case", sorted(HOSTILE_POINTS))
def test_hostile_operating_points_are_refused(case, saved, tmp_path, rewrite_manifest):
    root = shutil.copytree(saved, tmp_path / "ix")
    rewrite_manifest(root, lambda m: m.update(operating_points=HOSTILE_POINTS[case]))
    with pytest.raises(IndexFormatError, match="operating"):
        HashIndex.load(root)


def test_array_sizes_are_checked_against_the_manifest_before_hashing(saved, tmp_path, rewrite_manifest):
    """A manifest whose count disagrees with the files is refused on sizes, naming the file."""
    root = shutil.copytree(saved, tmp_path / "ix")
    rewrite_manifest(root, lambda m: m.update(count=2**40))
    with pytest.raises(IndexFormatError, match=r"codes\.npy|count"):
        HashIndex.load(root)


def test_saving_over_a_memory_mapped_index_never_invalidates_it(tmp_path, monkeypatch):
    """Saves write a new directory and swap it in, so a memory-mapped load keeps reading the
    files it mapped (never SIGBUS); only an outside tool truncating them in place could."""
    for swap in ("exchange", "rename"):
        if swap == "rename":
            monkeypatch.setattr(persist, "_exchange", lambda a, b: False)
        a = _index(n=300, seed=0)
        a.save(tmp_path / swap)
        loaded = HashIndex.load(tmp_path / swap, mmap=True)
        for seed in range(3):
            _index(n=10, seed=seed + 1).save(tmp_path / swap)
        np.testing.assert_array_equal(loaded.get_features(loaded.ids), a.get_features(a.ids))


# -- the Milvus backend's stored header (its equivalent of the manifest) -----------------------


def _b64(a) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


MILVUS_HEADERS = {
    "dim: Infinity": {"dim": float("inf")},
    "bits: Infinity": {"bits": float("inf")},
    "format: Infinity": {"hashindex": float("inf")},
    "dim: 1e300": {"dim": 1e300},
    "hasher bits: Infinity": {"hasher": {"type": "linear", "kind": "itq", "bits": float("inf"), "dim": 8}},
    "hasher kind: a number": {"hasher": {"type": "linear", "kind": 5, "bits": 16, "dim": 8,
                                         "weight": _b64(np.ones((16, 8))), "bias": _b64(np.zeros(16))}},
    "hasher weights: NaN": {"hasher": {"type": "linear", "kind": "itq", "bits": 16, "dim": 8,
                                       "weight": _b64(np.full((16, 8), np.nan)), "bias": _b64(np.zeros(16))}},
    "hasher weight: wrong size": {"hasher": {"type": "linear", "kind": "itq", "bits": 16, "dim": 8,
                                             "weight": _b64(np.ones(3)), "bias": _b64(np.zeros(16))}},
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MILVUS_HEADERS))
def test_hostile_milvus_headers_are_refused(case, tmp_path, milvus_class):
    from pymilvus import DataType, MilvusClient

    header = {"hashindex": 1, "dim": 8, "bits": 16, "metric": "cosine", "hasher": {"type": "none"}}
    header.update(MILVUS_HEADERS[case])
    uri = str(tmp_path / "m.db")
    client = MilvusClient(uri)
    schema = MilvusClient.create_schema(auto_id=False, description=json.dumps(header))
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("code", DataType.BINARY_VECTOR, dim=16)
    schema.add_field("feature", DataType.FLOAT_VECTOR, dim=8)
    params = client.prepare_index_params()
    params.add_index("code", index_type="BIN_FLAT", metric_type="HAMMING")
    params.add_index("feature", index_type="FLAT", metric_type="IP")
    client.create_collection("h", schema=schema, index_params=params)
    client.close()
    with pytest.raises(IndexFormatError):
        milvus_class(8, uri=uri, collection="h").close()
