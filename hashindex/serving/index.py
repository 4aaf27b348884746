"""HashIndex: binary codes in FAISS for the candidate stage, exact float reranking after it.

Serving path: numpy + faiss only (an ONNX encoder brings onnxruntime, never torch). Search modes
and rankings are the front's (:mod:`hashindex.serving.front`); this module stores the items in
row arrays and finds candidates with FAISS.

Backends for the Hamming stage: ``flat`` (IndexBinaryFlat, exact for everything and the source
of truth), ``hash`` (IndexBinaryHash) and ``multihash`` (IndexBinaryMultiHash), both exact for
range queries by the nflip / nhash rules, and ``auto`` (see :meth:`HashIndex.backend_for`).
Asymmetric ranking scans the same codes with FAISS fast-scan PQ (candidates/asymmetric.py),
either all of them (the flat scan) or, with ``nprobe``, only the k-means lists nearest to the
query (the partition stage, candidates/partitions.py; see ``partitions=``). A filtered search
scans the allowed rows exactly instead, never the lists (serving/filters.py).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import faiss
import numpy as np

from hashindex.core.errors import IndexFormatError, InputError, ModelMismatchError, NotFittedError, UnknownIdError
from hashindex.core.validation import MAX_ID, check_positive_int
from hashindex.serving import persist
from hashindex.serving.candidates.asymmetric import AsymmetricCandidates
from hashindex.serving.candidates.binary import FlatCandidates, HashCandidates, MultiHashCandidates
from hashindex.serving.candidates.csr import Candidates, from_knn
from hashindex.serving.candidates.filtered import AllowedRows, asymmetric_knn_rows
from hashindex.serving.candidates.partitions import PartitionStage, nlist_for
from hashindex.serving.front import (
    DEFAULT_BITS,
    RANKINGS,
    IndexFront,
    check_choice,
    PartitionInfo,
    Rows,
    Scope,
    SearchResult,
    check_ranking,
    resolve_hasher,
)
from hashindex.serving.filters import Restriction
from hashindex.serving.hashers import Hasher, LinearHasher
from hashindex.serving.locks import ReadWriteLock
from hashindex.serving.store import RowStore
from hashindex.serving.tuning import points_from_manifest, points_to_manifest

__all__ = ["HashIndex", "SearchResult", "DEFAULT_BITS", "RANKINGS", "check_ranking", "describe"]

BACKENDS = ("flat", "hash", "multihash", "auto")
FEATURE_DTYPES = ("float32", "float16")
# auto: accelerators pay off only on large galleries and small radii (benchmarks/backends.py).
AUTO_MIN_ITEMS = 100_000
AUTO_MAX_RADIUS = 3
_EXACT_BLOCK = 1 << 18  # gallery rows per exact-search block (float16 stores are converted per block)
# partitions="auto" builds a partition stage from this many items. The flat asymmetric scan
# costs time per item and the partition stage a fixed overhead (coarse search, per-list costs)
# plus the lists it scans, so it can only win where the flat scan costs well above that
# overhead (an estimate from the measurements in benchmarks/README.md); below it k-means would
# also train on fewer than 64 points per list of 2*sqrt(N) lists.
PARTITION_MIN_ITEMS = 100_000
PARTITION_MODES = ("auto",)
_PARTITION_FILES = ("partition_centroids.npy", "partition_assign.npy")


class HashIndex(IndexFront):
    """Binary-code index with exact reranking.

    Args:
        dim: feature dimension D.
        hasher: anything with ``bits`` and ``encode(features) -> uint8 [N, bits/8]``: a
            :class:`~hashindex.serving.hashers.LinearHasher` (default: ITQ, fitted on the first ``add``)
            or an :class:`~hashindex.serving.encoder.OnnxEncoder`.
        encoder: alias of ``hasher`` for ONNX encoders.
        bits: code length when no hasher is given (default 128, capped at ``dim``).
        metric: "cosine" (features L2-normalised on the way in), "ip" or "l2".
        backend: "flat", "hash", "multihash" or "auto".
        feature_dtype: "float32" or "float16" for the feature store.
        partitions: the partition stage searched with ``nprobe`` (asymmetric ranking):
            ``"auto"`` (default) builds ``nlist_for(N)`` (~2 sqrt(N), a power of two) lists once
            the index holds ``PARTITION_MIN_ITEMS`` items; an int builds that many lists (the
            index must hold at least that many items); ``None`` never builds one. It is built
            on first use (``nprobe=``, or :meth:`tune`), kept in step by ``add``, rebuilt after
            ``remove`` and saved with the index. Without one, searches scan every code (the
            flat scan) and :meth:`tune` measures only that.
        partition_spill: lists each item is put in: 2 (default) is its nearest list plus the one
            SOAR's rule picks, which lowers the lists a high recall target must probe on
            face-like data for a few more bytes per item (benchmarks/README.md); 1: nearest only.
    """

    def __init__(
        self,
        dim: int,
        hasher: Hasher | None = None,
        *,
        encoder: Hasher | None = None,
        bits: int | None = None,
        metric: str = "cosine",
        backend: str = "auto",
        feature_dtype: str = "float32",
        partitions: str | int | None = "auto",
        partition_spill: int = 2,
    ):
        dim = check_positive_int(dim, "dim")
        if partitions is not None and partitions not in PARTITION_MODES:
            if isinstance(partitions, str):
                raise InputError(f"partitions must be 'auto', a number of lists or None, got {partitions!r}")
            partitions = check_positive_int(partitions, "partitions (number of lists)")
        partition_spill = check_positive_int(partition_spill, "partition_spill")
        check_choice("backend", backend, BACKENDS)
        if feature_dtype not in FEATURE_DTYPES:
            raise InputError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {feature_dtype!r}")
        self._init_front(dim, resolve_hasher(dim, hasher, encoder, bits), metric)
        self.backend = backend
        self.feature_dtype = feature_dtype
        self._codes = RowStore((self._nbytes,), np.uint8)
        self._ids = RowStore((), np.int64)
        self._features = RowStore((self.dim,), np.dtype(feature_dtype))
        self._labels = RowStore((), np.int64)  # filled only when the index is labelled
        self._labelled: bool | None = None  # decided by the first insert
        self._next_id = 0
        self._flat = FlatCandidates(self.bits)
        # built on first use, kept in step by add, dropped by remove
        self._accel: dict[str, HashCandidates | MultiHashCandidates | AsymmetricCandidates] = {}
        self._id_lookup: tuple[np.ndarray, np.ndarray] | None = None  # (sorted ids, positions)
        self._lock = ReadWriteLock()
        self.partitions = partitions
        self.partition_spill = partition_spill
        # the partition stage, once trained: its coarse quantizer (+ lists, built lazily) and the
        # assignment int32 [N, spill], a row array beside the codes (compacts and saves with them)
        self._part: PartitionStage | None = None
        self._part_assign: RowStore | None = None
        self._build_lock = threading.Lock()  # searches build lazily under the read lock: one at a time
        self._list_sizes: tuple[tuple[int, int], np.ndarray] | None = None  # (lists' identity, sizes)

    # -- basic facts -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"HashIndex(dim={self.dim}, bits={self.bits}, n={len(self)}, metric={self.metric!r}, "
            f"backend={self.backend!r}, feature_dtype={self.feature_dtype!r}, partitions={self.partitions!r})"
        )

    @property
    def ids(self) -> np.ndarray:
        """All ids, in storage order (a copy)."""
        return self._ids.array.copy()

    @property
    def codes(self) -> np.ndarray:
        """All codes ``uint8 [N, bits/8]``, in storage order (a read-only view)."""
        view = self._codes.array.view()
        view.flags.writeable = False
        return view

    def memory_usage(self) -> dict[str, int]:
        """Bytes held per component (codes are held twice: the store and the FAISS flat index;
        a third time once an asymmetric search has built its scanner, and "codes" also counts
        the partition stage: its lists of codes and ids, assignment and centroids)."""
        asym = self._accel.get("asymmetric")
        part = 0
        if self._part is not None:
            part = self._part.nbytes + self._part_assign.nbytes
        usage = {
            "codes": self._codes.nbytes * 2 + (asym.nbytes if asym is not None else 0) + part,
            "ids": self._ids.nbytes,
            "features": self._features.nbytes,
        }
        if self._labelled:
            usage["labels"] = self._labels.nbytes
        return usage

    # -- storage hooks (under the front's locks) ---------------------------------------------
    def _reading(self):
        return self._lock.read()

    def _writing(self):
        return self._lock.write()

    def _next_auto_id(self) -> int:
        return self._next_id

    def _has_labels(self) -> bool | None:
        return self._labelled

    def _insert(self, codes: np.ndarray, x: np.ndarray, ids: np.ndarray, labels: np.ndarray | None = None) -> None:
        # everything is validated; from here on nothing can fail on user input
        if self._part is not None:  # new items join their nearest lists
            assign = self._part.assign(x)
            self._part.append(codes, len(self), assign)
            self._part_assign.append(assign)
        self._codes.append(codes)
        self._ids.append(ids)
        self._features.append(x)
        self._labelled = labels is not None
        if labels is not None:
            self._labels.append(labels)
        self._flat.add(codes)
        for accel in self._accel.values():
            accel.add(codes)
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._id_lookup = None

    def _delete(self, ids: np.ndarray) -> None:
        positions = self._positions_of(ids)
        keep = np.ones(len(self), dtype=bool)
        keep[positions] = False
        for store in (self._codes, self._ids, self._features) + ((self._labels,) if self._labelled else ()):
            store.keep(keep)
        self._flat.rebuild(self._codes.array)
        self._accel.clear()  # hash indexes have no remove_ids: rebuilt lazily on next use
        if self._part is not None:
            # positions compact: keep the assignment's rows, rebuild the lists from it on next use
            self._part_assign.keep(keep)
            self._part.drop_lists()
        self._id_lookup = None

    def _features_of(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self._features.take(self._positions_of(ids)), dtype=np.float32)

    def _codes_of(self, ids: np.ndarray) -> np.ndarray:
        return self._codes.take(self._positions_of(ids))

    def _labels_of(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self._labels.take(self._positions_of(ids)), dtype=np.int64)

    # -- id lookup ---------------------------------------------------------------------------
    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        table = self._id_lookup
        if table is None:
            order = np.argsort(self._ids.array, kind="stable")
            table = (self._ids.array[order], order)
            self._id_lookup = table
        return table

    def _present_mask(self, ids: np.ndarray) -> np.ndarray:
        sorted_ids, _ = self._lookup()
        if sorted_ids.size == 0:
            return np.zeros(ids.shape, dtype=bool)
        at = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
        return sorted_ids[at] == ids

    def _positions_of(self, ids: np.ndarray) -> np.ndarray:
        present = self._present_mask(ids)
        if not present.all():
            raise UnknownIdError(f"ids not in the index: {ids[~present][:5].tolist()}")
        sorted_ids, order = self._lookup()
        return order[np.searchsorted(sorted_ids, ids)]

    # -- Hamming stage ------------------------------------------------------------------------
    def backend_for(self, radius: int) -> str:
        """The backend a range query at ``radius`` runs on.

        ``auto`` follows benchmarks/backends.py (results in benchmarks/README.md): flat below
        AUTO_MIN_ITEMS items; hash for radius <= 1 (one bucket probe per flipped-bit pattern);
        multihash where its tables need no flips (radius < nhash), else hash up to radius 2 and
        multihash at 3; flat beyond, where probing costs more than a scan. An explicit hash /
        multihash backend runs a radius it would probe too many buckets for on the flat scan
        (exact too; :meth:`_hamming_range`).
        """
        if self.backend != "auto":
            return self.backend
        if len(self) < AUTO_MIN_ITEMS or radius > AUTO_MAX_RADIUS:
            return "flat"
        nhash, _ = MultiHashCandidates.default_params(self.bits, len(self))
        if radius <= 1:
            return "hash"
        if radius < nhash:
            return "multihash"
        return "hash" if radius <= 2 else "multihash"

    def _generator(self, name: str):
        if name == "flat":
            return self._flat
        accel = self._accel.get(name)
        if accel is None:
            n = len(self)
            if name == "hash":
                accel = HashCandidates(self.bits, HashCandidates.default_hash_bits(self.bits, n))
            elif name == "asymmetric":
                accel = AsymmetricCandidates(self.bits)
            else:
                accel = MultiHashCandidates(self.bits, *MultiHashCandidates.default_params(self.bits, n))
            accel.rebuild(self._codes.array)
            self._accel[name] = accel
        return accel

    # -- the search protocol (serving/search.py; under the read lock) ----------------------------
    def _restrict(self, restriction: Restriction, nq: int) -> Scope:
        """The rows an allow-list admits, as an :class:`AllowedRows` scope."""
        n = len(self)
        if restriction.ids is not None:
            wanted = restriction.ids[self._present_mask(restriction.ids)]
            mask = np.zeros(n, dtype=bool)
            mask[self._positions_of(wanted)] = True
        else:
            mask = np.ones(n, dtype=bool)
        if restriction.labels is not None:
            mask &= np.isin(self._labels.array, restriction.labels)
        allowed = AllowedRows(mask, self._flat, self._codes.array, nq)
        return Scope(allowed.count, allowed)

    def _hamming_range(self, qcodes: np.ndarray, radius: int, scope: Scope) -> Candidates:
        if scope.handle is not None:  # exact flat scans only (candidates/filtered.py)
            return scope.handle.range(qcodes, radius)
        return self._range_generator(radius).range(qcodes, radius)

    def _range_generator(self, radius: int):
        generator = self._generator(self.backend_for(radius))
        if not generator.handles(radius):
            generator = self._flat  # exact too, and cheaper than probing this many buckets
        return generator

    def _range_scans(self, radius: int, scope: Scope) -> bool:
        return scope.handle is not None or self._range_generator(radius) is self._flat

    def _hamming_knn(self, qcodes: np.ndarray, c: int, scope: Scope) -> Candidates:
        return from_knn(*(self._flat if scope.handle is None else scope.handle).knn(qcodes, c))

    def _asymmetric_knn(self, x: np.ndarray, z: np.ndarray, c: int, nprobe: int | None, scope: Scope) -> Candidates:
        """Positions by asymmetric score, from every code, (``nprobe``) the nearest lists, or (a
        filtered scope) the allowed rows, scored exactly; their Hamming column is 0 (the pipeline
        fills in the results'). A query the fast-scan or the lists leave short of ``c`` (its
        8-bit tables can tie every item at the minimum; a degenerate query finds no list) is
        scored exactly over every row instead."""
        if scope.handle is not None:
            pos = asymmetric_knn_rows(z, self._codes.array, scope.handle.positions, c)
        else:
            pos = self._generator("asymmetric").knn(z, c)[0] if nprobe is None else self._partitioned().knn(x, z, c, nprobe)[0]
            short = (pos < 0).all(axis=1) if nprobe is not None else (pos < 0).any(axis=1)
            if short.any():
                pos = pos.copy()
                pos[short] = asymmetric_knn_rows(z[short], self._codes.array, np.arange(len(self)), c)
        return from_knn(pos, np.zeros(pos.shape, np.int32))

    def _rows(self, keys: np.ndarray, *, features: bool = False, labels: bool = False, codes: bool = False) -> Rows:
        """Positions are keys: the stores themselves, no copy."""
        return Rows(keys, self._ids.array, self._features.array, self._labels.array if self._labelled else None,
                    self._codes.array)  # fmt: skip

    def _probed_sizes(self, x: np.ndarray, nprobe: int) -> np.ndarray:
        """Items in the ``nprobe`` lists nearest each query (spilled items count per list)."""
        stage = self._partitioned()
        _, lists = stage.coarse.search(np.ascontiguousarray(x, dtype=np.float32), min(nprobe, stage.nlist))
        key = (id(stage.ivf), stage.ivf.ntotal)
        if self._list_sizes is None or self._list_sizes[0] != key:
            self._list_sizes = (key, stage.list_sizes())
        sizes = self._list_sizes[1]
        return np.where(lists >= 0, sizes[np.maximum(lists, 0)], 0).sum(axis=1).astype(np.int64)

    # -- partition stage -------------------------------------------------------------------------
    @property
    def partition_lists(self) -> int | None:
        """Lists of the partition stage (as built, or as it would be built now); None when the
        index has none and cannot build one (the valid ``nprobe`` values are 1 .. this)."""
        with self._lock.read():
            return self._partition_plan()[0]

    def _partition_plan(self) -> tuple[int | None, str]:
        """(lists the stage has or would be built with now, or None; why not, if None)."""
        if self._part is not None:
            return self._part.nlist, ""
        n = len(self)
        if self.partitions is None:
            return None, "this index has no partition stage (partitions=None)"
        if self.partitions == "auto":
            if n < PARTITION_MIN_ITEMS:
                return None, (
                    f"partitions='auto' builds a partition stage from {PARTITION_MIN_ITEMS:,} items and this index "
                    f"holds {n:,}: below that the flat scan (no nprobe) is as fast; to force one, build the index "
                    f"with partitions=<number of lists>"
                )
            return nlist_for(n), ""
        if self.partitions > n:
            return None, (
                f"more lists than items: partitions={self.partitions} but the index holds {n:,} items, too few to "
                f"train {self.partitions} k-means lists (use fewer lists, or partitions='auto')"
            )
        return self.partitions, ""

    def _check_nprobe(self, nprobe: int) -> None:
        with self._lock.read():
            nlist, why = self._partition_plan()
        if nlist is None:
            raise InputError(f"nprobe={nprobe} needs a partition stage: {why}")
        if nprobe > nlist:
            raise InputError(f"nprobe={nprobe} exceeds the partition stage's {nlist} lists")

    def _partitioned(self) -> PartitionStage:
        """The partition stage with its lists, trained and built on first use (under the read lock)."""
        with self._build_lock:
            if self._part is None:
                nlist, why = self._partition_plan()
                if nlist is None:
                    raise InputError(why)
                stage = PartitionStage.train(self.bits, self._features.array, nlist, self.metric, self.partition_spill)
                self._part_assign = RowStore((stage.spill,), np.int32, stage.assign(self._features.array))
                self._part = stage
            if not self._part.has_lists:
                self._part.build(self._codes.array, self._part_assign.array)
            return self._part

    def partition_info(self) -> PartitionInfo:
        with self._lock.read():
            nlist, why = self._partition_plan()
            built = self._part is not None
        return PartitionInfo(nlist, built, isinstance(self.partitions, int), why)

    def _exact_knn(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over every stored item (the tuner's ground truth), in blocks of rows."""
        metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock.read():
            features, n = self._features.array, len(self)
            k = min(k, n)
            heap = faiss.ResultHeap(x.shape[0], k, keep_max=metric == faiss.METRIC_INNER_PRODUCT)
            for lo in range(0, n, _EXACT_BLOCK):
                block = np.ascontiguousarray(features[lo : lo + _EXACT_BLOCK], dtype=np.float32)
                d, i = faiss.knn(x, block, k, metric=metric)
                heap.add_result(d, np.where(i >= 0, i + lo, -1))
            heap.finalize()
            return self._ids.array[heap.I], heap.D

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the index directory atomically (ARCHITECTURE.md §4); a labelled index adds
        ``labels.npy`` (int64 [N], listed and checksummed in the manifest like the others)."""
        with self._lock.read():
            manifest = {
                "bits": self.bits,
                "dim": self.dim,
                "metric": self.metric,
                "backend": self.backend,
                "feature_dtype": self.feature_dtype,
                "count": len(self),
                "next_id": self._next_id,
                "partitions": self.partitions,
                "partition_spill": self.partition_spill,
            }
            writers = {
                "codes.npy": lambda p: np.save(p, self._codes.array),
                "ids.npy": lambda p: np.save(p, self._ids.array),
                "features.npy": lambda p: np.save(p, self._features.array),
            }
            if self._labelled is not None:
                manifest["labelled"] = self._labelled
            if self._labelled:
                writers["labels.npy"] = lambda p: np.save(p, self._labels.array)
            if self._part is not None:  # centroids + assignment; the lists are rebuilt from codes.npy
                manifest["partition_nlist"] = self._part.nlist
                part, assign = self._part, self._part_assign
                writers["partition_centroids.npy"] = lambda p: np.save(p, part.centroids)
                writers["partition_assign.npy"] = lambda p: np.save(p, assign.array)
            if self._operating_points:
                manifest["operating_points"] = points_to_manifest(self._operating_points)
            if isinstance(self.hasher, LinearHasher):
                if not self.hasher.is_fitted:
                    raise NotFittedError("cannot save an index whose hasher is not fitted")
                manifest["hasher"] = {"type": "linear", **self.hasher.to_dict()}
                writers["hasher.npz"] = self.hasher.save
            elif hasattr(self.hasher, "sha256") and hasattr(self.hasher, "path"):
                manifest["hasher"] = {"type": "onnx"}
                manifest["model_sha256"] = self.hasher.sha256
                writers["model.onnx"] = self._copy_model
            else:
                raise InputError(f"cannot save a hasher of type {type(self.hasher).__name__}")
            persist.write_index_dir(path, writers, manifest)

    def _copy_model(self, dest: Path) -> None:
        shutil.copyfile(self.hasher.path, dest)
        if persist.sha256_file(dest) != self.hasher.sha256:
            raise ModelMismatchError(f"{self.hasher.path} changed on disk since the encoder loaded it")

    @classmethod
    def load(
        cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True, encoder: Hasher | None = None
    ) -> "HashIndex":
        """Load an index directory, checking every file's SHA-256 (``verify``).

        ``mmap``: memory-map the feature and label stores (and the partition assignment) instead
        of reading them into memory. A saved partition stage comes back with its centroids and
        assignment; its lists are rebuilt from the codes on first use. An index saved before
        labels existed (no ``labels.npy``) loads without labels.
        ``encoder``: use this ONNX encoder instead of the stored model copy; it must be the very
        model the index was built with (same SHA-256 and bits).

        The load is snapshot-consistent (:func:`~hashindex.serving.persist.open_index_dir`):
        every file comes from one version of the directory even while another process saves
        over it, and the manifest is schema-checked before any field is used.
        """
        with persist.open_index_dir(path, verify=verify) as d:
            return cls._from_snapshot(d, mmap, encoder)

    @classmethod
    def _from_snapshot(cls, d: persist.IndexDir, mmap: bool, encoder: Hasher | None) -> "HashIndex":
        root, m = d.root, d.manifest  # fields typed and ranged by persist.INDEX_SCHEMA
        bits, dim, count = m["bits"], m["dim"], m["count"]
        metric, backend, fdtype = m["metric"], m["backend"], m["feature_dtype"]

        if m["hasher"]["type"] == "linear":
            hasher = LinearHasher.load(d.file("hasher.npz"), where=d.path_of("hasher.npz"))
        else:
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
        if hasher.bits != bits:
            raise ModelMismatchError(f"hasher gives {hasher.bits} bits, index was built with {bits}")

        try:
            index = cls(
                dim, hasher, metric=metric, backend=backend, feature_dtype=fdtype,
                partitions=m.get("partitions", "auto"), partition_spill=m.get("partition_spill", 1),
            )  # fmt: skip
        except InputError as e:
            raise IndexFormatError(f"{root}: invalid manifest ({e})") from None
        codes = d.load_array("codes.npy", np.uint8, (count, bits // 8))
        ids = d.load_array("ids.npy", np.int64, (count,))
        features = d.load_array("features.npy", np.dtype(fdtype), (count, dim), mmap=mmap)
        if count and (ids.min() < 0 or ids.max() > MAX_ID):
            bad = ids[(ids < 0) | (ids > MAX_ID)]
            raise IndexFormatError(f"{d.path_of('ids.npy')}: ids outside [0, 2**63 - 2]: {bad[:5].tolist()}")
        if np.unique(ids).size != ids.size:
            raise IndexFormatError(f"{d.path_of('ids.npy')}: repeated ids")
        index._codes = RowStore((bits // 8,), np.uint8, codes)
        index._ids = RowStore((), np.int64, ids)
        index._features = RowStore((dim,), np.dtype(fdtype), features)
        index._load_labels(d, m, mmap)
        index._flat.rebuild(codes)
        index._next_id = max(m["next_id"], int(ids.max()) + 1 if count else 0)
        index._load_partitions(d, m, mmap)
        return index

    def _load_labels(self, d: persist.IndexDir, m: dict, mmap: bool) -> None:
        """``labels.npy`` when the index is labelled (the schema ties the file to ``labelled``);
        an index saved before labels existed has neither and is label-less once it has items."""
        if "labels.npy" not in m["files"]:
            self._labelled = m.get("labelled", False if len(self) else None)
            return
        labels = d.load_array("labels.npy", np.int64, (len(self),), mmap=mmap)
        if labels.size and labels.min() < 0:
            raise IndexFormatError(f"{d.path_of('labels.npy')}: negative labels: {labels[labels < 0][:5].tolist()}")
        self._labels = RowStore((), np.int64, labels)
        self._labelled = True

    def _load_partitions(self, d: persist.IndexDir, m: dict, mmap: bool) -> None:
        """The saved partition stage and operating points, checked against each other: a point
        this index cannot honour (nprobe without the stage, or over its lists) is refused."""
        root = d.root
        present = [name for name in _PARTITION_FILES if name in m["files"]]
        if present and len(present) != len(_PARTITION_FILES):
            raise IndexFormatError(f"{root}: partition stage incomplete (has {present}, needs {list(_PARTITION_FILES)})")
        if present:
            nlist = m.get("partition_nlist")
            if isinstance(nlist, bool) or not isinstance(nlist, int) or nlist <= 0:
                raise IndexFormatError(f"{root}: manifest has partition files but partition_nlist={nlist!r}")
            centroids = d.load_array("partition_centroids.npy", np.float32, (nlist, self.dim))
            stage = PartitionStage(self.bits, centroids, self.metric, self.partition_spill)
            assign = d.load_array("partition_assign.npy", np.int32, (len(self), stage.spill), mmap=mmap)
            if assign.size and (int(assign.min()) < 0 or int(assign.max()) >= nlist):
                raise IndexFormatError(f"{d.path_of('partition_assign.npy')}: list numbers outside 0..{nlist - 1}")
            self._part = stage
            self._part_assign = RowStore((stage.spill,), np.int32, assign)
        try:
            points = points_from_manifest(m.get("operating_points", {}))
        except InputError as e:
            raise IndexFormatError(f"{root}: bad operating_points in the manifest ({e})") from None
        for (target, k), point in points.items():
            if point.nprobe is None:
                continue
            if self._part is None or point.nlist != self._part.nlist:
                have = "no partition stage" if self._part is None else f"{self._part.nlist} lists"
                raise IndexFormatError(
                    f"{root}: the operating point for recall {target:g}, k={k} scans {point.nprobe} of "
                    f"{point.nlist} partition lists but the saved index has {have}: it cannot honour it"
                )
        self._operating_points = points


def describe(path: str | os.PathLike) -> str:
    """Human-readable summary of an index directory (for ``hashindex info``)."""
    with persist.open_index_dir(path, verify=True) as d:
        root, m = d.root, d.manifest
    size = sum(f["bytes"] for f in m["files"].values())
    lines = [f"{root}: hashindex format {m['format']}, all checksums OK"]
    for key in ("count", "dim", "bits", "metric", "backend", "feature_dtype", "model_sha256"):
        if key in m:
            lines.append(f"  {key:14s} {m[key]}")
    lines.append(f"  {'hasher':14s} {json.dumps(m.get('hasher'))}")
    lines.append(f"  {'bytes on disk':14s} {size:,} ({size / max(m['count'], 1):.1f} per item)")
    for name, info in sorted(m["files"].items()):
        lines.append(f"    {name:14s} {info['bytes']:>14,}  sha256 {info['sha256'][:16]}...")
    return "\n".join(lines)
