"""Index directories: exact round trips, crash safety under SIGKILL, and refusal of damage.

Oracles: the in-memory index the directory was saved from (results must be bit-identical),
hashlib for the manifest's checksums, and two distinguishable index versions for the crash
test (after any kill the path must hold exactly one of them).
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hashindex.serving import persist
from hashindex.core.errors import IndexFormatError, NotFittedError
from hashindex.serving.hashers import ITQHasher
from hashindex.serving.index import HashIndex

DIM, BITS = 32, 32


def _clustered(rng, n, centers, noise=0.05):
    x = centers[rng.integers(0, len(centers), n)] + noise * rng.standard_normal((n, centers.shape[1]))
    return x.astype(np.float32)


def _build(metric="cosine", feature_dtype="float32", backend="multihash", n=1500, seed=0):
    """An ITQ index fitted on its first batch, with explicit ids, a removal and a second batch."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((30, DIM))
    index = HashIndex(DIM, ITQHasher(DIM, BITS), metric=metric, backend=backend, feature_dtype=feature_dtype)
    index.add(_clustered(rng, n, centers), ids=rng.permutation(10 * n)[:n] + 3)
    index.remove(index.ids[::7])
    index.add(_clustered(rng, 200, centers))  # auto ids after explicit ones
    queries = _clustered(rng, 25, centers)
    return index, queries


