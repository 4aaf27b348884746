"""Crash-safe, checksummed index directories (ARCHITECTURE.md §4).

Layout of an index directory::

    manifest.json   format version, shape facts, SHA-256 and size of every other file
    codes.npy       uint8 [N, bits/8]
    ids.npy         int64 [N]
    features.npy    float32 or float16 [N, D]
    hasher.npz      a LinearHasher, or
    model.onnx      the ONNX model the codes were made with (its SHA-256 is in the manifest)
    labels.npy      int64 [N], each item's label (only in a labelled index: ``labelled: true``)
    rerank_codes.npy, rerank_params.npy   a compact rerank store (``rerank: int8 | float16``)

Saving writes a complete temporary sibling directory, fsyncs it, then swaps it into place.
On Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call, so the path always names a whole
index. Where that call is missing, the old directory is first renamed to a backup sibling;
a crash between the two renames leaves the previous index whole under the backup name, and
:func:`resolve_index_dir` finds it there (the next successful save removes it).

Save replaces only what it owns: a nonexistent path, an empty directory, or a hashindex
directory (its manifest says ``kind: hashindex.serving.index`` and it holds nothing but the
files that manifest lists). Anything else (a user's directory, a regular file, a symlink, the
empty path) is refused with :class:`IndexFormatError` before anything is written.

Loading is snapshot-consistent (:func:`open_index_dir`): the directory is opened once, and the
manifest and every file are opened relative to that directory descriptor, checksummed from
those descriptors and loaded from the same ones. A save swaps whole directories by renaming,
so the descriptor keeps naming one version even while another process saves over the path:
a load sees one version whole, never files of two. (If the version being opened is removed
before all its files are open, the open starts again on the new one.)

The manifest is checked against a declarative schema (:data:`INDEX_SCHEMA`: field types and
ranges, the exact file list for the hasher type, size limits) before any field is used.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from hashindex.core.errors import IndexFormatError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KIND = "hashindex.index"  # on-disk format: the value indexes written by hashindex 0.1 carry
_CHUNK = 1 << 22
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is ~1 KB; refuse to parse anything huge
_OPEN_ATTEMPTS = 50  # restarts of a load whose version was swapped out while its files were opened


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return sha256_fileobj(f)


def sha256_fileobj(f: BinaryIO) -> str:
    """SHA-256 of an open binary file, from its start; leaves it at the end."""
    h = hashlib.sha256()
    f.seek(0)
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backup_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: filesystem or kernel lacks it
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def _remove_abandoned_tmp(target: Path) -> None:
    """Delete temporary siblings left by saves whose process died (killed mid-save)."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _owned_listing(path: Path) -> tuple[bool, str]:
    """Whether ``path`` (an existing directory) is one save may replace, and if not, why."""
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        return False, f"cannot list it ({e})"
    if not entries:
        return True, ""
    if MANIFEST not in entries:
        return False, f"it is a non-empty directory without {MANIFEST} (holds {entries[:3]}{'...' if len(entries) > 3 else ''})"
    try:
        with open(path / MANIFEST, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        manifest = json.loads(raw)
    except (OSError, ValueError, RecursionError) as e:
        return False, f"its {MANIFEST} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        return False, f"its {MANIFEST} is not a hashindex manifest"
    files = manifest.get("files")
    listed = set(files) if isinstance(files, dict) else set()
    foreign = [e for e in entries if e != MANIFEST and (e not in listed or not (path / e).is_file() or (path / e).is_symlink())]
    if foreign:
        return False, f"it holds entries its manifest does not list: {foreign[:5]}"
    return True, ""


def check_save_target(target: str | os.PathLike) -> Path:
    """The absolute path a save may replace; IndexFormatError naming why not otherwise.

    Allowed: a nonexistent path, an empty directory, or a hashindex directory holding only the
    files its manifest lists. Refused: the empty path, a filesystem root, a symlink, a regular
    file or other non-directory, any other directory.
    """
    if isinstance(target, (str, bytes)) and not target:
        raise IndexFormatError("cannot save to the empty path: name the index directory")
    raw = os.fspath(target)
    path = Path(os.path.abspath(raw))
    if not path.name:
        raise IndexFormatError(f"cannot save to {raw!r}: a filesystem root is not an index directory")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISLNK(st.st_mode):
        raise IndexFormatError(f"refusing to save to {raw!r}: it is a symlink (save to the directory it points to)")
    if not stat.S_ISDIR(st.st_mode):
        raise IndexFormatError(f"refusing to save to {raw!r}: it exists and is not a directory")
    ok, why = _owned_listing(path)
    if not ok:
        raise IndexFormatError(
            f"refusing to save to {raw!r}: {why}. Save replaces only an empty directory or a "
            "hashindex index directory; choose another path"
        )
    return path


def _remove_stale_backup(target: Path) -> None:
    """Remove the backup a crashed fallback save left, once the path holds a whole index again."""
    backup = _backup_path(target)
    if os.path.lexists(backup) and not os.path.islink(backup) and backup.is_dir() and _owned_listing(backup)[0]:
        shutil.rmtree(backup, ignore_errors=True)


def write_index_dir(
    target: str | os.PathLike,
    writers: dict[str, Callable[[Path], None]],
    manifest: dict,
) -> None:
    """Write files with ``writers[name](path)``, checksum them into ``manifest``, swap into place.

    Each writer gets the path of its file inside the temporary directory. The manifest gains
    ``format``, ``kind`` and ``files`` (name -> sha256, bytes). ``target`` must be a path save
    may replace (:func:`check_save_target`), else IndexFormatError and nothing is written.
    """
    target = check_save_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_tmp(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        files = {}
        for name, write in writers.items():
            path = tmp / name
            write(path)
            _fsync_path(path)
            files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        full = {"format": FORMAT_VERSION, "kind": KIND, **manifest, "files": files}
        full["manifest_sha256"] = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
        with open(tmp / MANIFEST, "w") as f:
            json.dump(full, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)

        check_save_target(target)  # again: the writers may have run for a while
        if not os.path.lexists(target):
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp)  # tmp now holds the previous index
        else:
            backup = _backup_path(target)
            shutil.rmtree(backup, ignore_errors=True)
            os.rename(target, backup)
            os.rename(tmp, target)
            shutil.rmtree(backup)
        _remove_stale_backup(target)
        _fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise




def resolve_index_dir(path: str | os.PathLike) -> Path:
    """The directory to load: ``path``, or its backup when a save died between renames."""
    if isinstance(path, (str, bytes)) and not path:
        raise IndexFormatError("empty path: name the index directory")
    path = Path(path)
    if not path.exists():
        backup = _backup_path(path.absolute())
        if (backup / MANIFEST).exists():
            warnings.warn(
                f"{path} is missing but a save into it was interrupted; loading the previous index "
                f"from {backup} (save again to restore {path})",
                stacklevel=4,  # resolve <- open_index_dir <- HashIndex.load <- the caller
            )
            return backup
        raise IndexFormatError(f"{path}: no such index directory")
    if not path.is_dir():
        raise IndexFormatError(f"{path}: not a directory (an index is a directory with {MANIFEST})")
    return path


# -- manifest schema ---------------------------------------------------------------------------
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_BITS = 1 << 16
MAX_DIM = 1 << 20
MAX_COUNT = 1 << 40
MAX_ID = 2**63 - 1  # next_id: one past the largest id (core.validation.MAX_ID)
DATA_FILES = ("codes.npy", "ids.npy", "features.npy")
HASHER_FILES = {"linear": "hasher.npz", "onnx": "model.onnx"}


@dataclass(frozen=True)
class Field:
    """One manifest field: its JSON type, a check on the value, and what the check means."""

    kind: type | tuple[type, ...]
    check: Callable[[Any], bool] = lambda v: True
    means: str = ""
    required: bool = True


def _int_in(lo: int, hi: int) -> Field:
    return Field(int, lambda v: lo <= v <= hi, f"an integer in [{lo}, {hi}]")


def _one_of(*values: str) -> Field:
    return Field(str, lambda v: v in values, f"one of {', '.join(values)}")


def _sha() -> Field:
    return Field(str, lambda v: _HEX64.fullmatch(v) is not None, "a SHA-256 hex digest")


INDEX_SCHEMA: dict[str, Field] = {
    "format": _int_in(1, FORMAT_VERSION),
    "kind": _one_of(KIND),
    "bits": Field(int, lambda v: 0 < v <= MAX_BITS and v % 8 == 0, f"a positive multiple of 8 up to {MAX_BITS}"),
    "dim": _int_in(1, MAX_DIM),
    "metric": _one_of("cosine", "ip", "l2"),
    "backend": Field(str, lambda v: _NAME.fullmatch(v) is not None, "a backend name"),
    "feature_dtype": _one_of("float32", "float16"),
    "count": _int_in(0, MAX_COUNT),
    "next_id": _int_in(0, MAX_ID),
    "hasher": Field(dict, lambda v: True, "an object"),
    "model_sha256": Field(str, lambda v: _HEX64.fullmatch(v) is not None, "a SHA-256 hex digest", required=False),
    "files": Field(dict, lambda v: True, "an object"),
    # the partition stage and tuned settings (serving/index.py checks points against the stage)
    "partitions": Field(
        (str, int, type(None)), lambda v: v in (None, "auto") or (isinstance(v, int) and 0 < v <= MAX_COUNT),
        "'auto', a number of lists or null", required=False,
    ),
    "partition_spill": Field(int, lambda v: 1 <= v <= 16, "an integer in [1, 16]", required=False),
    "partition_nlist": Field(int, lambda v: 1 <= v <= MAX_COUNT, "a positive integer", required=False),
    "operating_points": Field(dict, lambda v: True, "an object", required=False),
    # identity-aware search: whether every item has a label (labels.npy), decided by the first insert
    "labelled": Field(bool, lambda v: True, "true or false", required=False),
    # the compact rerank store (absent: float32, the feature store itself); its files below
    "rerank": Field(str, lambda v: v in ("float32", "float16", "int8"), "one of float32, float16, int8", required=False),
}
"""Top-level fields of a HashIndex manifest (other keys are ignored); ``hasher`` and ``files``
are checked by :func:`check_manifest` (their shape depends on the hasher type)."""

LINEAR_HASHER_SCHEMA: dict[str, Field] = {
    "type": _one_of("linear"),
    "kind": Field(str, lambda v: _NAME.fullmatch(v) is not None, "a hasher kind name"),
    "bits": Field(int, lambda v: 0 < v <= MAX_BITS and v % 8 == 0, f"a positive multiple of 8 up to {MAX_BITS}"),
    "dim": _int_in(1, MAX_DIM),
}
# files an index has only with some features; each group is listed whole or not at all
OPTIONAL_FILE_GROUPS = (
    ("partition_centroids.npy", "partition_assign.npy"),
    ("labels.npy",),
    ("rerank_codes.npy", "rerank_params.npy"),  # a compact rerank store (manifest "rerank")
)
ONNX_HASHER_SCHEMA: dict[str, Field] = {"type": _one_of("onnx")}
FILE_SCHEMA: dict[str, Field] = {"sha256": _sha(), "bytes": _int_in(0, 1 << 50)}


def _check_fields(obj: dict, schema: dict[str, Field], where: str) -> None:
    for key, spec in schema.items():
        if key not in obj:
            if spec.required:
                raise IndexFormatError(f"{where}: required field {key!r} is missing")
            continue
        value = obj[key]
        kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds) or not spec.check(value):
            raise IndexFormatError(f"{where}: field {key!r} must be {spec.means or spec.kind.__name__}, got {value!r:.80}")


