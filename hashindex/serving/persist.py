"""Crash-safe directories of files: atomic replacement, snapshot-consistent reading (generic).

What a directory holds and how its manifest reads is the format's business
(:mod:`hashindex.serving.index_format`); this module knows only files, checksums and renames.

Writing (:func:`write_dir`): the files go into a temporary sibling ``.<name>.tmp-<pid>-<token>``
whose first file is a marker (:data:`MARKER`: the target's name and a random token, checksummed)
locked with ``flock`` for as long as the save runs. The directory is fsynced, then swapped into
place. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call, so the path always names a
whole directory; where that call is missing, the old directory is first renamed to the backup
``.<name>.previous``, and a crash between the two renames leaves it whole there
(:func:`resolve_dir` finds it; the next successful save removes it). Swaps into one parent
directory are serialised by an ``flock`` on that directory.

What a save removes: only what this library provably wrote. A temporary sibling is removed only
when its marker verifies (this target, its own token, a valid checksum) and its lock can be
taken (the save that made it is gone, in whatever process or PID namespace it ran), and then
only the files a save writes (``names``), its marker and the then empty directory (an empty
directory named exactly ``.<name>.tmp-<pid>-<12 hex>`` and a minute old, what a save killed
between creating it and its marker leaves, is removed too: rmdir loses nothing). A target is
replaced only when it is an empty directory or the format recognises it as a whole directory
of its own (``recognise``); a backup only when recognised, or when it carries the unlocked
marker of a save that died while removing it. User names are compared as strings, never used
as glob patterns.

Reading (:func:`open_dir`) is snapshot-consistent: the directory is opened once; the manifest
and every file it lists are opened relative to that descriptor (regular files only, never
blocking on a FIFO, never following a symlink), size-checked and checksummed from those
descriptors. A save swaps whole directories, so the descriptor keeps naming one version while
another process saves over the path. If that version is removed while its files are being
opened, or the path is momentarily missing between the fallback's two renames, the open waits
briefly and starts again (bounded), so a load during saves never fails on a whole index.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import stat
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from hashindex.core.errors import IndexFormatError, SavePathError

try:  # POSIX; without it no lock can be taken, so no temporary directory is ever removed
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

_CHUNK = 1 << 22
MARKER = ".hashindex-save"
"""The marker file of a save's temporary directory (never part of a finished directory)."""
MAX_MARKER_BYTES = 4096
_OPEN_ATTEMPTS = 50  # restarts of a load whose version was swapped out while its files were opened
_SWAP_WAIT_S = 2.0  # how long a load waits for a save that is between its two fallback renames
_MAX_NAME_EXTRA = 40  # bytes a temporary sibling's name adds to the target's
_TMP_SUFFIX = re.compile(r"[0-9]{1,10}-[0-9a-f]{12}")  # <pid>-<token[:12]> after ".<name>.tmp-"
_EMPTY_TMP_AGE_S = 60.0  # an empty temporary directory this old is no save's (one fills it at once)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 1 << 1  # <fcntl.h>, <linux/fs.h>
_ERRNO_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)  # renameat2 flags unknown here
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

Recognise = Callable[[Path], "str | None"]
"""``recognise(dir)``: None when ``dir`` is a whole directory of the caller's format, else why not."""


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


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e}{f' ({name})' if name else ''}"


# -- paths ---------------------------------------------------------------------------------------
def as_path(target: Any, what: str, error: type[IndexFormatError] = IndexFormatError) -> Path:
    """``target`` as a Path; ``error`` naming the problem for a non-path, the empty path or NUL."""
    if isinstance(target, bytes):
        target = os.fsdecode(target)
    if not isinstance(target, (str, os.PathLike)):
        raise error(f"{what} must be a path (str or os.PathLike), got {type(target).__name__}")
    raw = os.fspath(target)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw:
        raise error(f"{what} is the empty path: name the index directory")
    if "\0" in raw:
        raise error(f"{what} {raw!r} contains a NUL character")
    return Path(raw)


