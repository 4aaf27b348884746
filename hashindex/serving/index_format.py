"""The HashIndex directory format (ARCHITECTURE.md §4): the manifest, the files, the state they hold.

Layout of an index directory::

    manifest.json           format version, shape facts, SHA-256 and size of every other file
    codes.npy               uint8 [N, bits/8]
    ids.npy                 int64 [N]
    features.npy            float32 or float16 [N, D]
    labels.npy              int64 [N], each item's label (only when ``labelled: true``)
    partition_centroids.npy float32 [nlist, D]       (only with ``partition_nlist``)
    partition_assign.npy    int32 [N, min(spill, nlist)] (only with ``partition_nlist``)
    rerank_codes.npy        uint8 [N, D] (int8), [N, ceil(3 D / 4)] (int6) or [N, 2 D] (float16): the
                            compact rerank store (only with ``rerank: int6 | int8 | float16``;
                            absent: float32, the features)
    rerank_params.npy       float32 [2 D] (int8 / int6: vmin then vdiff per dimension) or [0] (float16)
    hasher.npz              a LinearHasher, or
    model.onnx              the ONNX model the codes were made with (its SHA-256 is in the manifest)

The mapping is written down once: :data:`ARRAYS` (one entry per ``.npy`` file: dtype and shape
from the manifest, when the file is present, whether a load memory-maps it, a check of its
content) and :data:`INDEX_SCHEMA` (the manifest's fields). :class:`IndexState` is what the files
hold, as arrays and plain values; :func:`write_index` and :func:`read_index` convert between the
two, and :class:`~hashindex.serving.index.HashIndex` only hands over and takes back its state.
Adding a file is one :class:`ArrayFile` entry (the schema's file list, the size checks, saving
and loading follow from it).

The manifest is checked before any field or file is used: field types and ranges (the limits
are the constructor's own, :mod:`hashindex.core.validation`, so what an index accepts it can
save and load back, and the other way round), the exact file list, each array file's size
against the shape the manifest implies, and the operating points against the partition stage.
Crash-safe writing and snapshot-consistent reading are :mod:`hashindex.serving.persist`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hashindex.core.bits import check_bits
from hashindex.core.errors import IndexFormatError, InputError, ModelMismatchError, NotFittedError
from hashindex.core.validation import (
    MAX_ID,
    MAX_ITEMS,
    check_dim,
    check_hasher_kind,
    check_partition_spill,
    check_partitions,
    check_recall,
)
from hashindex.serving import persist
from hashindex.serving.hashers import Hasher, LinearHasher
from hashindex.serving.rerank import METRICS
from hashindex.serving.store import COMPACT_PARAMS, RERANK_KINDS, FileRows, compact_code_bytes
from hashindex.serving.tuning import OperatingPoint, points_from_manifest, points_to_manifest

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KIND = "hashindex.index"  # on-disk format: the value indexes written by hashindex 0.1 carry
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is ~1 KB; refuse to parse anything huge
MAX_NPY_HEADER = 1 << 16  # bytes an .npy file may hold beyond its data (magic + header)
MAX_HASHER_META = 1 << 16


# -- the array files -----------------------------------------------------------------------------
def _ids_problem(ids: np.ndarray, m: dict) -> str | None:
    if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
        return f"ids outside [0, 2**63 - 2]: {ids[(ids < 0) | (ids > MAX_ID)][:5].tolist()}"
    if np.unique(ids).size != ids.size:
        return "repeated ids"
    return None


def _labels_problem(labels: np.ndarray, m: dict) -> str | None:
    if labels.size and labels.min() < 0:
        return f"negative labels: {labels[labels < 0][:5].tolist()}"
    return None


def _assign_problem(assign: np.ndarray, m: dict) -> str | None:
    nlist = m["partition_nlist"]
    if assign.size and (int(assign.min()) < 0 or int(assign.max()) >= nlist):
        return f"list numbers outside 0..{nlist - 1}"
    return None


def _partitioned(m: dict) -> bool:
    return "partition_nlist" in m


def _compact(m: dict) -> bool:
    """A compact rerank store (``rerank`` int6 / int8 / float16); absent, as in indexes saved before
    it existed: float32, the feature store itself."""
    return m.get("rerank", "float32") != "float32"


@dataclass(frozen=True)
class ArrayFile:
    """One ``.npy`` file of an index: ``{name}.npy``, holding ``IndexState.arrays[name]``.

    dtype / shape: what the manifest says the array is; present: whether an index with this
    manifest has the file; mmap: memory-mapped by ``load(mmap=True)``; problem: what is wrong
    with a loaded array's content (None when nothing).
    """

    name: str
    dtype: Callable[[dict], Any]
    shape: Callable[[dict], tuple[int, ...]]
    present: Callable[[dict], bool] = lambda m: True
    mmap: bool = False
    problem: Callable[[np.ndarray, dict], str | None] = lambda a, m: None

    @property
    def file(self) -> str:
        return f"{self.name}.npy"


ARRAYS: tuple[ArrayFile, ...] = (
    ArrayFile("codes", lambda m: np.uint8, lambda m: (m["count"], m["bits"] // 8), mmap=True),
    ArrayFile("ids", lambda m: np.int64, lambda m: (m["count"],), problem=_ids_problem),
    ArrayFile("features", lambda m: m["feature_dtype"], lambda m: (m["count"], m["dim"]), mmap=True),
    ArrayFile("labels", lambda m: np.int64, lambda m: (m["count"],), lambda m: m.get("labelled") is True, True, _labels_problem),
    ArrayFile("partition_centroids", lambda m: np.float32, lambda m: (m["partition_nlist"], m["dim"]), _partitioned),
    ArrayFile(
        "partition_assign", lambda m: np.int32,
        lambda m: (m["count"], min(m.get("partition_spill", 1), m["partition_nlist"])), _partitioned, True, _assign_problem,
    ),  # fmt: skip
    ArrayFile("rerank_codes", lambda m: np.uint8, lambda m: (m["count"], compact_code_bytes(m["rerank"], m["dim"])), _compact),
    ArrayFile("rerank_params", lambda m: np.float32, lambda m: (COMPACT_PARAMS[m["rerank"]] * m["dim"],), _compact),
)
HASHER_FILES = {"linear": "hasher.npz", "onnx": "model.onnx"}
DATA_FILES = tuple(a.file for a in ARRAYS if a.present({}))  # the files every index has
FILE_NAMES = frozenset({MANIFEST, *HASHER_FILES.values(), *(a.file for a in ARRAYS)})
"""Every file a save writes (the only names removed from an abandoned temporary directory)."""


# -- manifest schema -----------------------------------------------------------------------------
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NUMBER = (int, float)
_NONE = type(None)


@dataclass(frozen=True)
class Field:
    """One manifest field: its JSON type, a check on the value, and what the check means.
    ``validate`` (optional) is the constructor's own check: its InputError message is reported."""

    kind: type | tuple[type, ...]
    check: Callable[[Any], bool] = lambda v: True
    means: str = ""
    required: bool = True
    validate: Callable[[Any], Any] | None = None


