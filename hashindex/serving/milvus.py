"""MilvusHashIndex: HashIndex's API with the Hamming stage (and optionally the rerank) in Milvus.

One Milvus collection per index::

    id       INT64 primary key (the hashindex id)
    code     BINARY_VECTOR, dim = bits, index BIN_FLAT (or BIN_IVF_FLAT on a server), metric HAMMING
    feature  FLOAT_VECTOR,  dim = D,    index FLAT, metric IP (cosine / ip) or L2
    label    INT64 (only in a labelled index: its first insert came with labels=)

A collection made before labels existed has no ``label`` field and keeps working, without labels.
Filters become Milvus boolean expressions on the Hamming search (``id in [...]`` in chunks of
``MilvusLimits.fetch_ids`` ids, one search per chunk, merged; ``label in [...]``), so they restrict
the candidates before ranking. ``group_by`` scores every candidate on the client.

Search semantics are HashIndex's: both run the one pipeline of serving/search.py (``radius=r`` is
inclusive, ``candidates=c`` takes the c Hamming-nearest, the default takes per query the smallest
radius giving ``10 * k`` candidates; candidates are reranked by exact similarity on the stored
float features). This module supplies its protocol: Milvus filter expressions as the scope, the
Hamming searches, rows fetched by id (candidate keys are ids), and the rerank on the server.

Milvus facts this module relies on (checked against milvus-lite 2.5.1 / pymilvus 2.5.18):

* Range search on HAMMING returns ``range_filter <= d < radius`` (https://milvus.io/docs/range-search.md):
  the upper bound is exclusive, so an inclusive hashindex radius r is sent as ``radius = r + 1``
  (as FAISS, ARCHITECTURE.md §2).
* Bit order: Milvus numbers BINARY_VECTOR dimensions from the most significant bit of the first
  byte (its docs pack with ``np.packbits``' default big order), FAISS from the least significant
  (§1). Hamming distance is a popcount of XOR, so it does not depend on the numbering: codes are
  stored as the very FAISS-order bytes hashindex uses everywhere, and only a reader that
  interprets single Milvus dimensions would see bit i of byte j as dimension ``8j + 7 - i``.
* ``limit`` (topK), range-search results per query and query windows are capped at
  :data:`MILVUS_MAX_TOPK`; a ``get`` / ``id in [...]`` query beyond it is silently truncated, so
  every fetch is chunked. A range search that fills the cap may be truncated and is refused.
* Inserting an existing primary key does not fail: Milvus stores a duplicate. Ids are checked
  before inserting.
* milvus-lite only supports BIN_FLAT (exact); BIN_IVF_FLAT (a Milvus server) is approximate.
* The collection's consistency level is Strong, so searches see every finished insert / delete.

Reattaching: the collection description holds a JSON header (format, dim, bits, metric and the
hasher: a fitted linear hasher's weights, or an ONNX model's SHA-256). A collection is created at
the first insert, once the default hasher has been fitted, because milvus-lite cannot alter a
collection's description or properties later.
"""

from __future__ import annotations

import base64
import json
import pathlib
import re
import threading
import uuid
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

try:
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Milvus backend needs pymilvus: pip install 'hashindex[milvus]'") from e

from hashindex.core.errors import IndexFormatError, InputError, ModelMismatchError, UnknownIdError, UnsupportedError
from hashindex.core.bits import check_bits
from hashindex.core.validation import check_dim, check_hasher_kind
from hashindex.serving.candidates.csr import Candidates, from_csr
from hashindex.serving.filters import Restriction
from hashindex.serving.front import IndexFront, Rows, Scope, check_choice, check_metric, resolve_hasher, single_hasher
from hashindex.serving.hashers import Hasher, LinearHasher
from hashindex.serving.rerank import METRICS, higher_is_better

FORMAT = 1
MILVUS_MAX_TOPK = 16_384
INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
RERANK_MODES = ("client", "milvus")
_FEATURE_METRIC = {"cosine": "IP", "ip": "IP", "l2": "L2"}  # Milvus's L2 is squared, as exact_scores
_ID, _CODE, _FEATURE, _LABEL = "id", "code", "feature", "label"