def open_regular(name: str | os.PathLike, dir_fd: int | None = None, where: str | os.PathLike | None = None) -> BinaryIO:
    """Open a regular file for reading, never blocking (FIFOs, devices) and never following a
    final symlink. FileNotFoundError passes through; anything else is IndexFormatError."""
    where = where if where is not None else name
    flags = os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK
    try:
        fd = os.open(name, flags, dir_fd=dir_fd) if dir_fd is not None else os.open(name, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IndexFormatError(f"{where}: a symlink, not a regular file") from None
        raise IndexFormatError(f"{where}: cannot open ({_why(e)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a plain file"
            raise IndexFormatError(f"{where}: not a regular file ({what})")
        if _O_NONBLOCK and fcntl is not None:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def backup_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


# -- replacing only what is ours -----------------------------------------------------------------
def check_save_target(target: Any, recognise: Recognise) -> Path:
    """The absolute path a save may replace; SavePathError naming why not otherwise.

    Allowed: a nonexistent path (its parent may be created), an empty directory, or a
    directory ``recognise`` accepts. Refused: not a path, the empty path, NUL, a name too long
    for its temporary sibling, a filesystem root, a parent that is not a directory, a symlink,
    a regular file or other non-directory, any other directory.
    """
    raw = as_path(target, "the save path", SavePathError)
    path = Path(os.path.abspath(raw))
    if not path.name:
        raise SavePathError(f"cannot save to {str(raw)!r}: a filesystem root is not an index directory")
    name_max = 255
    try:
        name_max = os.pathconf(path.parent if path.parent.is_dir() else "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        pass
    if len(os.fsencode(path.name)) + _MAX_NAME_EXTRA > name_max:
        raise SavePathError(
            f"cannot save to {str(raw)[:80]!r}...: the name is {len(os.fsencode(path.name))} bytes; index names "
            f"may have at most {name_max - _MAX_NAME_EXTRA} (room for the temporary sibling a save writes)"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except NotADirectoryError:
        raise SavePathError(f"cannot save to {str(raw)!r}: a parent of it is not a directory") from None
    except OSError as e:
        raise SavePathError(f"cannot save to {str(raw)!r}: {_why(e)}") from None
    if stat.S_ISLNK(st.st_mode):
        raise SavePathError(f"refusing to save to {str(raw)!r}: it is a symlink (save to the directory it points to)")
    if not stat.S_ISDIR(st.st_mode):
        raise SavePathError(f"refusing to save to {str(raw)!r}: it exists and is not a directory")
    try:
        empty = not os.listdir(path)
    except OSError as e:
        raise SavePathError(f"refusing to save to {str(raw)!r}: cannot list it ({_why(e)})") from None
    why = None if empty else recognise(path)
    if why is not None:
        raise SavePathError(
            f"refusing to save to {str(raw)!r}: {why}. Save replaces only an empty directory or a "
            "hashindex index directory; choose another path"
        )
    return path


def _remove_files(path: Path, names: frozenset[str]) -> bool:
    """Remove the regular files named in ``names`` (then :data:`MARKER`) from ``path`` and the
    then empty directory; anything else is left, and so is the directory. True when it is gone."""
    try:
        entries = os.listdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    for entry in sorted(entries, key=lambda e: e == MARKER):  # the marker last: debris stays provable
        try:
            if entry in names | {MARKER} and stat.S_ISREG(os.lstat(path / entry).st_mode):
                os.unlink(path / entry)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _marker_record(target: Path, token: str) -> dict:
    record = {"kind": "hashindex.save", "target": target.name, "token": token}
    return {**record, "sha256": hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()}


def _lock(fd: int, blocking: bool) -> bool:
    """flock ``fd`` exclusively; False when another holder has it (non-blocking) or locks are
    unsupported here."""
    if fcntl is None:
        return False
    op = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, op)
    except OSError:
        return False
    return True


def _abandoned(path: Path, target: Path) -> bool:
    """Whether ``path`` is the temporary directory (or the backup) of a save of ``target`` that
    has ended: a real directory whose marker verifies and whose lock nobody holds."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        fd = os.open(path / MARKER, os.O_RDWR | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MARKER_BYTES or not _lock(fd, blocking=False):
            return False  # not a marker, or its save is still running (the lock is held)
        try:
            record = json.loads(os.pread(fd, MAX_MARKER_BYTES, 0))
            token = record["token"]
            ours = path.name.startswith(_tmp_prefix(target)) and path.name.endswith(f"-{token[:12]}")
            return record == _marker_record(target, token) and (ours or path.name == backup_path(target).name)
        except (ValueError, TypeError, KeyError, RecursionError):
            return False
    finally:
        os.close(fd)  # releases the lock


def _empty_and_stale(path: Path, prefix: str) -> bool:
    """An empty directory named exactly as a save names its temporary directory, untouched for
    :data:`_EMPTY_TMP_AGE_S`: what a save killed between creating it and its marker (or between
    removing its marker and the directory) leaves. Removing it (rmdir) loses nothing."""
    if not _TMP_SUFFIX.fullmatch(path.name[len(prefix) :]):
        return False
    try:
        st = os.lstat(path)
        return stat.S_ISDIR(st.st_mode) and time.time() - st.st_mtime > _EMPTY_TMP_AGE_S and not os.listdir(path)
    except OSError:
        return False


def remove_abandoned(target: Path, names: frozenset[str]) -> None:
    """Remove temporary siblings of ``target`` left by saves that ended without finishing."""
    prefix = _tmp_prefix(target)
    try:
        entries = os.listdir(target.parent)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        if _abandoned(target.parent / entry, target):
            _remove_files(target.parent / entry, names)
        elif _empty_and_stale(target.parent / entry, prefix):
            try:
                os.rmdir(target.parent / entry)
            except OSError:
                pass


@contextmanager
def _swap_lock(parent: Path) -> Iterator[None]:
    """Serialise swaps into ``parent`` (an flock on the directory; none where unsupported)."""
    try:
        fd = os.open(parent, os.O_RDONLY | _O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        _lock(fd, blocking=True)
        yield
    finally:
        os.close(fd)


def _swap_in_progress(parent: Path) -> bool:
    try:
        fd = os.open(parent, os.O_RDONLY | _O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True  # a save holds it (other errors: locks unsupported here, nothing to wait for)
    except OSError:
        return False
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in _ERRNO_UNSUPPORTED:  # the filesystem or kernel lacks it
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def _backup_problem(target: Path, recognise: Recognise) -> str | None:
    """None when the backup of ``target`` is absent or ours to remove (a whole index, or one a
    save that died was removing: its marker verifies), else why not."""
    backup = backup_path(target)
    if not os.path.lexists(backup):
        return None
    if os.path.islink(backup) or not backup.is_dir():
        return "it is a symlink" if os.path.islink(backup) else "it is not a directory"
    why = recognise(backup)
    return None if why is None or _abandoned(backup, target) else why


def _check_backup(target: Path, recognise: Recognise) -> None:
    backup = backup_path(target)
    if os.path.lexists(backup):
        why = _backup_problem(target, recognise)
        if why is not None:
            raise SavePathError(
                f"cannot save to {str(target)!r}: {backup.name} (the name a save uses for the previous "
                f"index) exists and is not a hashindex backup ({why}); move it away"
            )


def write_dir(target: Any, write: Callable[[Path], None], recognise: Recognise, names: frozenset[str]) -> None:
    """Write a directory with ``write(tmp)`` and swap it into ``target`` (see the module doc).

    ``recognise``: accepts a whole directory of the caller's format (what may be replaced, and
    a backup that may be removed). ``names``: the files ``write`` creates (the only ones removed
    from an abandoned temporary directory). Nothing is written when ``target`` is refused
    (:func:`check_save_target`); on any error the target is left as it was.
    """
    target = check_save_target(target, recognise)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SavePathError(f"cannot save to {str(target)!r}: cannot create its parent directory ({_why(e)})") from None
    remove_abandoned(target, names)
    token = secrets.token_hex(16)
    tmp = target.with_name(f"{_tmp_prefix(target)}{os.getpid()}-{token[:12]}")
    try:
        tmp.mkdir()
        marker = os.open(tmp / MARKER, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW, 0o644)
    except OSError as e:
        _remove_files(tmp, frozenset())
        raise SavePathError(f"cannot save to {str(target)!r}: cannot create {tmp.name} ({_why(e)})") from None
    try:
        _lock(marker, blocking=True)
        os.write(marker, json.dumps(_marker_record(target, token), sort_keys=True).encode())
        write(tmp)
        fsync_path(tmp)
        with _swap_lock(target.parent):
            check_save_target(target, recognise)  # again: the writers may have run for a while
            backup = backup_path(target)
            if not os.path.lexists(target):
                os.rename(tmp, target)
                os.unlink(target / MARKER)
            elif _exchange(tmp, target):
                os.rename(target / MARKER, tmp / MARKER)  # the old index, now at tmp, is removed as ours
                _remove_files(tmp, names)
            else:
                _check_backup(target, recognise)  # a user's directory of that name stays untouched
                if os.path.lexists(backup):
                    _remove_files(backup, names)
                os.rename(target, backup)
                os.rename(tmp, target)
                os.rename(target / MARKER, backup / MARKER)
                _remove_files(backup, names)
            if os.path.lexists(backup) and _backup_problem(target, recognise) is None:
                _remove_files(backup, names)  # left by a save that died between its renames, or while removing it
            fsync_path(target.parent)
    except BaseException:
        if os.path.lexists(tmp / MARKER):  # still ours: the swap did not happen
            _remove_files(tmp, names)
        raise
    finally:
        os.close(marker)


# -- snapshot-consistent reading -----------------------------------------------------------------
class _Swapped(Exception):
    """The version being opened was swapped out and removed: start again on the new one."""


def resolve_dir(path: Any, what: str = "index directory") -> tuple[Path, bool]:
    """The directory to read and whether it is the backup: ``path``, or its backup when a save
    died between its fallback renames. A save that is between them is waited for (bounded)."""
    path = as_path(path, f"the {what} path")
    deadline = time.monotonic() + _SWAP_WAIT_S
    while True:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            backup = backup_path(path.absolute())
            if not (backup / "manifest.json").exists():
                if os.path.lexists(path):
                    continue  # a save completed meanwhile
                raise IndexFormatError(f"{path}: no such {what}") from None
            if _swap_in_progress(path.absolute().parent) and time.monotonic() < deadline:
                time.sleep(0.001)  # a save is between its two renames: the new index comes next
                continue
            warnings.warn(
                f"{path} is missing but a save into it was interrupted; loading the previous index "
                f"from {backup} (save again to restore {path})",
                stacklevel=5,  # resolve <- open_dir <- open_index_dir <- HashIndex.load <- the caller
            )
            return backup, True
        except OSError as e:
            raise IndexFormatError(f"{path}: cannot open the {what} ({_why(e)})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise IndexFormatError(f"{path}: not a directory (an index is a directory with manifest.json)")
        return path, False


@dataclass(frozen=True)
class Listing:
    """What a parsed manifest says about the files beside it: name -> (bytes, sha256)."""

    manifest: dict
    files: dict[str, tuple[int, str]]


Parse = Callable[[bytes, str], Listing]


class SnapshotDir:
    """One version of a directory, with every file its manifest lists open.

    Every file was opened relative to one directory descriptor, so all of them belong to the
    same save even if another process has since saved over the path. Use as a context manager
    (or call :meth:`close`); arrays from :meth:`load_array` stay valid after closing (memory
    maps hold their own reference to the file).
    """

    def __init__(self, root: Path, manifest: dict, files: dict[str, BinaryIO]):
        self.root = root
        self.manifest = manifest
        self._files = files

    def __enter__(self) -> "SnapshotDir":
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
        """The ``.npy`` array ``name``; IndexFormatError unless exactly ``dtype`` and ``shape``."""
        return load_npy(self.file(name), self.path_of(name), dtype, shape, mmap)


IndexDir = SnapshotDir  # the name of hashindex 0.1


def npy_header(f: BinaryIO, where: str | os.PathLike) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of the ``.npy`` stream ``f`` at its start."""
    try:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(f, max_header_size=10_000)
    except (OSError, ValueError, TypeError, SyntaxError, EOFError) as e:
        raise IndexFormatError(f"{where}: unreadable .npy header ({e})") from None
    return tuple(shape), fortran, dtype, f.tell()


def load_npy(f: BinaryIO, where: str | os.PathLike, dtype: np.dtype, shape: tuple[int, ...], mmap: bool = False) -> np.ndarray:
    """The ``.npy`` file ``f``, exactly ``dtype`` and ``shape`` and of exactly that size, else
    IndexFormatError; sizes are checked before anything is allocated or mapped.

    ``mmap``: a read-only memory map of this very file (``np.memmap`` at the data offset), not
    of whatever the path names now. A file truncated *in place* after this check (by another
    tool: a save never writes in place) raises SIGBUS when a mapped page is read.
    """
    dtype = np.dtype(dtype)
    f.seek(0)
    h_shape, fortran, h_dtype, offset = npy_header(f, where)
    if h_dtype != dtype or h_shape != tuple(shape) or fortran:
        order = " (Fortran order)" if fortran else ""
        raise IndexFormatError(f"{where}: expected {dtype} {tuple(shape)}, found {h_dtype} {h_shape}{order}")
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


def _open_all(dir_fd: int | None, root: Path, manifest_name: str, max_bytes: int, parse: Parse, verify: bool) -> SnapshotDir:
    """Open the manifest and every file it lists, relative to ``dir_fd`` (by path when None)."""

    def open_file(name: str) -> BinaryIO:
        try:
            return open_regular(name if dir_fd is not None else root / name, dir_fd, where=root / name)
        except FileNotFoundError:
            raise _Swapped(name) from None

    files: dict[str, BinaryIO] = {}
    try:
        with open_file(manifest_name) as mf:
            raw = mf.read(max_bytes + 1)
        listing = parse(raw, str(root / manifest_name))
        for name in listing.files:  # names checked by the format: no path separators
            files[name] = open_file(name)
        for name, (size, sha) in listing.files.items():  # every size before any checksum
            actual = os.fstat(files[name].fileno()).st_size
            if actual != size:
                raise IndexFormatError(f"{root / name}: size {actual} differs from the manifest's {size} (truncated?)")
        if verify:
            for name, (size, sha) in listing.files.items():
                if sha256_fileobj(files[name]) != sha:
                    raise IndexFormatError(f"{root / name}: SHA-256 differs from the manifest (file corrupt or modified)")
        return SnapshotDir(root, listing.manifest, files)
    except BaseException:
        for f in files.values():
            f.close()
        raise


def open_dir(path: Any, manifest_name: str, max_bytes: int, parse: Parse, verify: bool = True) -> SnapshotDir:
    """Open one version of the directory at ``path`` (snapshot-consistent, see the module doc).

    ``parse(raw manifest, where)`` checks the manifest and lists the files; ``verify``: check
    every file's SHA-256 (sizes are always checked, all of them before any checksum).
    """
    use_fd = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
    missing = None
    for attempt in range(_OPEN_ATTEMPTS):
        if attempt:
            time.sleep(min(0.0005 * 2**attempt, 0.05))
        root, is_backup = resolve_dir(path)
        if not use_fd:
            try:
                return _open_all(None, root, manifest_name, max_bytes, parse, verify)
            except _Swapped as e:
                raise IndexFormatError(f"{root}: file {e} listed in the manifest is missing") from None
        try:
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            continue  # renamed away between resolve and open: resolve again
        except OSError as e:
            raise IndexFormatError(f"{root}: cannot open the index directory ({_why(e)})") from None
        try:
            if os.stat(dir_fd).st_nlink == 0:
                continue  # already removed
            return _open_all(dir_fd, root, manifest_name, max_bytes, parse, verify)
        except _Swapped as e:
            missing = str(e)
            if is_backup:
                continue  # a backup is removed by the save that made it: the path names the new index
            try:
                here, opened = os.stat(root), os.stat(dir_fd)
                same = (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)
            except OSError:
                same = False
            if same:
                if missing == manifest_name:
                    raise IndexFormatError(f"{root}: not a hashindex directory ({manifest_name} missing)") from None
                raise IndexFormatError(f"{root}: file {missing} listed in the manifest is missing") from None
        finally:
            os.close(dir_fd)
    last = f" (last: {missing} missing)" if missing else ""
    raise IndexFormatError(f"{path}: the index kept being replaced while it was opened ({_OPEN_ATTEMPTS} attempts){last}")


# names that moved to hashindex.serving.index_format (the HashIndex manifest and its schema)
_MOVED = {
    "FORMAT_VERSION", "KIND", "MANIFEST", "MAX_MANIFEST_BYTES", "INDEX_SCHEMA", "LINEAR_HASHER_SCHEMA",
    "ONNX_HASHER_SCHEMA", "FILE_SCHEMA", "Field", "check_manifest", "parse_manifest", "open_index_dir",
    "read_manifest", "resolve_index_dir", "DATA_FILES", "HASHER_FILES",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from hashindex.serving import index_format  # the format builds on this module

        return getattr(index_format, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