def _int_in(lo: int, hi: int, required: bool = True) -> Field:
    return Field(int, lambda v: lo <= v <= hi, f"an integer in [{lo}, {hi}]", required)


def _one_of(*values: str, required: bool = True) -> Field:
    return Field(str, lambda v: v in values, f"one of {', '.join(values)}", required)


def _sha() -> Field:
    return Field(str, lambda v: _HEX64.fullmatch(v) is not None, "a SHA-256 hex digest")


def _validated(kind, validate, means: str, required: bool = True) -> Field:
    return Field(kind, means=means, required=required, validate=validate)


INDEX_SCHEMA: dict[str, Field] = {
    "format": _int_in(1, FORMAT_VERSION),
    "kind": _one_of(KIND),
    "bits": _validated(int, check_bits, "a positive multiple of 8"),
    "dim": _validated(int, check_dim, "a positive integer"),
    "metric": _one_of(*METRICS),
    "backend": Field(str, lambda v: _NAME.fullmatch(v) is not None, "a backend name"),
    "feature_dtype": _one_of("float32", "float16"),
    "count": _int_in(0, MAX_ITEMS),
    "next_id": _int_in(0, MAX_ID + 1),  # one past the largest id
    "hasher": Field(dict, lambda v: True, "an object"),
    "model_sha256": Field(str, lambda v: _HEX64.fullmatch(v) is not None, "a SHA-256 hex digest", required=False),
    "files": Field(dict, lambda v: True, "an object"),
    # the partition stage and tuned settings (checked against each other by check_manifest)
    "partitions": _validated((str, int, _NONE), check_partitions, "'auto', a number of lists or null", required=False),
    "partition_spill": _validated(int, check_partition_spill, "an integer", required=False),
    "partition_nlist": _int_in(1, MAX_ITEMS, required=False),
    "operating_points": Field(dict, lambda v: True, "an object", required=False),
    # identity-aware search: whether every item has a label (labels.npy), decided by the first insert
    "labelled": Field(bool, lambda v: True, "true or false", required=False),
    # the store candidates are reranked on (absent: float32, the feature store itself)
    "rerank": _one_of(*RERANK_KINDS, required=False),
}
"""Top-level fields of a HashIndex manifest (other keys are ignored); ``hasher``, ``files`` and
``operating_points`` are checked by :func:`check_manifest`."""