def _assert_same_index(a: HashIndex, b: HashIndex, queries: np.ndarray) -> None:
    assert (len(a), a.dim, a.bits, a.metric, a.backend, a.feature_dtype) == (
        len(b), b.dim, b.bits, b.metric, b.backend, b.feature_dtype
    )
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.get_features(a.ids), b.get_features(b.ids))
    np.testing.assert_array_equal(a.hasher.encode(queries), b.hasher.encode(queries))
    for kw in ({"radius": 0}, {"radius": 3}, {"candidates": 30}, {}):
        ra, rb = a.search(queries, k=7, **kw), b.search(queries, k=7, **kw)
        for field in ("ids", "scores", "hamming", "n_candidates"):
            np.testing.assert_array_equal(getattr(ra, field), getattr(rb, field), err_msg=f"{kw} {field}")
    for x, y in zip(a.range_search(queries, 2), b.range_search(queries, 2)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("feature_dtype", ["float32", "float16"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_round_trip_is_exact(mmap, feature_dtype, metric, tmp_path):
    index, queries = _build(metric, feature_dtype)
    index.save(tmp_path / "ix")
    loaded = HashIndex.load(tmp_path / "ix", mmap=mmap)
    _assert_same_index(index, loaded, queries)
    assert (loaded.search(queries, k=7, radius=3).n_candidates > 0).mean() > 0.9  # not vacuous

    # both keep working identically after the round trip: same auto ids, same removals
    rng = np.random.default_rng(1)
    more = rng.standard_normal((50, DIM)).astype(np.float32)
    np.testing.assert_array_equal(index.add(more), loaded.add(more))
    gone = index.ids[::5]
    index.remove(gone)
    loaded.remove(gone)
    _assert_same_index(index, loaded, queries)
    # mutating a memory-mapped load never writes through to the saved files
    again = HashIndex.load(tmp_path / "ix", mmap=mmap)
    assert len(again) == len(index) + len(gone) - 50


def test_float16_store_reranks_on_stored_values(tmp_path):
    index, queries = _build("ip", "float16")
    index.save(tmp_path / "ix")
    loaded = HashIndex.load(tmp_path / "ix")
    feats = loaded.get_features(loaded.ids)
    assert feats.dtype == np.float32
    np.testing.assert_array_equal(feats, feats.astype(np.float16).astype(np.float32))  # float16 values
    res = loaded.search(queries, k=3, radius=2)
    for q in range(len(queries)):
        valid = res.ids[q] >= 0
        expected = loaded.get_features(res.ids[q, valid]).astype(np.float64) @ queries[q].astype(np.float64)
        np.testing.assert_allclose(res.scores[q, valid], expected, rtol=1e-5, atol=1e-5)


def test_manifest_records_every_file_checksum(tmp_path):
    index, _ = _build()
    index.save(tmp_path / "ix")
    root = tmp_path / "ix"
    m = json.loads((root / "manifest.json").read_text())
    others = sorted(p.name for p in root.iterdir() if p.name != "manifest.json")
    assert sorted(m["files"]) == others and {"codes.npy", "ids.npy", "features.npy"} <= set(others)
    for name, info in m["files"].items():
        data = (root / name).read_bytes()
        assert info == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert (m["format"], m["count"], m["bits"], m["dim"], m["metric"]) == (
        persist.FORMAT_VERSION, len(index), BITS, DIM, "cosine"
    )
    # the directory's kind is part of the on-disk format (indexes written by 0.1 carry it), not
    # a module path: it must not follow the package's module moves
    assert m["kind"] == "hashindex.index"
    for name in ("codes.npy", "ids.npy", "features.npy"):
        with open(root / name, "rb") as f:
            assert f.read(6) == b"\x93NUMPY"  # plain .npy: loadable with allow_pickle=False


def test_save_overwrites_and_leaves_no_debris(tmp_path):
    a, queries = _build(seed=0)
    b, _ = _build(seed=1, n=900)
    a.save(tmp_path / "ix")
    b.save(tmp_path / "ix")
    _assert_same_index(b, HashIndex.load(tmp_path / "ix"), queries)
    loaded_b = HashIndex.load(tmp_path / "ix", mmap=True)
    loaded_b.save(tmp_path / "ix")  # re-save onto the very files it memory-maps
    _assert_same_index(b, HashIndex.load(tmp_path / "ix"), queries)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


def test_empty_and_unfitted_indexes(tmp_path):
    index = HashIndex(DIM, ITQHasher(DIM, BITS))
    with pytest.raises(NotFittedError):
        index.save(tmp_path / "unfitted")
    assert not (tmp_path / "unfitted").exists()
    index.fit(np.random.default_rng(0).standard_normal((200, DIM)).astype(np.float32))
    index.save(tmp_path / "empty")
    loaded = HashIndex.load(tmp_path / "empty")
    assert len(loaded) == 0
    res = loaded.search(np.ones((2, DIM), np.float32), k=3, radius=2)
    assert (res.ids == -1).all()
    np.testing.assert_array_equal(loaded.add(np.ones((2, DIM), np.float32)), [0, 1])


# -- crash safety ------------------------------------------------------------------------------
SAVER = Path(__file__).resolve().parent / "alternating_saver.py"


@pytest.mark.parametrize("swap", ["exchange", "rename"])
def test_sigkill_during_save_leaves_a_whole_index(swap, tmp_path, monkeypatch):
    """A saver process alternately writes versions 0 and 1 to one path and is SIGKILLed at
    random moments; every time, the path must load (checksums verified) as exactly one version.
    ``swap="rename"`` forces the fallback used where renameat2(RENAME_EXCHANGE) is missing.
    Afterwards one more save leaves nothing but the index (the debris of every killed save is
    removed). ``HASHINDEX_STRESS_KILLS=25`` kills more often (default 4)."""
    build = runpy.run_path(str(SAVER))["build"]
    versions = [build(0), build(1)]
    target = tmp_path / "ix"
    rng = np.random.default_rng(0)
    seen = []
    for attempt in range(int(os.environ.get("HASHINDEX_STRESS_KILLS", "4"))):
        args = [str(target)] + (["--rename"] if swap == "rename" else [])
        proc = subprocess.Popen([sys.executable, str(SAVER), *args], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "saved", "saver died before its first save"
            time.sleep(rng.uniform(0.02, 0.4))  # a save takes ~0.1 s: kills land in every phase
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        loaded = HashIndex.load(target)  # verifies every checksum
        match = [
            v
            for v, ref in enumerate(versions)
            if len(loaded) == len(ref)
            and np.array_equal(loaded.ids, ref.ids)
            and np.array_equal(loaded.codes, ref.codes)
            and np.array_equal(loaded.get_features(loaded.ids), ref.get_features(ref.ids))
        ]
        assert len(match) == 1, f"attempt {attempt}: the index on disk is neither version"
        seen.append(match[0])
    assert proc.returncode == -signal.SIGKILL
    if swap == "rename":
        monkeypatch.setattr(persist, "_exchange", lambda a, b: False)
    versions[0].save(target)
    left = [e for e in os.listdir(tmp_path) if e != "ix"]
    assert all(not os.listdir(tmp_path / e) for e in left), f"debris after one more save: {left}"  # empty: rmdir'd when stale


def test_crash_between_fallback_renames_recovers_previous_index(tmp_path, monkeypatch):
    """Without RENAME_EXCHANGE the old index is renamed aside before the new one is renamed
    in; a crash between the two must leave the old index loadable under the original path."""
    a, queries = _build(seed=0)
    b, _ = _build(seed=1, n=900)
    target = tmp_path / "ix"
    a.save(target)
    monkeypatch.setattr(persist, "_exchange", lambda x, y: False)
    real_rename = os.rename
    calls = []

    def dying_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(persist.os, "rename", dying_rename)
    with pytest.raises(KeyboardInterrupt):
        b.save(target)
    monkeypatch.setattr(persist.os, "rename", real_rename)
    assert len(calls) == 2 and not target.exists()
    _assert_same_index(a, HashIndex.load(target), queries)
    b.save(target)  # the next save completes normally
    _assert_same_index(b, HashIndex.load(target), queries)


# -- damaged or foreign directories -------------------------------------------------------------
@pytest.fixture(scope="module")
def small_saved(tmp_path_factory):
    index, queries = _build(n=300)
    root = tmp_path_factory.mktemp("small") / "ix"
    index.save(root)
    return root


def _file_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize("name", ["codes.npy", "ids.npy", "features.npy", "hasher.npz"])
def test_flipped_byte_in_a_data_file_is_refused(name, small_saved, tmp_path):
    size = (small_saved / name).stat().st_size
    positions = sorted({0, 7, 64, 127, size // 3, size // 2, size - 1})
    for i, pos in enumerate(positions):
        root = shutil.copytree(small_saved, tmp_path / f"c{i}")
        data = bytearray((root / name).read_bytes())
        data[pos] ^= 0xFF
        (root / name).write_bytes(bytes(data))
        with pytest.raises(IndexFormatError):
            HashIndex.load(root)


def test_flipped_byte_anywhere_in_the_manifest_is_refused(small_saved, tmp_path):
    """Every single-bit change of manifest.json must be refused, not only those that break JSON.

    A digit changed in ``next_id`` or ``format``, or a letter in an unused field, still parses:
    the manifest needs its own checksum (or a strict schema) for these to be caught.
    """
    root = shutil.copytree(small_saved, tmp_path / "m")
    original = (root / "manifest.json").read_bytes()
    accepted = []
    for pos in range(len(original)):
        data = bytearray(original)
        data[pos] ^= 0x01
        (root / "manifest.json").write_bytes(bytes(data))
        try:
            HashIndex.load(root)
        except IndexFormatError:
            continue
        line_start = original.rfind(b"\n", 0, pos) + 1
        line_end = original.find(b"\n", pos)
        accepted.append(f"{original[line_start:line_end].decode().strip()!r} -> {data[line_start:line_end].decode().strip()!r}")
    assert not accepted, f"{len(accepted)} corrupted manifests loaded, e.g. " + "; ".join(accepted)


@pytest.mark.parametrize("name", ["manifest.json", "codes.npy", "ids.npy", "features.npy", "hasher.npz"])
def test_truncated_extended_or_missing_file_is_refused(name, small_saved, tmp_path):
    data = (small_saved / name).read_bytes()
    for i, damaged in enumerate([data[: len(data) // 2], data[:-1], data + b"\0", b""]):
        root = shutil.copytree(small_saved, tmp_path / f"t{i}")
        (root / name).write_bytes(damaged)
        with pytest.raises(IndexFormatError):
            HashIndex.load(root)
    root = shutil.copytree(small_saved, tmp_path / "missing")
    (root / name).unlink()
    with pytest.raises(IndexFormatError):
        HashIndex.load(root)


def test_foreign_directories_are_refused(small_saved, tmp_path):
    with pytest.raises(IndexFormatError):
        HashIndex.load(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError):
        HashIndex.load(tmp_path / "empty")
    (tmp_path / "a-file").write_bytes(b"hello")
    with pytest.raises(IndexFormatError):
        HashIndex.load(tmp_path / "a-file")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"name": "some other tool", "version": 3}))
    with pytest.raises(IndexFormatError):
        HashIndex.load(other)
    (other / "manifest.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(IndexFormatError):
        HashIndex.load(other)
    (other / "manifest.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(IndexFormatError):
        HashIndex.load(other)
    # a manifest naming a file outside the directory
    root = shutil.copytree(small_saved, tmp_path / "escape")
    m = json.loads((root / "manifest.json").read_text())
    m["files"]["../a-file"] = {"sha256": hashlib.sha256(b"hello").hexdigest(), "bytes": 5}
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError):
        HashIndex.load(root)


def test_future_format_version_is_refused(small_saved, tmp_path):
    root = shutil.copytree(small_saved, tmp_path / "future")
    m = json.loads((root / "manifest.json").read_text())
    m["format"] = persist.FORMAT_VERSION + 1
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="newer"):
        HashIndex.load(root)
    for bad in ("1", None, 1.5):
        m["format"] = bad
        (root / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(IndexFormatError):
            HashIndex.load(root)


def test_next_save_removes_debris_of_a_killed_save(tmp_path, killed_save):
    index, _ = _build(n=300)
    target = tmp_path / "ix"
    index.save(target)
    debris = killed_save(target)  # the temporary directory of a save whose process was killed
    assert (debris / "codes.npy").exists()
    live = tmp_path / f".ix.tmp-{os.getpid()}-cafe0000"  # a save still running in this process
    live.mkdir()
    index.save(target)
    assert not debris.exists()
    assert live.exists()
    _assert_same_index(index, HashIndex.load(target), index.get_features(index.ids[:5]))