def check_manifest(manifest: Any, where: str) -> dict:
    """Validate a parsed HashIndex manifest against :data:`INDEX_SCHEMA`; return it.

    Beyond field types and ranges: the hasher record matches its type, ``model_sha256`` is
    present exactly for ONNX hashers, and ``files`` lists exactly the data files plus the
    hasher's file and any whole :data:`OPTIONAL_FILE_GROUPS` (no more, no fewer), each with a
    SHA-256 and a size; ``labels.npy`` is listed exactly when ``labelled`` is true.
    """
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{where}: the manifest is not a JSON object")
    _check_fields(manifest, INDEX_SCHEMA, where)
    hasher = manifest["hasher"]
    htype = hasher.get("type")
    if not isinstance(htype, str) or htype not in HASHER_FILES:
        raise IndexFormatError(f"{where}: unknown hasher type {htype!r:.40} (known: {', '.join(HASHER_FILES)})")
    _check_fields(hasher, LINEAR_HASHER_SCHEMA if htype == "linear" else ONNX_HASHER_SCHEMA, f"{where} hasher")
    if (htype == "onnx") != ("model_sha256" in manifest):
        raise IndexFormatError(f"{where}: model_sha256 belongs with an ONNX hasher, and only there")
    if htype == "linear" and (hasher["bits"], hasher["dim"]) != (manifest["bits"], manifest["dim"]):
        raise IndexFormatError(f"{where}: hasher bits/dim {hasher['bits']}/{hasher['dim']} differ from the index's")
    files = manifest["files"]
    expected = {*DATA_FILES, HASHER_FILES[htype]}
    expected |= {name for group in OPTIONAL_FILE_GROUPS if set(group) & set(files) for name in group}
    if set(files) != expected:
        missing, extra = sorted(expected - set(files)), sorted(set(files) - expected)
        raise IndexFormatError(
            f"{where}: the manifest must list exactly {sorted(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {[str(e)[:40] for e in extra[:5]]}" if extra else "")
        )
    if ("labels.npy" in files) != (manifest.get("labelled") is True):
        raise IndexFormatError(f"{where}: labels.npy belongs with labelled: true, and only there")
    for name, info in files.items():
        if not isinstance(info, dict):
            raise IndexFormatError(f"{where}: the entry of {name} is not an object")
        _check_fields(info, FILE_SCHEMA, f"{where} file {name}")
    return manifest