LINEAR_HASHER_SCHEMA: dict[str, Field] = {
    "type": _one_of("linear"),
    "kind": _validated(str, check_hasher_kind, "a string"),
    "bits": _validated(int, check_bits, "a positive multiple of 8"),
    "dim": _validated(int, check_dim, "a positive integer"),
}
ONNX_HASHER_SCHEMA: dict[str, Field] = {"type": _one_of("onnx")}
FILE_SCHEMA: dict[str, Field] = {"sha256": _sha(), "bytes": _int_in(0, 1 << 50)}
POINT_SCHEMA: dict[str, Field] = {  # tuning.OperatingPoint as JSON
    "nprobe": Field((int, _NONE), lambda v: v is None or v > 0, "a positive integer or null", required=False),
    "candidates": _int_in(1, MAX_ITEMS),
    "recall": Field(_NUMBER, means="a number"),
    "seconds_per_query": Field(_NUMBER, means="a number"),
    "target": _validated(_NUMBER, check_recall, "a number"),
    "k": _int_in(1, MAX_ITEMS),
    "nlist": Field((int, _NONE), lambda v: v is None or 0 < v <= MAX_ITEMS, "a positive integer or null", required=False),
    "items": _int_in(0, MAX_ITEMS, required=False),
    "sample": _int_in(0, MAX_ITEMS, required=False),
}


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
        if spec.validate is not None:
            try:
                spec.validate(value)
            except InputError as e:
                raise IndexFormatError(f"{where}: field {key!r}: {e}") from None


def _check_points(manifest: dict, where: str, against_stage: bool = True) -> None:
    """Operating points: each a :data:`POINT_SCHEMA` object, and one that scans partition lists
    only where the saved stage has that many lists."""
    entry = manifest.get("operating_points", {})
    for target, by_k in entry.items():
        if not isinstance(by_k, dict):
            raise IndexFormatError(f"{where}: operating_points must be an object keyed by recall target, then k")
        for k, point in by_k.items():
            at = f"{where}: operating point {str(target)[:20]}/{str(k)[:20]}"
            if not isinstance(point, dict):
                raise IndexFormatError(f"{at} is not an object")
            _check_fields(point, POINT_SCHEMA, at)
            nprobe, nlist = point.get("nprobe"), point.get("nlist")
            if nprobe is None or not against_stage:
                continue
            have = manifest.get("partition_nlist")
            if nlist is None or nprobe > nlist or nlist != have:
                stage = "no partition stage" if have is None else f"{have} lists"
                raise IndexFormatError(
                    f"{at} (recall {point['target']:g}, k={point['k']}) scans {nprobe} of {nlist} partition lists "
                    f"but the saved index has {stage}: it cannot honour it"
                )