@dataclass(frozen=True)
class MilvusLimits:
    """Request sizes kept under Milvus's caps and its gRPC message limits.

    insert_bytes: payload per insert call (rows * (8 + bits/8 + 4 D) bytes). milvus-lite 2.5
        receives at most 4 MiB per request (gRPC's default; a server takes 64 MiB), and pymilvus
        retries a larger insert for minutes instead of failing, so batches stay well below.
    fetch_ids: ids per ``id in [...]`` query returning ids only (must stay below MILVUS_MAX_TOPK).
    fetch_rows: ids per query returning vectors: milvus-lite 2.5 slows down superlinearly with
        the number of vector rows per query (measured: benchmarks/README.md).
    search_hits: queries per search call are chosen so that ``nq * limit`` stays below this.
    delete_ids: ids per delete request. A ``remove`` of up to this many ids is one Milvus delete
        request (a client killed during it leaves all or none of them removed); a larger one is
        sent in chunks of this size, in order, and a crash between chunks leaves a prefix
        removed (remove the rest again: ``[i for i in ids if i in index]``). 100,000 ids of up
        to 19 digits stay under milvus-lite's 4 MiB request limit.
    nprobe: clusters probed by BIN_IVF_FLAT; nlist: clusters it builds.
    """

    insert_bytes: int = 2 << 20
    delete_ids: int = 100_000
    fetch_ids: int = 8_192
    fetch_rows: int = 512
    search_hits: int = 1 << 20
    nprobe: int = 64
    nlist: int = 1_024


_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
# local milvus-lite files opened by MilvusHashIndex objects of this process (resolved path -> count)
_LOCAL_USERS: dict[str, int] = {}
_LOCAL_LOCK = threading.Lock()


def _local_db_path(uri: str) -> str | None:
    """The resolved path of a local milvus-lite file (pymilvus's rule: a path ending in .db), else None."""
    if any(uri.startswith(p) for p in ("http://", "https://", "tcp://", "grpc://", "unix:")) or not uri.endswith(".db"):
        return None
    return str(pathlib.Path(uri).absolute().resolve())


