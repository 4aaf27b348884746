"""Crash-safe, checksummed index directories (ARCHITECTURE.md §4).

Layout of an index directory::

    manifest.json   format version, shape facts, SHA-256 and size of every other file
    codes.npy       uint8 [N, bits/8]
    ids.npy         int64 [N]
    features.npy    float32 or float16 [N, D]
    hasher.npz      a LinearHasher, or
    model.onnx      the ONNX model the codes were made with (its SHA-256 is in the manifest)

Saving writes a complete temporary sibling directory, fsyncs it, then swaps it into place.
On Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call, so the path always names a whole
index. Where that call is missing, the old directory is first renamed to a backup sibling;
a crash between the two renames leaves the previous index whole under the backup name, and
:func:`resolve_index_dir` finds it there.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Callable

from hashindex.core.errors import IndexFormatError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KIND = "hashindex.serving.index"
_CHUNK = 1 << 22


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
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


def write_index_dir(
    target: str | os.PathLike,
    writers: dict[str, Callable[[Path], None]],
    manifest: dict,
) -> None:
    """Write files with ``writers[name](path)``, checksum them into ``manifest``, swap into place.

    Each writer gets the path of its file inside the temporary directory. The manifest gains
    ``format``, ``kind`` and ``files`` (name -> sha256, bytes).
    """
    target = Path(target).absolute()
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

        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp)  # tmp now holds the previous index
        else:
            backup = _backup_path(target)
            shutil.rmtree(backup, ignore_errors=True)
            os.rename(target, backup)
            os.rename(tmp, target)
            shutil.rmtree(backup)
        _fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_index_dir(path: str | os.PathLike) -> Path:
    """The directory to load: ``path``, or its backup when a save died between renames."""
    path = Path(path)
    if not path.exists():
        backup = _backup_path(path.absolute())
        if (backup / MANIFEST).exists():
            warnings.warn(
                f"{path} is missing but a save into it was interrupted; loading the previous index "
                f"from {backup} (save again to restore {path})",
                stacklevel=3,
            )
            return backup
        raise IndexFormatError(f"{path}: no such index directory")
    if not path.is_dir():
        raise IndexFormatError(f"{path}: not a directory (an index is a directory with {MANIFEST})")
    return path


def read_manifest(path: str | os.PathLike, verify: bool = True) -> dict:
    """Read and check ``manifest.json``; with ``verify``, check every file's size and SHA-256."""
    path = Path(path)
    mpath = path / MANIFEST
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: not a hashindex directory ({MANIFEST} missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{mpath}: corrupt manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise IndexFormatError(f"{mpath}: not a hashindex manifest (kind={manifest.get('kind') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format")
    if not isinstance(version, int):
        raise IndexFormatError(f"{mpath}: missing or invalid format version")
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{mpath}: index format {version} is newer than this hashindex reads ({FORMAT_VERSION}); "
            "upgrade hashindex"
        )
    claimed = manifest.pop("manifest_sha256", None)
    if claimed != hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest():
        raise IndexFormatError(f"{mpath}: manifest checksum mismatch")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise IndexFormatError(f"{mpath}: manifest lists no files")
    for name, info in files.items():
        fpath = path / name
        if Path(name).name != name:
            raise IndexFormatError(f"{mpath}: file name {name!r} escapes the index directory")
        if not fpath.is_file():
            raise IndexFormatError(f"{path}: file {name} listed in the manifest is missing")
        if fpath.stat().st_size != info.get("bytes"):
            raise IndexFormatError(
                f"{fpath}: size {fpath.stat().st_size} differs from the manifest's {info.get('bytes')} (truncated?)"
            )
        if verify and sha256_file(fpath) != info.get("sha256"):
            raise IndexFormatError(f"{fpath}: SHA-256 differs from the manifest (file corrupt or modified)")
    return manifest