def check_manifest(manifest: Any, where: str, against_stage: bool = True) -> dict:
    """Validate a parsed HashIndex manifest; return it.

    Beyond :data:`INDEX_SCHEMA`'s field types and ranges: the hasher record matches its type,
    ``model_sha256`` is present exactly for ONNX hashers, ``files`` lists exactly the hasher's
    file and the :data:`ARRAYS` present for this manifest (no more, no fewer), each with a
    SHA-256 and a size that fits the shape the manifest gives it, and the operating points fit
    the partition stage.
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
    arrays = [a for a in ARRAYS if a.present(manifest)]
    expected = {HASHER_FILES[htype], *(a.file for a in arrays)}
    if set(files) != expected:
        missing, extra = sorted(expected - set(files)), sorted(set(files) - expected)
        raise IndexFormatError(
            f"{where}: the manifest must list exactly {sorted(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {[str(e)[:40] for e in extra[:5]]}" if extra else "")
            + ("; labels.npy belongs with labelled: true, and only there" if "labels.npy" in missing + extra else "")
        )
    for name, info in files.items():
        if not isinstance(info, dict):
            raise IndexFormatError(f"{where}: the entry of {name} is not an object")
        _check_fields(info, FILE_SCHEMA, f"{where} file {name}")
    for a in arrays:  # sizes before any file is opened: a header cannot claim more than is there
        data = int(np.prod(a.shape(manifest), dtype=object)) * np.dtype(a.dtype(manifest)).itemsize
        size = files[a.file]["bytes"]
        if not data < size <= data + MAX_NPY_HEADER:
            raise IndexFormatError(
                f"{where}: {a.file} is listed with {size} bytes, but {a.shape(manifest)} {np.dtype(a.dtype(manifest))} "
                f"(count {manifest['count']}) needs {data} bytes of data and a header"
            )
    _check_points(manifest, where, against_stage)
    return manifest


def parse_manifest(raw: bytes, where: str, against_stage: bool = True) -> dict:
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
    return check_manifest(manifest, where, against_stage)


def _listing(raw: bytes, where: str, against_stage: bool = True) -> persist.Listing:
    m = parse_manifest(raw, where, against_stage)
    return persist.Listing(m, {name: (info["bytes"], info["sha256"]) for name, info in m["files"].items()})


def recognise(path: Path) -> str | None:
    """None when ``path`` is a whole index directory (a valid manifest, and exactly the regular
    files it lists, of the listed sizes), else why not: what a save may replace or remove."""
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        return f"cannot list it ({e.strerror})"
    if MANIFEST not in entries:
        return f"it is a non-empty directory without {MANIFEST} (holds {entries[:3]}{'...' if len(entries) > 3 else ''})"
    try:
        with persist.open_regular(path / MANIFEST) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        files = _listing(raw, str(path / MANIFEST), against_stage=False).files  # a stale point is still ours
    except FileNotFoundError:
        return f"its {MANIFEST} vanished"
    except IndexFormatError as e:
        return f"its {MANIFEST} is not a whole hashindex manifest ({e})"
    foreign = [e for e in entries if e not in (MANIFEST, persist.MARKER) and e not in files]
    if foreign:
        return f"it holds entries its manifest does not list: {foreign[:5]}"
    for name, (size, _) in files.items():
        try:
            st = os.lstat(path / name)
        except OSError:
            return f"{name}, listed in its manifest, is missing"
        if not stat.S_ISREG(st.st_mode):  # lstat: a symlink is not a regular file either
            return f"{name} is not a regular file"
        if st.st_size != size:
            return f"{name} is {st.st_size} bytes, its manifest says {size}"
    return None


# -- the state the files hold --------------------------------------------------------------------
@dataclass
class IndexState:
    """Everything an index directory holds, as arrays and plain values (no FAISS objects).

    ``arrays``: :data:`ARRAYS` names -> arrays (codes, ids, features; labels when labelled;
    partition_centroids and partition_assign when the partition stage was built; rerank_codes
    and rerank_params with a compact rerank store).
    ``labelled``: None until the first insert decided it. ``next_id``: the next automatic id.
    ``rerank``: the rerank store's kind. ``feature_file``: (read with ``mmap`` and a compact
    store only) the features file opened for ``pread``: the rows a search rescores are read
    from it, never mapped (:class:`~hashindex.serving.store.FileRows`). ``code_file``: (read
    with ``mmap``) the codes file opened the same way, for the results' codes.
    """

    dim: int
    bits: int
    metric: str
    backend: str
    feature_dtype: str
    partitions: str | int | None
    partition_spill: int
    hasher: Hasher
    arrays: dict[str, np.ndarray]
    next_id: int = 0
    labelled: bool | None = None
    operating_points: dict[tuple[float, int], OperatingPoint] = field(default_factory=dict)
    rerank: str = "float32"
    feature_file: FileRows | None = None
    code_file: FileRows | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The index constructor's keywords (besides ``dim`` and ``hasher``)."""
        return {"metric": self.metric, "backend": self.backend, "feature_dtype": self.feature_dtype,
                "partitions": self.partitions, "partition_spill": self.partition_spill, "rerank": self.rerank}  # fmt: skip