# -- header in the collection description --------------------------------------------------------
def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unb64(s: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").reshape(shape).astype(np.float32)


def hasher_record(hasher: Hasher) -> dict[str, Any]:
    """What identifies a hasher: a fitted linear hasher's weights, an ONNX model's SHA-256, else nothing."""
    if isinstance(hasher, LinearHasher) and hasher.is_fitted:
        return {"type": "linear", **hasher.to_dict(), "weight": _b64(hasher.weight), "bias": _b64(hasher.bias)}
    if isinstance(getattr(hasher, "sha256", None), str):
        return {"type": "onnx", "bits": int(hasher.bits), "sha256": hasher.sha256}
    return {"type": "none"}


def _hasher_from_record(rec: dict[str, Any], given: Hasher | None, where: str) -> Hasher | None:
    """The hasher to use on a reattached collection; refuses one that differs from the stored record."""
    kind = rec.get("type")
    if kind == "linear":
        try:  # the limits HashIndex's constructor and manifest use (core/validation.py)
            bits, dim = check_bits(_json_int(rec["bits"], "bits")), check_dim(_json_int(rec["dim"], "dim"))
            weight, bias = _unb64(rec["weight"], (bits, dim)), _unb64(rec["bias"], (bits,))
            if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
                raise ValueError("weights contain NaN or inf")
            stages = tuple(_json_int(b, "stages") for b in rec.get("stages", []))
            stored = LinearHasher(check_hasher_kind(rec["kind"]), bits, dim, weight, bias, stages)
        except (KeyError, ValueError, TypeError, OverflowError) as e:  # InputError is a ValueError
            raise IndexFormatError(f"{where}: unreadable hasher record ({e})") from None
        if given is None:
            return stored
        same = (
            isinstance(given, LinearHasher)
            and given.is_fitted
            and np.array_equal(given.weight, stored.weight)
            and np.array_equal(given.bias, stored.bias)
            and given.stages == stored.stages
        )
        if not same:
            raise ModelMismatchError(f"{where} was built with another hasher ({stored.kind}, {stored.bits} bits)")
        return given
    if kind == "onnx":
        if given is None:
            raise InputError(
                f"{where} was built with ONNX model sha256 {rec.get('sha256')}: pass encoder=OnnxEncoder(...)"
            )
        if getattr(given, "sha256", None) != rec.get("sha256"):
            raise ModelMismatchError(
                f"model SHA-256 {getattr(given, 'sha256', None)} differs from {where}'s {rec.get('sha256')}"
            )
        return given
    if kind == "none":
        return given
    raise IndexFormatError(f"{where}: unknown hasher type {kind!r}")


def _json_int(value: Any, name: str) -> int:
    """An integer field of a stored header (ints written by hashindex; never a float or bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r:.40}")
    return value


# -- Milvus result parsing (pure) -------------------------------------------------------------------
def hits_to_csr(results: list[list[dict]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Milvus search hits (per query, ``{"id", "distance"}``) -> CSR ``(lims, ids, distances)``."""
    counts = [len(r) for r in results]
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = np.fromiter((h["id"] for r in results for h in r), dtype=np.int64, count=int(lims[-1]))
    dist = np.fromiter((h["distance"] for r in results for h in r), dtype=np.float64, count=int(lims[-1]))
    return lims, ids, dist


class MilvusHashIndex(IndexFront):
    """HashIndex's API on a Milvus collection: the Hamming stage runs in Milvus.

    Args:
        dim: feature dimension D.
        hasher / encoder / bits: as :class:`~hashindex.serving.index.HashIndex` (default: ITQ, fitted on
            the first ``add``). On a reattached collection the stored linear hasher is used, or
            the given one must be identical (else :class:`ModelMismatchError`).
        uri: a milvus-lite file (``*.db``) or a Milvus server (``http://host:19530``).
        collection: collection name; an existing one is reattached (its dim / bits / metric /
            hasher must match, else :class:`IndexFormatError`).
        metric: "cosine", "ip" or "l2" (default: the stored one, or cosine for a new collection).
        rerank: "milvus" (one FLOAT_VECTOR search per query, filtered to its candidate ids) or
            "client" (fetch each candidate's feature by id, rerank with hashindex.serving.rerank). Which
            is faster depends on the candidate count (docs/milvus.md).
        index_type: "BIN_FLAT" (exact, default) or "BIN_IVF_FLAT" (approximate; server only).
        token: Milvus credentials ("user:password") for a server.
        limits: request sizes (:class:`MilvusLimits`).

    A single writer is assumed: ids are checked for duplicates, then inserted, without a lock in
    Milvus. Inserts are batched and not atomic across batches.
    """

    def __init__(
        self,
        dim: int,
        hasher: Hasher | None = None,
        *,
        uri: str = "./hashindex_milvus.db",
        collection: str = "hashindex",
        encoder: Hasher | None = None,
        bits: int | None = None,
        metric: str | None = None,
        rerank: str = "milvus",
        index_type: str = "BIN_FLAT",
        token: str | None = None,
        limits: MilvusLimits = MilvusLimits(),
    ):
        dim = check_dim(dim)  # the limit its stored header is read back with
        given = single_hasher(hasher, encoder)
        if metric is not None:
            check_metric(metric)
        check_choice("rerank", rerank, RERANK_MODES)
        check_choice("index_type", index_type, INDEX_TYPES)
        if not isinstance(collection, str) or not _COLLECTION_NAME.fullmatch(collection):
            raise InputError(
                f"collection must be a Milvus collection name (a letter or _, then letters, digits or _, "
                f"at most 255 characters), got {collection!r}"
            )
        self.uri, self.collection = str(uri), collection
        self.rerank_mode, self.index_type, self.limits = rerank, index_type, limits
        # a private connection alias: pymilvus shares one per uri, and close() would cut the others
        self.dim = dim
        self._local_db = _local_db_path(self.uri)
        try:
            self._client = MilvusClient(uri=self.uri, token=token or "", alias=f"hashindex-{uuid.uuid4().hex}")
        except MilvusException as e:
            raise IndexFormatError(f"cannot open Milvus at {self.uri}: {e.message}") from None
        self._closed = False
        if self._local_db is not None:
            with _LOCAL_LOCK:
                _LOCAL_USERS[self._local_db] = _LOCAL_USERS.get(self._local_db, 0) + 1
        try:
            self._attach(dim, collection, given, bits, metric)
        except BaseException:
            self.close()
            raise

    def _attach(self, dim: int, collection: str, given: Hasher | None, bits: int | None, metric: str | None) -> None:
        self._write_lock = threading.Lock()
        self._next_id: int | None = None
        self._labelled = False

        where = f"Milvus collection {collection!r} at {self.uri}"
        try:
            exists = self._client.has_collection(collection)
        except MilvusException as e:
            raise InputError(f"{where}: Milvus refused the collection name ({e.message})") from None
        if exists:
            header = self._read_header(where)
            if header["dim"] != dim:
                raise IndexFormatError(f"{where} has feature dimension {header['dim']}, not dim={dim}")
            if bits is not None and bits != header["bits"]:
                raise IndexFormatError(f"{where} holds {header['bits']}-bit codes, not bits={bits}")
            if metric is not None and metric != header["metric"]:
                raise IndexFormatError(f"{where} uses metric {header['metric']!r}, not {metric!r}")
            metric, bits = header["metric"], header["bits"]
            given = _hasher_from_record(header["hasher"], given, where)
            self._created = True
            self._client.load_collection(collection)
        else:
            self._created = False
        self._init_front(dim, resolve_hasher(dim, given, None, bits), metric or "cosine")

    # -- collection lifecycle -------------------------------------------------------------------
    def _read_header(self, where: str) -> dict[str, Any]:
        desc = self._client.describe_collection(self.collection)
        try:
            header = json.loads(desc.get("description") or "")
            fmt = int(header["hashindex"])
            _ = header["metric"], header["hasher"]
        except (ValueError, KeyError, TypeError, OverflowError):
            raise IndexFormatError(f"{where} is not a hashindex collection (no hashindex header)") from None
        try:  # JSON integers within the constructor's limits (a hostile header may say Infinity)
            header["dim"], header["bits"] = check_dim(_json_int(header["dim"], "dim")), check_bits(_json_int(header["bits"], "bits"))
        except (KeyError, ValueError, TypeError) as e:
            raise IndexFormatError(f"{where}: invalid hashindex header ({e})") from None
        if not isinstance(header["hasher"], dict):
            raise IndexFormatError(f"{where}: invalid hashindex header (hasher is not an object)")
        if fmt > FORMAT:
            raise IndexFormatError(f"{where}: hashindex format {fmt} is newer than this hashindex ({FORMAT})")
        if header["metric"] not in METRICS:
            raise IndexFormatError(f"{where}: unknown metric {header['metric']!r}")
        fields = {f["name"]: f for f in desc.get("fields", [])}
        expect = {_ID: (DataType.INT64, None), _CODE: (DataType.BINARY_VECTOR, header["bits"]),
                  _FEATURE: (DataType.FLOAT_VECTOR, header["dim"])}  # fmt: skip
        for name, (dtype, vdim) in expect.items():
            f = fields.get(name)
            if f is None or f["type"] != dtype or (vdim is not None and int(f["params"].get("dim", -1)) != vdim):
                raise IndexFormatError(f"{where}: field {name!r} is missing or not {dtype.name}[{vdim}]")
        label = fields.get(_LABEL)
        if label is not None and label["type"] != DataType.INT64:
            raise IndexFormatError(f"{where}: field {_LABEL!r} is not INT64")
        self._labelled = label is not None
        return header

    def _ensure_collection(self, labelled: bool = False) -> None:
        if self._created:
            return
        header = {"hashindex": FORMAT, "dim": self.dim, "bits": self.bits, "metric": self.metric,
                  "hasher": hasher_record(self.hasher)}  # fmt: skip
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=json.dumps(header))
        schema.add_field(_ID, DataType.INT64, is_primary=True)
        schema.add_field(_CODE, DataType.BINARY_VECTOR, dim=self.bits)
        schema.add_field(_FEATURE, DataType.FLOAT_VECTOR, dim=self.dim)
        if labelled:
            schema.add_field(_LABEL, DataType.INT64)
        params = self._client.prepare_index_params()
        code_params = {"nlist": self.limits.nlist} if self.index_type == "BIN_IVF_FLAT" else {}
        params.add_index(_CODE, index_type=self.index_type, metric_type="HAMMING", params=code_params)
        params.add_index(_FEATURE, index_type="FLAT", metric_type=_FEATURE_METRIC[self.metric])
        try:
            self._client.create_collection(
                self.collection, schema=schema, index_params=params, consistency_level="Strong"
            )
        except MilvusException as e:
            raise InputError(f"Milvus refused the collection (index_type={self.index_type}): {e.message}") from None
        self._created, self._labelled = True, labelled

    def close(self) -> None:
        """Close this index's connection (other indexes on the same uri keep theirs).

        On a local milvus-lite file, closing the last MilvusHashIndex of this process on that
        file also stops the embedded milvus-lite server, which releases the file's lock so
        another process can open it. (A pymilvus client the caller opened on the same file
        in this process loses its server too.) Closing twice is harmless.
        """
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._client.close()
        if self._local_db is None:
            return
        with _LOCAL_LOCK:
            left = _LOCAL_USERS.get(self._local_db, 1) - 1
            if left > 0:
                _LOCAL_USERS[self._local_db] = left
                return
            _LOCAL_USERS.pop(self._local_db, None)
            try:
                from milvus_lite.server_manager import server_manager_instance
            except ImportError:  # pragma: no cover - a local .db always runs through milvus-lite
                return
            server_manager_instance.release_server(self._local_db)

    def __enter__(self) -> "MilvusHashIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        if self._client.has_collection(self.collection):
            self._client.drop_collection(self.collection)
        self._created, self._next_id, self._labelled = False, None, False

    # -- basic facts ------------------------------------------------------------------------------
    def __len__(self) -> int:
        if not self._created:
            return 0
        res = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def __repr__(self) -> str:
        return (
            f"MilvusHashIndex(dim={self.dim}, bits={self.bits}, uri={self.uri!r}, collection={self.collection!r}, "
            f"metric={self.metric!r}, rerank={self.rerank_mode!r}, index_type={self.index_type!r})"
        )

    # -- storage hooks (the front checks inputs, then calls these) --------------------------------
    backend_name = "Milvus"
    SHARING = (
        "open it in each process with MilvusHashIndex(dim, uri=..., collection=...) on a Milvus server "
        "(a milvus-lite .db file is locked by the process that opened it)"
    )
    RANKINGS = ("hamming",)  # Milvus scores binary vectors by Hamming distance only

    def _writing(self):
        return self._write_lock

    def _hasher_frozen(self) -> bool:
        return self._created  # the collection header records the hasher

    def _next_auto_id(self) -> int:
        if self._next_id is None:
            self._next_id = self._max_id() + 1
        return self._next_id

    def _has_labels(self) -> bool | None:
        return self._labelled if self._created else None

    def _insert(self, codes: np.ndarray, x: np.ndarray, ids: np.ndarray, labels: np.ndarray | None = None) -> None:
        self._ensure_collection(labelled=labels is not None)
        row_bytes = 16 + self._nbytes + 4 * self.dim
        step = max(1, self.limits.insert_bytes // row_bytes)
        for s in range(0, ids.size, step):
            rows = [
                {_ID: int(i), _CODE: c.tobytes(), _FEATURE: f}
                for i, c, f in zip(ids[s : s + step], codes[s : s + step], x[s : s + step])
            ]
            if labels is not None:
                for row, lab in zip(rows, labels[s : s + step].tolist()):
                    row[_LABEL] = lab
            self._client.insert(self.collection, rows)
        self._next_id = max(self._next_auto_id(), int(ids.max()) + 1)

    def _delete(self, ids: np.ndarray) -> None:
        present = self._present_mask(ids)
        if not present.all():
            raise UnknownIdError(f"ids not in the index: {ids[~present][:5].tolist()}")
        step = self.limits.delete_ids  # one request up to this many ids (MilvusLimits.delete_ids)
        for s in range(0, ids.size, step):
            self._client.delete(self.collection, ids=ids[s : s + step].tolist())

    def _features_of(self, ids: np.ndarray) -> np.ndarray:
        uniq, values = self._rows_by_id(ids, _FEATURE)
        table = np.asarray(values, dtype=np.float32).reshape(uniq.size, self.dim)
        return table[np.searchsorted(uniq, ids)]

    def _codes_of(self, ids: np.ndarray) -> np.ndarray:
        uniq, values = self._rows_by_id(ids, _CODE)
        return _codes_table(values, self._nbytes)[np.searchsorted(uniq, ids)]

    def _labels_of(self, ids: np.ndarray) -> np.ndarray:
        uniq, values = self._rows_by_id(ids, _LABEL, step=self.limits.fetch_ids)
        return np.asarray(values, dtype=np.int64).reshape(uniq.size)[np.searchsorted(uniq, ids)]

    # -- whole-collection views ---------------------------------------------------------------------
    def _scan(self, fields: list[str]) -> list[dict]:
        """Every row's ``fields`` (Milvus's order), through a query iterator."""
        if not self._created:
            return []
        it = self._client.query_iterator(
            self.collection, batch_size=self.limits.fetch_ids, filter="", output_fields=fields
        )
        rows: list[dict] = []
        try:
            while batch := it.next():
                rows += batch
        finally:
            it.close()
        return rows

    @property
    def ids(self) -> np.ndarray:
        """All ids, ascending (Milvus has no storage order to expose)."""
        return np.sort(np.array([r[_ID] for r in self._scan([_ID])], dtype=np.int64))

    @property
    def codes(self) -> np.ndarray:
        """All codes ``uint8 [N, bits/8]``, in the order of :attr:`ids`."""
        rows = sorted(self._scan([_ID, _CODE]), key=lambda r: r[_ID])
        return _codes_table([r[_CODE] for r in rows], self._nbytes)

    def memory_usage(self) -> dict[str, int]:
        raise UnsupportedError("memory_usage is not supported by the Milvus backend: the data lives in the Milvus server")

    # -- id lookup --------------------------------------------------------------------------------
    def _fetch(self, ids: np.ndarray, fields: list[str], step: int | None = None) -> list[dict]:
        """Rows for distinct ``ids`` (any order; absent ids are simply missing)."""
        if not self._created or ids.size == 0:
            return []
        rows: list[dict] = []
        step = step or (self.limits.fetch_ids if fields == [_ID] else self.limits.fetch_rows)
        for start in range(0, ids.size, step):
            chunk = ids[start : start + step]
            rows += self._client.query(self.collection, filter=f"{_ID} in {chunk.tolist()}", output_fields=fields)
        return rows

    def _present_mask(self, ids: np.ndarray) -> np.ndarray:
        found = np.array([r[_ID] for r in self._fetch(np.unique(ids), [_ID])], dtype=np.int64)
        return np.isin(ids, found)

    def _rows_by_id(self, ids: np.ndarray, field: str | list[str], step: int | None = None) -> tuple[np.ndarray, list]:
        """``(sorted distinct ids, their values of field)`` for ``ids``; UnknownIdError if any is absent.
        With a list of fields, each value is the row (a dict)."""
        uniq = np.unique(ids)
        fields = field if isinstance(field, list) else [field]
        rows = self._fetch(uniq, [_ID, *fields], step)
        got = np.array([r[_ID] for r in rows], dtype=np.int64)
        if got.size != uniq.size:
            missing = np.setdiff1d(uniq, got)
            raise UnknownIdError(f"ids not in the index: {missing[:5].tolist()}")
        order = np.argsort(got)
        return got[order], [rows[i] if isinstance(field, list) else rows[i][field] for i in order]

    def _max_id(self) -> int:
        """Largest stored id (-1 when empty): one pass over the ids, done once per object."""
        if not self._created:
            return -1
        return max((r[_ID] for r in self._scan([_ID])), default=-1)

    # -- Hamming stage (in Milvus) ----------------------------------------------------------------
    def _filter_exprs(self, restriction: Restriction | None) -> list[str] | None:
        """Milvus boolean expressions whose union is the allow-list (None: no filter)."""
        if restriction is None:
            return None
        label = None if restriction.labels is None else f"{_LABEL} in {restriction.labels.tolist()}"
        if restriction.ids is None:
            return [label]
        step = self.limits.fetch_ids
        exprs = [f"{_ID} in {restriction.ids[s : s + step].tolist()}" for s in range(0, restriction.ids.size, step)]
        return [e if label is None else f"{e} and {label}" for e in exprs]

    def _count_allowed(self, exprs: list[str] | None) -> int:
        if exprs is None:
            return len(self)
        return sum(
            int(self._client.query(self.collection, filter=e, output_fields=["count(*)"])[0]["count(*)"]) for e in exprs
        )

    def _hamming_search(self, qcodes: np.ndarray, limit: int, radius: int | None, exprs: list[str] | None = None) -> Candidates:
        """k-NN (radius None) or range search (Hamming <= radius) -> CSR ``(lims, ids, hamming)``,
        among the items matching one of ``exprs`` (their union; None: every item)."""
        if exprs is not None and len(exprs) > 1:  # one search per id chunk; the best `limit` of their union
            parts = [self._hamming_search(qcodes, limit, radius, [e]) for e in exprs]
            lims, ids, ham = parts[0]
            for p in parts[1:]:
                lims, ids, ham = _union_csr((lims, ids, ham), p, None if radius is not None else limit)
            return Candidates(lims, ids, ham)
        params: dict[str, Any] = {"metric_type": "HAMMING", "params": {}}
        extra = {} if not exprs else {"filter": exprs[0]}
        if self.index_type == "BIN_IVF_FLAT":
            params["params"]["nprobe"] = self.limits.nprobe
        if radius is not None:
            params["params"]["radius"] = radius + 1  # Milvus: d < radius (exclusive)
        step = max(1, self.limits.search_hits // limit)
        parts = []
        for s in range(0, qcodes.shape[0], step):
            data = [c.tobytes() for c in qcodes[s : s + step]]
            res = self._client.search(
                self.collection, data=data, anns_field=_CODE, limit=limit, search_params=params, **extra
            )
            parts.append(hits_to_csr(res))
        lims = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(p[0]) for p in parts]))])
        ids = np.concatenate([p[1] for p in parts])
        hamming = np.rint(np.concatenate([p[2] for p in parts]))
        if radius is not None:
            full = np.flatnonzero(np.diff(lims) >= MILVUS_MAX_TOPK)
            if full.size:
                raise InputError(
                    f"Hamming radius {radius} gives at least {MILVUS_MAX_TOPK} candidates for queries "
                    f"{full[:5].tolist()}, Milvus's cap on results per query: use a smaller radius or candidates="
                )
        return from_csr(lims, ids, hamming)

    # -- the search protocol (serving/search.py): keys are ids -----------------------------------------
    _max_candidates = MILVUS_MAX_TOPK

    def _restrict(self, restriction: Restriction, nq: int) -> Scope:
        if not self._created:
            return Scope(0)
        exprs = self._filter_exprs(restriction)
        return Scope(self._count_allowed(exprs), exprs)

    def _hamming_range(self, qcodes: np.ndarray, radius: int, scope: Scope) -> Candidates:
        return self._hamming_search(qcodes, MILVUS_MAX_TOPK, radius, scope.handle)

    def _hamming_knn(self, qcodes: np.ndarray, c: int, scope: Scope) -> Candidates:
        if c > MILVUS_MAX_TOPK:
            raise InputError(f"{c} Hamming-nearest candidates asked, Milvus returns at most {MILVUS_MAX_TOPK}")
        return self._hamming_search(qcodes, c, None, scope.handle)

    def _rows(self, keys: np.ndarray, *, features: bool = False, labels: bool = False, codes: bool = False) -> Rows:
        """The distinct ids among ``keys`` fetched once (sorted: equal scores rank by id)."""
        fields = [f for f, want in ((_FEATURE, features), (_LABEL, labels and self._labelled), (_CODE, codes)) if want]
        if not fields:
            uniq = np.unique(keys)
            return Rows(np.searchsorted(uniq, keys), uniq, keys=uniq)
        uniq, rows = self._rows_by_id(keys, fields) if keys.size else (np.empty(0, np.int64), [])
        table = Rows(np.searchsorted(uniq, keys), uniq, keys=uniq)
        if features:
            table = replace(table, features=np.asarray([r[_FEATURE] for r in rows], np.float32).reshape(uniq.size, self.dim))
        if labels and self._labelled:
            table = replace(table, labels=np.array([r[_LABEL] for r in rows], dtype=np.int64))
        if codes:
            table = replace(table, codes=_codes_table([r[_CODE] for r in rows], self._nbytes))
        return table

    def _rerank(self, x: np.ndarray, cands: Candidates, k: int):
        """``rerank="milvus"``: one FLOAT_VECTOR search per query, filtered to its candidate ids."""
        if self.rerank_mode != "milvus" or not cands.keys.size:
            return super()._rerank(x, cands, k)
        lims, cand, hamming = cands
        nq = x.shape[0]
        out_ids = np.full((nq, k), -1, np.int64)
        out_scores = np.full((nq, k), -np.inf if higher_is_better(self.metric) else np.inf, np.float32)
        out_ham = np.full((nq, k), -1, np.int32)
        params = {"metric_type": _FEATURE_METRIC[self.metric]}
        for q in range(nq):
            lo, hi = lims[q], lims[q + 1]
            if hi == lo:
                continue
            qids = cand[lo:hi]
            res = self._client.search(
                self.collection, data=[x[q]], anns_field=_FEATURE, limit=int(min(k, hi - lo)),
                filter=f"{_ID} in {qids.tolist()}", search_params=params, output_fields=[_ID],
            )  # fmt: skip
            _, got, score = hits_to_csr(res)
            order = np.argsort(qids, kind="stable")
            out_ids[q, : got.size] = got
            out_scores[q, : got.size] = score
            out_ham[q, : got.size] = hamming[lo:hi][order][np.searchsorted(qids[order], got)]
        return out_ids, out_scores, out_ham


def _union_csr(a: Candidates, b: Candidates, limit: int | None) -> Candidates:
    """Per query, the hits of two CSR results over disjoint items; with ``limit``, only the
    ``limit`` Hamming-nearest of them (ties by id)."""
    nq = len(a[0]) - 1
    q = np.concatenate([np.repeat(np.arange(nq), np.diff(a[0])), np.repeat(np.arange(nq), np.diff(b[0]))])
    ids, ham = np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]])
    order = np.lexsort((ids, ham, q))
    q, ids, ham = q[order], ids[order], ham[order]
    if limit is not None:
        starts = np.searchsorted(q, np.arange(nq))
        keep = (np.arange(q.size) - starts[q]) < limit
        q, ids, ham = q[keep], ids[keep], ham[keep]
    lims = np.concatenate([[0], np.cumsum(np.bincount(q, minlength=nq))]).astype(np.int64)
    return Candidates(lims, ids, ham)


def _codes_table(values: list, nbytes: int) -> np.ndarray:
    """pymilvus binary vectors (each a one-element list of bytes) -> ``uint8 [n, nbytes]``."""
    raw = b"".join(v[0] if isinstance(v, list) else v for v in values)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(values), nbytes)