def parse_manifest(raw: bytes, where: str) -> dict:
    """Bytes of ``manifest.json`` -> a checked manifest dict (self-checksum and schema)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise IndexFormatError(f"{where}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise IndexFormatError(f"{where}: corrupt manifest ({e})") from None
    except RecursionError:
        raise IndexFormatError(f"{where}: corrupt manifest (nested too deeply)") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise IndexFormatError(f"{where}: not a hashindex manifest (kind={kind!r:.60})")
    version = manifest.get("format")
    if isinstance(version, bool) or not isinstance(version, int):
        raise IndexFormatError(f"{where}: missing or invalid format version")
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{where}: index format {version} is newer than this hashindex reads ({FORMAT_VERSION}); "
            "upgrade hashindex"
        )
    claimed = manifest.pop("manifest_sha256", None)
    try:
        actual = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    except (ValueError, TypeError, RecursionError):
        actual = None
    if claimed != actual:
        raise IndexFormatError(f"{where}: manifest checksum mismatch")
    return check_manifest(manifest, where)


# -- snapshot-consistent reading ---------------------------------------------------------------
class _Swapped(Exception):
    """The version being opened was swapped out and removed: start again on the new one."""


def _dir_identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class IndexDir:
    """One version of an index directory, with every file it lists open.

    Every file was opened relative to one directory descriptor, so all of them belong to the
    same save even if another process has since saved over the path. Use as a context manager
    (or call :meth:`close`); arrays from :meth:`load_array` stay valid after closing (memory
    maps hold their own reference to the file).
    """

    def __init__(self, root: Path, manifest: dict, files: dict[str, BinaryIO]):
        self.root = root
        self.manifest = manifest
        self._files = files

    def __enter__(self) -> "IndexDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def path_of(self, name: str) -> Path:
        """For messages only: never reopen a file by this path (it may name another version)."""
        return self.root / name

    def file(self, name: str) -> BinaryIO:
        """The open file ``name`` (listed in the manifest), positioned at its start."""
        try:
            f = self._files[name]
        except KeyError:
            raise IndexFormatError(f"{self.root}: {name} is not listed in the manifest") from None
        f.seek(0)
        return f

    def read_bytes(self, name: str) -> bytes:
        return self.file(name).read()

    def load_array(self, name: str, dtype: np.dtype, shape: tuple[int, ...], mmap: bool = False) -> np.ndarray:
        """The ``.npy`` array ``name``; IndexFormatError unless exactly ``dtype`` and ``shape``.

        ``mmap``: a read-only memory map of this very file (``np.memmap`` at the data offset
        that the ``.npy`` header gives), not of whatever the path names now.
        """
        f = self.file(name)
        where = self.path_of(name)
        dtype = np.dtype(dtype)
        try:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            h_shape, fortran, h_dtype = header(f, max_header_size=10_000)
        except (OSError, ValueError, TypeError, SyntaxError) as e:
            raise IndexFormatError(f"{where}: unreadable .npy header ({e})") from None
        if h_dtype != dtype or tuple(h_shape) != tuple(shape) or fortran:
            order = " (Fortran order)" if fortran else ""
            raise IndexFormatError(f"{where}: expected {dtype} {tuple(shape)}, found {h_dtype} {tuple(h_shape)}{order}")
        offset = f.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = os.fstat(f.fileno()).st_size
        if size != offset + nbytes:
            raise IndexFormatError(f"{where}: {size} bytes, the header promises {offset + nbytes}")
        if mmap and nbytes:
            return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
        arr = np.empty(tuple(shape), dtype=dtype)
        if nbytes and f.readinto(memoryview(arr).cast("B")) != nbytes:
            raise IndexFormatError(f"{where}: truncated array data")
        return arr


def _open_all(dir_fd: int | None, root: Path, verify: bool) -> IndexDir:
    """Open the manifest and every file it lists, relative to ``dir_fd`` (by path when None)."""

    def open_file(name: str) -> BinaryIO:
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(name, flags, dir_fd=dir_fd) if dir_fd is not None else os.open(root / name, flags)
        except FileNotFoundError:
            raise _Swapped(name) from None
        except OSError as e:
            raise IndexFormatError(f"{root / name}: cannot open ({e})") from None
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise IndexFormatError(f"{root / name}: not a regular file")
        return f

    files: dict[str, BinaryIO] = {}
    try:
        with open_file(MANIFEST) as mf:
            raw = mf.read(MAX_MANIFEST_BYTES + 1)
        manifest = parse_manifest(raw, str(root / MANIFEST))
        for name in manifest["files"]:  # names checked by the schema: no path separators
            files[name] = open_file(name)
        for name, info in manifest["files"].items():
            size = os.fstat(files[name].fileno()).st_size
            if size != info["bytes"]:
                raise IndexFormatError(f"{root / name}: size {size} differs from the manifest's {info['bytes']} (truncated?)")
            if verify and sha256_fileobj(files[name]) != info["sha256"]:
                raise IndexFormatError(f"{root / name}: SHA-256 differs from the manifest (file corrupt or modified)")
        return IndexDir(root, manifest, files)
    except BaseException:
        for f in files.values():
            f.close()
        raise


def open_index_dir(path: str | os.PathLike, verify: bool = True) -> IndexDir:
    """Open one version of the index directory at ``path`` (snapshot-consistent, see module doc).

    ``verify``: check every file's SHA-256 (sizes are always checked). Raises IndexFormatError
    for anything missing, damaged, foreign or from a newer format.
    """
    use_fd = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
    for _ in range(_OPEN_ATTEMPTS):
        root = resolve_index_dir(path)
        if not use_fd:
            try:
                return _open_all(None, root, verify)
            except _Swapped as e:
                raise IndexFormatError(f"{root}: file {e} listed in the manifest is missing") from None
        try:
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            continue  # renamed away between resolve and open: resolve again
        except OSError as e:
            raise IndexFormatError(f"{root}: cannot open the index directory ({e})") from None
        try:
            if os.stat(dir_fd).st_nlink == 0:
                continue  # already removed
            return _open_all(dir_fd, root, verify)
        except _Swapped as e:
            try:
                same = _dir_identity(os.stat(root)) == _dir_identity(os.stat(dir_fd))
            except OSError:
                same = False
            if same:
                name = str(e) if str(e) != MANIFEST else None
                if name is None:
                    raise IndexFormatError(f"{root}: not a hashindex directory ({MANIFEST} missing)") from None
                raise IndexFormatError(f"{root}: file {name} listed in the manifest is missing") from None
        finally:
            os.close(dir_fd)
    raise IndexFormatError(f"{path}: the index kept being replaced while it was opened ({_OPEN_ATTEMPTS} attempts)")


def read_manifest(path: str | os.PathLike, verify: bool = True) -> dict:
    """Read and check ``manifest.json``; with ``verify``, check every file's size and SHA-256."""
    with open_index_dir(path, verify=verify) as d:
        return d.manifest