def _manifest_of(state: IndexState) -> dict:
    m = {"bits": state.bits, "dim": state.dim, "count": int(state.arrays["ids"].shape[0]), "next_id": state.next_id,
         **state.config}  # fmt: skip
    if state.labelled is not None:
        m["labelled"] = state.labelled
    if "partition_centroids" in state.arrays:
        m["partition_nlist"] = int(state.arrays["partition_centroids"].shape[0])
    if state.operating_points:
        m["operating_points"] = points_to_manifest(state.operating_points)
    if isinstance(state.hasher, LinearHasher):
        if not state.hasher.is_fitted:
            raise NotFittedError("cannot save an index whose hasher is not fitted")
        m["hasher"] = {"type": "linear", **state.hasher.to_dict()}
    elif isinstance(getattr(state.hasher, "sha256", None), str) and hasattr(state.hasher, "path"):
        m["hasher"] = {"type": "onnx"}
        m["model_sha256"] = state.hasher.sha256
    else:
        raise InputError(f"cannot save a hasher of type {type(state.hasher).__name__}")
    return m


def _copy_model(hasher: Hasher, dest: Path) -> None:
    shutil.copyfile(hasher.path, dest)
    if persist.sha256_file(dest) != hasher.sha256:
        raise ModelMismatchError(f"{hasher.path} changed on disk since the encoder loaded it")


def check_save_target(path: Any) -> Path:
    """The absolute path an index save may replace (nothing, an empty directory or an index);
    SavePathError naming why not otherwise. For callers that check before long work."""
    return persist.check_save_target(path, recognise)


def write_index(path: Any, state: IndexState) -> None:
    """Write ``state`` as an index directory at ``path``, atomically (:func:`persist.write_dir`).
    The manifest is checked exactly as a load checks it before it is written: a save never
    leaves an index that load refuses."""
    manifest = _manifest_of(state)
    writers: dict[str, Callable[[Path], None]] = {
        a.file: (lambda p, arr=state.arrays[a.name]: np.save(p, arr)) for a in ARRAYS if a.name in state.arrays
    }
    if manifest["hasher"]["type"] == "linear":
        writers[HASHER_FILES["linear"]] = state.hasher.save
    else:
        writers[HASHER_FILES["onnx"]] = lambda p: _copy_model(state.hasher, p)

    def write(tmp: Path) -> None:
        files = {}
        for name, write_file in writers.items():
            p = tmp / name
            write_file(p)
            persist.fsync_path(p)
            files[name] = {"sha256": persist.sha256_file(p), "bytes": p.stat().st_size}
        full = {"format": FORMAT_VERSION, "kind": KIND, **manifest, "files": files}
        # (an operating point is checked against the stage on load only: tests plant stale ones)
        check_manifest(json.loads(json.dumps(full)), f"{path} (being saved)", against_stage=False)
        full["manifest_sha256"] = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
        with open(tmp / MANIFEST, "w") as f:
            json.dump(full, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())

    persist.write_dir(path, write, recognise, FILE_NAMES)


