"""Index directories under hostile or unlucky conditions (issue 21, items 4-8, and SIGBUS).

Each test reproduces a defect of the format as it was: loads failing during fallback saves
(item 4), saves that load refuses (5), saves deleting what is not theirs (6), raw errors from
save paths (7), hostile index directories (8). Hangs are tested in a subprocess with a time
limit. ``HASHINDEX_STRESS_LOADS=5000`` lengthens the concurrent-load test (default: seconds).
"""

from __future__ import annotations

import json
import os
import runpy
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
SAVER = Path(__file__).resolve().parent / "alternating_saver.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _hasher(dim=DIM, bits=BITS, kind="linear", seed=0) -> LinearHasher:
    rng = np.random.default_rng(seed)
    return LinearHasher(kind, bits, dim, rng.standard_normal((bits, dim)).astype(np.float32), np.zeros(bits, np.float32))


def _index(n: int = 50, seed: int = 0, **kw) -> HashIndex:
    rng = np.random.default_rng(seed)
    index = HashIndex(DIM, _hasher(seed=seed), metric="ip", backend="flat", **kw)
    index.add(rng.standard_normal((n, DIM)).astype(np.float32), ids=rng.permutation(10 * n)[:n])
    return index


def _tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() and not p.is_symlink() else ("<fifo>" if p.is_fifo() else p.read_bytes())
    return out


def _dead_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(out.stdout)


def _run(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=ENV, timeout=timeout)


# -- item 4: loads during fallback saves ------------------------------------------------------


def test_load_retries_when_the_backup_it_opened_is_removed(tmp_path, monkeypatch):
    """A fallback save renames the index aside, renames the new one in and removes the old one.
    A load that resolved to the backup (the path was momentarily missing) and meets a file the
    finishing save already removed must start again on the new index, never fail."""
    a, b = _index(seed=0), _index(n=70, seed=1)
    target, backup, side = tmp_path / "ix", tmp_path / ".ix.previous", tmp_path / "side"
    a.save(target)
    b.save(side)
    os.rename(target, backup)  # the fallback save between its two renames
    real_open, done = os.open, []

    def open_hook(path, flags, *args, **kw):
        if not done and os.fspath(path) == "codes.npy":  # mid-load from the backup: the save finishes
            done.append(1)
            os.rename(side, target)
            os.unlink(backup / "codes.npy")  # its removal of the backup has begun
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "supports_dir_fd", os.supports_dir_fd | {open_hook})
    monkeypatch.setattr(os, "open", open_hook)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = HashIndex.load(target)
    assert done
    np.testing.assert_array_equal(loaded.ids, b.ids)


def test_loads_during_fallback_saves_never_fail(tmp_path):
    """A writer saves two versions alternately with the rename-aside swap (no RENAME_EXCHANGE);
    every load gets one whole version. Small index: many swaps per second."""
    build = runpy.run_path(str(SAVER))["build"]
    args = ["--seed", "300", "--n", "400", "--dim", "16"]
    versions = [build(v, seed=300, n=400, dim=16) for v in (0, 1)]
    target, stop = tmp_path / "ix", tmp_path / "stop"
    n_loads = int(os.environ.get("HASHINDEX_STRESS_LOADS", "600"))
    proc = subprocess.Popen(
        [sys.executable, str(SAVER), str(target), "--stop", str(stop), "--rename", "--ready-after", "1", *args],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    seen, failures = [], []
    try:
        assert proc.stdout.readline().strip() == "saved"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(n_loads):
                try:
                    ix = HashIndex.load(target, mmap=bool(i % 2))
                except HashIndexError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                    continue
                match = [v for v, ref in enumerate(versions) if np.array_equal(ix.ids, ref.ids) and np.array_equal(ix.codes, ref.codes)]
                if len(match) != 1:
                    failures.append(f"load {i} matches no single version")
                else:
                    seen.append(match[0])
    finally:
        stop.touch()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == 0
    assert not failures, f"{len(failures)} of {n_loads} loads failed: {failures[:3]}"
    assert seen.count(0) and seen.count(1)


# -- item 5: the constructor and load accept the same set -------------------------------------


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


# -- item 6: save removes only what this library provably wrote -------------------------------


def test_a_users_directory_named_like_a_dead_save_is_left_alone(tmp_path):
    user = tmp_path / f".g.idx.tmp-{_dead_pid()}-mine"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    _index().save(tmp_path / "g.idx")
    assert (user / "thesis.txt").read_text() == "years of work"


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


# -- item 7: save paths give clear errors -----------------------------------------------------


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


# -- item 8: hostile index directories --------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved") / "ix"
    _index(n=40).save(root)
    return root


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