def open_index_dir(path: Any, verify: bool = True) -> persist.SnapshotDir:
    """Open one version of the index directory at ``path`` (snapshot-consistent,
    :func:`persist.open_dir`). ``verify``: check every file's SHA-256 (sizes are always
    checked). IndexFormatError for anything missing, damaged, foreign or from a newer format."""
    return persist.open_dir(path, MANIFEST, MAX_MANIFEST_BYTES, _listing, verify)


def read_manifest(path: Any, verify: bool = True) -> dict:
    """Read and check ``manifest.json``; with ``verify``, check every file's size and SHA-256."""
    with open_index_dir(path, verify=verify) as d:
        return d.manifest


def resolve_index_dir(path: Any) -> Path:
    """The directory to load: ``path``, or its backup when a save died between renames."""
    return persist.resolve_dir(path)[0]


def read_linear_hasher(f, where: Any, bits: int, dim: int) -> LinearHasher:
    """``hasher.npz`` -> LinearHasher; every member's header and size is checked against the
    manifest's bits and dim before anything is decompressed or allocated."""
    shapes = {"weight.npy": (bits, dim), "bias.npy": (bits,), "meta.npy": ()}
    try:
        with zipfile.ZipFile(f) as z:
            infos = {i.filename: i for i in z.infolist()}
            if set(infos) != set(shapes):
                raise IndexFormatError(f"{where}: holds {sorted(infos)[:5]}, expected {sorted(shapes)}")
            for name, info in infos.items():
                with z.open(info) as member:
                    shape, fortran, dtype, offset = persist.npy_header(member, f"{where} ({name})")
                ok = shape == shapes[name] and not fortran
                ok = ok and (dtype.kind == "U" and info.file_size <= MAX_HASHER_META if name == "meta.npy" else dtype.kind == "f")
                if not ok:
                    raise IndexFormatError(f"{where}: {name} is {dtype} {shape}, expected {shapes[name]} (bits {bits}, dim {dim})")
                if info.file_size != offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                    raise IndexFormatError(f"{where}: {name} holds {info.file_size} bytes, its header promises otherwise")
        f.seek(0)
        hasher = LinearHasher.load(f, where=where)
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError) as e:
        if isinstance(e, IndexFormatError):
            raise
        raise IndexFormatError(f"{where}: not a readable hasher file ({type(e).__name__}: {e})") from None
    if (hasher.bits, hasher.dim) != (bits, dim):
        raise IndexFormatError(f"{where}: a {hasher.bits}-bit, {hasher.dim}-d hasher; the index has {bits} bits, dim {dim}")
    return hasher


def _read_hasher(d: persist.SnapshotDir, encoder: Hasher | None) -> Hasher:
    m = d.manifest
    if m["hasher"]["type"] == "linear":
        return read_linear_hasher(d.file("hasher.npz"), d.path_of("hasher.npz"), m["bits"], m["dim"])
    if encoder is not None:
        hasher = encoder
    else:
        from hashindex.serving.encoder import OnnxEncoder  # onnxruntime only when an ONNX model is used

        hasher = OnnxEncoder(d.path_of("model.onnx"), model_bytes=d.read_bytes("model.onnx"))
    if getattr(hasher, "sha256", None) != m["model_sha256"]:
        raise ModelMismatchError(
            f"model SHA-256 {getattr(hasher, 'sha256', None)} differs from the index's "
            f"{m['model_sha256']}: this index was built with another model"
        )
    if hasher.bits != m["bits"]:
        raise ModelMismatchError(f"hasher gives {hasher.bits} bits, index was built with {m['bits']}")
    return hasher


def read_index(d: persist.SnapshotDir, mmap: bool = True, encoder: Hasher | None = None) -> IndexState:
    """The state held by an open index directory (manifest already checked by the open).

    ``mmap``: memory-map the :data:`ARRAYS` marked ``mmap`` (codes, features, labels, the
    partition assignment); the codes file, and with a compact rerank store the features file,
    are also kept open for ``pread`` (``IndexState.code_file`` / ``feature_file``).
    ``encoder``: use it instead of the stored ONNX model (same SHA-256 and bits).
    """
    m = d.manifest
    hasher = _read_hasher(d, encoder)
    arrays = {}
    for a in ARRAYS:
        if a.present(m):
            arr = d.load_array(a.file, np.dtype(a.dtype(m)), a.shape(m), mmap=mmap and a.mmap)
            problem = a.problem(arr, m)
            if problem:
                raise IndexFormatError(f"{d.path_of(a.file)}: {problem}")
            arrays[a.name] = arr
    count, ids = m["count"], arrays["ids"]
    try:
        points = points_from_manifest(m.get("operating_points", {}))
    except InputError as e:
        raise IndexFormatError(f"{d.root}: bad operating_points in the manifest ({e})") from None
    rerank, feature_file = m.get("rerank", "float32"), None
    if rerank != "float32" and isinstance(arrays["features"], np.memmap):
        features = arrays["features"]
        feature_file = FileRows.of(features, d.file("features.npy"))
    codes = arrays["codes"]
    code_file = FileRows.of(codes, d.file("codes.npy")) if isinstance(codes, np.memmap) and count else None
    return IndexState(
        dim=m["dim"], bits=m["bits"], metric=m["metric"], backend=m["backend"], feature_dtype=m["feature_dtype"],
        partitions=m.get("partitions", "auto"), partition_spill=m.get("partition_spill", 1), hasher=hasher,
        arrays=arrays, next_id=max(m["next_id"], int(ids.max()) + 1 if count else 0),
        labelled=m.get("labelled", False if count else None), operating_points=points, rerank=rerank,
        feature_file=feature_file, code_file=code_file,
    )  # fmt: skip


def describe(path: Any) -> str:
    """Human-readable summary of an index directory (for ``hashindex info``): its fields, each
    file's bytes (per item too) and the resident bytes per item it would serve with."""
    with open_index_dir(path, verify=True) as d:
        root, m = d.root, d.manifest
    size = sum(f["bytes"] for f in m["files"].values())
    lines = [f"{root}: hashindex format {m['format']}, all checksums OK"]
    for key in ("count", "dim", "bits", "metric", "backend", "feature_dtype", "rerank", "model_sha256"):
        if key in m:
            lines.append(f"  {key:14s} {m[key]}")
    lines.append(f"  {'hasher':14s} {json.dumps(m.get('hasher'))}")
    lines.append(f"  {'bytes on disk':14s} {size:,} ({size / max(m['count'], 1):.1f} per item)")
    n = max(m["count"], 1)
    for name, info in sorted(m["files"].items()):
        lines.append(f"    {name:22s} {info['bytes']:>14,} {info['bytes'] / n:>9.1f} B/item  sha256 {info['sha256'][:16]}...")
    lines.append(f"  {'in memory':14s} ~{serving_bytes_per_item(m):.0f} B/item while serving, loaded with mmap=True "
                 "(estimate: benchmarks/README.md, Memory)")  # fmt: skip
    return "\n".join(lines)


def serving_bytes_per_item(m: dict) -> float:
    """Resident bytes per item of a loaded (``mmap=True``) index serving searches, from its
    manifest: ids, the compact rerank store (a float32 one is mapped: its pages are read for the
    candidates, and count once touched), and the one copy of the codes a search scans: the
    partition lists (``spill`` x (code + 8-byte position)) when saved with a partition stage,
    else the flat asymmetric scanner. The mapped code store is read once to build them and then
    leaves the resident set (benchmarks/README.md, "Memory per item")."""
    code = m["bits"] / 8
    rerank = m.get("rerank", "float32")
    if rerank == "float32":
        rerank_bytes = np.dtype(m["feature_dtype"]).itemsize * m["dim"]
    else:
        rerank_bytes = compact_code_bytes(rerank, m["dim"])
    # FAISS allocates each list's block table rounded up (a power of two below 8 KB, else 8 KB
    # steps): ~1.4x its codes at 1M
    scanned = m.get("partition_spill", 1) * (1.4 * code + 8) if "partition_nlist" in m else code
    return 8 + rerank_bytes + scanned
