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

import os
import threading

import faiss
import numpy as np

from hashindex.core.bits import check_bits
from hashindex.core.errors import IndexFormatError, InputError, UnknownIdError
from hashindex.core.validation import PARTITION_MODES  # noqa: F401 (importable from here as before)
from hashindex.core.validation import check_dim, check_hasher_kind, check_partition_spill, check_partitions
from hashindex.serving import index_format
from hashindex.serving.candidates.asymmetric import AsymmetricCandidates
from hashindex.serving.candidates.binary import FlatCandidates, HashCandidates, MultiHashCandidates
from hashindex.serving.candidates.csr import Candidates, from_knn
from hashindex.serving.candidates.filtered import AllowedRows, asymmetric_knn_rows
from hashindex.serving.candidates.partitions import PartitionStage, nlist_for
from hashindex.serving.front import (
    DEFAULT_BITS,
    PROGRESS_MIN_ROWS,
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
from hashindex.serving.faiss_settings import blas_products
from hashindex.serving.filters import Restriction
from hashindex.serving.hashers import Hasher, LinearHasher
from hashindex.serving.index_format import describe
from hashindex.serving.locks import ReadWriteLock
from hashindex.serving.store import RERANK_KINDS, CompactStore, FileRows, RowStore, advise, mapped_resident_bytes
from hashindex.serving.tuning import OperatingPoint

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
# also train on fewer than 64 points per list of nlist_for(N) lists.
PARTITION_MIN_ITEMS = 100_000


class HashIndex(IndexFront):
    """Binary-code index with exact reranking.

    Args:
        dim: feature dimension D.
        hasher: anything with ``bits`` and ``encode(features) -> uint8 [N, bits/8]``: a
            :class:`~hashindex.serving.hashers.LinearHasher` (default: residual ITQ, 128 + 64 bits
            at 128-d, fitted on the first ``add``) or an :class:`~hashindex.serving.encoder.OnnxEncoder`.
            The refinement stage lets the asymmetric scan rank the true neighbours among several
            times fewer candidates, which is what a recall@10 target costs (benchmarks/README.md).
        encoder: alias of ``hasher`` for ONNX encoders.
        bits: code length when no hasher is given (default 1.5x ``DEFAULT_BITS`` capped at
            ``dim``: 192 at 128-d; a ``bits`` one ITQ stage holds, e.g. 128 at 128-d, is plain ITQ).
        metric: "cosine" (features L2-normalised on the way in), "ip" or "l2".
        backend: "flat", "hash", "multihash" or "auto".
        feature_dtype: "float32" or "float16" for the feature store.
        rerank: the store candidates are ranked on before the exact rescoring: a compact copy of
            the features, "int6" (default: FAISS QT_6bit, 3/4 byte per dimension, a per-dimension
            range covering every stored row), "int8" (QT_8bit) or "float16" (QT_fp16), or
            "float32": the feature store itself. With a compact store its best 3k rows are
            rescored exactly from the feature store (k kept), which a loaded index memory-maps
            (``load(mmap=True)``): serving then holds the compact store in memory and reads the
            float rows of the results only. An index built in this process holds its float rows
            in memory as well until it is saved and loaded (benchmarks/memory.py).
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
        rerank: str = "int6",
    ):
        # the limits index_format's schema checks on load too (core/validation.py)
        dim = check_dim(dim)
        partitions = check_partitions(partitions)
        partition_spill = check_partition_spill(partition_spill)
        check_choice("backend", backend, BACKENDS)
        check_choice("rerank", rerank, RERANK_KINDS)
        if feature_dtype not in FEATURE_DTYPES:
            raise InputError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {feature_dtype!r}")
        hasher = resolve_hasher(dim, hasher, encoder, bits, default_kind="residual")
        check_bits(hasher.bits)  # an ONNX model's too
        if isinstance(hasher, LinearHasher):
            check_hasher_kind(hasher.kind)
        self._init_front(dim, hasher, metric)
        self.backend = backend
        self.feature_dtype = feature_dtype
        self._codes = RowStore((self._nbytes,), np.uint8)
        self._ids = RowStore((), np.int64)
        self._features = RowStore((self.dim,), np.dtype(feature_dtype))
        self._labels = RowStore((), np.int64)  # filled only when the index is labelled
        self._labelled: bool | None = None  # decided by the first insert
        self._next_id = 0
        self.rerank = rerank
        # the compact rerank store (None: rerank on the feature store itself)
        self._compact: CompactStore | None = None if rerank == "float32" else CompactStore(rerank, self.dim)
        # the FAISS flat binary index: a second copy of the codes, built on first Hamming use
        # (the asymmetric default never needs it), dropped by remove
        self._flat: FlatCandidates | None = None
        # a loaded, mapped float store read by pread for the final rescoring, and the mapped code
        # store read the same way for the results' Hamming distances (store.FileRows): the few
        # rows a search needs never bring their neighbours' pages into memory
        self._feature_file: FileRows | None = None
        self._code_file: FileRows | None = None
        # built on first use, kept in step by add, dropped by remove
        self._accel: dict[str, HashCandidates | MultiHashCandidates | AsymmetricCandidates] = {}
        self._id_lookup: tuple[np.ndarray, np.ndarray | None] | None = None  # see _lookup
        self._lock = ReadWriteLock()
        self.partitions = partitions
        self.partition_spill = partition_spill
        # the partition stage, once trained: its coarse quantizer (+ lists, built lazily) and the
        # assignment int32 [N, spill], a row array beside the codes (compacts and saves with them)
        self._part: PartitionStage | None = None
        self._part_assign: RowStore | None = None
        self._build_lock = threading.Lock()  # searches build lazily under the read lock: one at a time

    # -- basic facts -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"HashIndex(dim={self.dim}, bits={self.bits}, n={len(self)}, metric={self.metric!r}, "
            f"backend={self.backend!r}, feature_dtype={self.feature_dtype!r}, partitions={self.partitions!r}, "
            f"rerank={self.rerank!r})"
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
        """Bytes of memory held per part; their sum is what the index holds (benchmarks/memory.py
        checks it against the process's resident memory).

        Always: ``codes`` (the code store), ``ids``, ``features`` (the float store; when it is
        memory-mapped, only its resident pages: a loaded index touches the rows of the results).
        Present once held: ``rerank`` (the compact store), ``labels``, ``id_lookup`` (sorted ids
        for id -> row, built by the first lookup unless the ids are stored in increasing order), ``binary_flat`` (FAISS IndexBinaryFlat: a copy
        of the codes, built on first Hamming use), ``hash`` / ``multihash`` (their tables, an
        estimate: codes + 8-byte ids), ``asymmetric_scan`` (the flat fast-scan copy of the codes),
        ``partition_lists`` (codes in FAISS's 32-item blocks, each list's table as FAISS allocates
        it, or, where the scan reads six-bit lists, in 64-item blocks of exactly their size; +
        8-byte ids, ``spill`` times, + each entry's 2-byte other list when items sit in two),
        ``partition_centroids``, ``partition_assign``. Row stores
        count with their spare capacity (they grow by doubling)."""

        def held(store: RowStore) -> int:
            return store.held_bytes if not store.is_mmap else mapped_resident_bytes(store.array)

        usage = {"codes": held(self._codes), "ids": held(self._ids), "features": held(self._features)}
        if self._compact is not None:
            usage["rerank"] = self._compact.held_bytes
        if self._labelled:
            usage["labels"] = held(self._labels)
        if self._id_lookup is not None and self._id_lookup[1] is not None:
            usage["id_lookup"] = int(sum(a.nbytes for a in self._id_lookup))
        if self._flat is not None:
            usage["binary_flat"] = self._flat.index.ntotal * self._nbytes
        for name, accel in self._accel.items():
            if name == "asymmetric":
                usage["asymmetric_scan"] = accel.nbytes
            else:
                usage[name] = accel.index.ntotal * (self._nbytes + 8)
        if self._part is not None:
            usage["partition_centroids"] = 4 * self._part.nlist * self._part.dim
            usage["partition_lists"] = self._part.nbytes - usage["partition_centroids"]
            usage["partition_assign"] = held(self._part_assign)
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

    def _reserve(self, n: int, labelled: bool = False, extent: np.ndarray | None = None) -> None:
        need = len(self) + n
        for store in (self._codes, self._ids, self._features) + ((self._labels,) if labelled else ()):
            store.reserve(need)
        if self._compact is not None:
            self._compact.reserve(need)
            if extent is not None:  # the range covers the whole input before its first chunk is stored
                self._compact.cover(extent, self._features.array)
        if self._part_assign is not None:
            self._part_assign.reserve(need)

    def _insert(self, codes: np.ndarray, x: np.ndarray, ids: np.ndarray, labels: np.ndarray | None = None) -> None:
        # everything is validated; from here on nothing can fail on user input
        if self._part is not None:  # new items join their nearest lists
            assign = self._part.assign(x)
            self._part.append(codes, len(self), assign)
            self._part_assign.append(assign)
        self._codes.append(codes)
        self._ids.append(ids)
        if self._compact is not None:
            self._compact.append(x, self._features.array)
        self._features.append(x)
        self._feature_file = self._code_file = None  # the stores are in memory from here on
        self._labelled = labels is not None
        if labels is not None:
            self._labels.append(labels)
        if self._flat is not None:
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
        self._feature_file = self._code_file = None  # rows moved: the stores are in memory now
        if self._compact is not None:
            self._compact.keep(keep)
        self._flat = None  # rebuilt from the codes on next Hamming use
        self._accel.clear()  # hash indexes have no remove_ids: rebuilt lazily on next use
        if self._part is not None:
            # positions compact: keep the assignment's rows, rebuild the lists from it on next use
            self._part_assign.keep(keep)
            self._part.drop_lists()
        self._id_lookup = None

    def _features_of(self, ids: np.ndarray) -> np.ndarray:
        return self._exact_features(self._positions_of(ids))

    def _exact_features(self, positions: np.ndarray) -> np.ndarray:
        """float32 feature rows ``[M, D]`` of ``positions`` (>= 0); a loaded compact-store index
        reads them from its file (pread), never through the mapping."""
        if self._feature_file is not None:
            return self._feature_file.take(positions)
        return np.asarray(self._features.take(positions), dtype=np.float32)

    def _codes_of(self, ids: np.ndarray) -> np.ndarray:
        return self._codes.take(self._positions_of(ids))

    def _labels_of(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self._labels.take(self._positions_of(ids)), dtype=np.int64)

    # -- id lookup ---------------------------------------------------------------------------
    def _lookup(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(ids in increasing order, their positions; None: the stored order already is)."""
        table = self._id_lookup
        if table is None:
            ids = self._ids.array
            if bool((ids[1:] > ids[:-1]).all()):  # auto ids, or ids added in order: no sorted copy
                table = (ids, None)
            else:
                order = np.argsort(ids, kind="stable")
                table = (ids[order], order)
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
        at = np.searchsorted(sorted_ids, ids)
        return at if order is None else order[at]

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

    def _flat_index(self) -> FlatCandidates:
        """The flat binary index, built from the code store on first use."""
        flat = self._flat
        if flat is None:
            with self._build_lock:
                if self._flat is None:
                    flat = FlatCandidates(self.bits)
                    flat.rebuild(self._codes.array)
                    advise(self._codes.array, "dontneed")  # a mapped code store: read once, the copy is FAISS's
                    self._flat = flat
                flat = self._flat
        return flat

    def _generator(self, name: str):
        if name == "flat":
            return self._flat_index()
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
            advise(self._codes.array, "dontneed")  # a mapped code store: read once, the copy is the scanner's
            self._accel[name] = accel
        return accel

    def _release_scans(self, point: OperatingPoint) -> None:
        # the tuner measured the flat scan to compare with; a partitioned point never reads its
        # copy of the codes (bits/8 bytes per item), so it goes until a flat search asks again
        if point.nprobe is not None and all(p.nprobe is not None for p in self._operating_points.values()):
            self._accel.pop("asymmetric", None)

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
        allowed = AllowedRows(mask, self._flat_index, self._codes.array, self.bits, nq)
        return Scope(allowed.count, allowed)

    def _hamming_range(self, qcodes: np.ndarray, radius: int, scope: Scope) -> Candidates:
        if scope.handle is not None:  # exact flat scans only (candidates/filtered.py)
            return scope.handle.range(qcodes, radius)
        return self._range_generator(radius).range(qcodes, radius)

    def _range_generator(self, radius: int):
        generator = self._generator(self.backend_for(radius))
        if not generator.handles(radius):
            generator = self._flat_index()  # exact too, and cheaper than probing this many buckets
        return generator

    def _range_scans(self, radius: int, scope: Scope) -> bool:
        return scope.handle is not None or isinstance(self._range_generator(radius), FlatCandidates)

    def _hamming_knn(self, qcodes: np.ndarray, c: int, scope: Scope) -> Candidates:
        return from_knn(*(self._flat_index() if scope.handle is None else scope.handle).knn(qcodes, c))

    def _asymmetric_knn(
        self, x: np.ndarray, z: np.ndarray, c: int, nprobe: int | None, scope: Scope
    ) -> tuple[Candidates, np.ndarray]:  # fmt: skip
        """Positions by asymmetric score, from every code, (``nprobe``) the nearest lists, or (a
        filtered scope) the allowed rows, scored exactly; their Hamming column is 0 (the pipeline
        fills in the results'). A query the fast-scan or the lists leave short of ``c`` (its
        8-bit tables can tie every item at the minimum; a degenerate query finds no list) is
        scored exactly over every row instead. Also the codes each query scored ``int64 [nq]``."""
        nq = z.shape[0]
        scanned = np.full(nq, scope.count, np.int64)
        if scope.handle is not None:
            pos = asymmetric_knn_rows(z, self._codes.array, scope.handle.positions, c)
        else:
            if nprobe is None:
                pos = self._generator("asymmetric").knn(z, c)[0]
            else:
                pos, _, scanned = self._partitioned().knn(x, z, c, nprobe)
            short = (pos < 0).all(axis=1) if nprobe is not None else (pos < 0).any(axis=1)
            if short.any():
                pos, scanned = pos.copy(), scanned.copy()
                pos[short] = asymmetric_knn_rows(z[short], self._codes.array, np.arange(len(self)), c)
                scanned[short] += len(self)
        return from_knn(pos, np.zeros(pos.shape, np.int32)), scanned

    def _rows(self, keys: np.ndarray, *, features: bool = False, labels: bool = False, codes: bool = False) -> Rows:
        """Positions are keys: the stores themselves, no copy. Candidates are scored on the
        compact rerank store when there is one (approximate: the pipeline rescores the rows it
        returns through :meth:`_exact_features`), else on the feature store."""
        compact = self._compact
        codes = self._codes.array if self._code_file is None else self._code_file  # both index as codes[at]
        return Rows(keys, self._ids.array, self._features.array if compact is None else compact,
                    self._labels.array if self._labelled else None, codes, exact=compact is None)  # fmt: skip

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
                show = len(self) >= PROGRESS_MIN_ROWS  # bars for k-means and the assignment, as add() shows
                stage = PartitionStage.train(self.bits, self._features.array, nlist, self.metric, self.partition_spill,
                                             progress=show)  # fmt: skip
                assign = stage.assign(self._features.array, progress=show)
                self._part_assign = RowStore((stage.spill,), np.int32, assign)
                self._part = stage
                advise(self._features.array, "dontneed")  # a mapped float store: read once, not held
            if not self._part.has_lists:
                self._part.build(self._codes.array, self._part_assign.array)
                # a mapped assignment and code store: read once, the lists hold the codes
                advise(self._part_assign.array, "dontneed")
                advise(self._codes.array, "dontneed")
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
            with blas_products():  # the tuner's 500-query batches would take FAISS's per-pair loop
                for lo in range(0, n, _EXACT_BLOCK):
                    block = np.ascontiguousarray(features[lo : lo + _EXACT_BLOCK], dtype=np.float32)
                    d, i = faiss.knn(x, block, k, metric=metric)
                    heap.add_result(d, np.where(i >= 0, i + lo, -1))
            heap.finalize()
            advise(features, "dontneed")  # a mapped float store: scanned once, not held
            return self._ids.array[heap.I], heap.D

    # -- persistence (the format: serving/index_format.py) -------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the index directory atomically (ARCHITECTURE.md §4, serving/index_format.py).

        Raises SavePathError (an IndexFormatError) for a path save cannot use or does not own,
        before anything is written; the index itself never changes.
        """
        with self._lock.read():
            index_format.write_index(path, self._state())

    def _state(self) -> index_format.IndexState:
        """What a save writes (under the read lock): the row arrays as they are, no copies."""
        arrays = {"codes": self._codes.array, "ids": self._ids.array, "features": self._features.array}
        if self._labelled:
            arrays["labels"] = self._labels.array
        if self._part is not None:  # centroids + assignment; the lists are rebuilt from the codes
            arrays["partition_centroids"] = self._part.centroids
            arrays["partition_assign"] = self._part_assign.array
        if self._compact is not None:  # the compact rerank store: codes + the quantizer's parameters
            arrays["rerank_codes"] = self._compact.rows.array
            arrays["rerank_params"] = self._compact.params
        return index_format.IndexState(
            dim=self.dim, bits=self.bits, metric=self.metric, backend=self.backend, feature_dtype=self.feature_dtype,
            partitions=self.partitions, partition_spill=self.partition_spill, hasher=self.hasher, arrays=arrays,
            next_id=self._next_id, labelled=self._labelled, operating_points=dict(self._operating_points),
            rerank=self.rerank,
        )  # fmt: skip

    @classmethod
    def load(
        cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True, encoder: Hasher | None = None
    ) -> "HashIndex":
        """Load an index directory, checking every file's SHA-256 (``verify``).

        ``mmap``: memory-map the code, feature and label stores (and the partition assignment)
        instead of reading them into memory; the code store is read once to build the lists or
        the scanner that search it, then leaves the resident set. Their sizes are checked against the manifest on open; a
        save over the path never changes mapped files (it writes a new directory), but another
        tool truncating one in place while the index is in use makes the next read of a lost
        page kill the process with SIGBUS: load with ``mmap=False`` where files may be touched.
        A saved partition stage comes back with its centroids and assignment; its lists are
        rebuilt from the codes on first use. An index saved before labels existed (no
        ``labels.npy``) loads without labels.
        ``encoder``: use this ONNX encoder instead of the stored model copy; it must be the very
        model the index was built with (same SHA-256 and bits).

        The load is snapshot-consistent (:func:`~hashindex.serving.persist.open_dir`): every
        file comes from one version of the directory even while another process saves over it
        (a load during a save retries, bounded, instead of failing), and the manifest is
        schema-checked before any field is used.
        """
        with index_format.open_index_dir(path, verify=verify) as d:
            state = index_format.read_index(d, mmap, encoder)
            try:
                index = cls(state.dim, state.hasher, **state.config)
            except InputError as e:
                raise IndexFormatError(f"{d.root}: invalid manifest ({e})") from None
        index._restore(state)
        return index

    def _restore(self, state: index_format.IndexState) -> None:
        """Take the rows, partition stage and operating points of a new, empty index from
        ``state`` (read and checked by index_format.read_index)."""
        a = state.arrays
        self._codes = RowStore((self._nbytes,), np.uint8, a["codes"])
        self._ids = RowStore((), np.int64, a["ids"])
        self._features = RowStore((self.dim,), np.dtype(self.feature_dtype), a["features"])
        if "labels" in a:
            self._labels = RowStore((), np.int64, a["labels"])
        self._labelled = state.labelled
        self._next_id = state.next_id
        if "partition_centroids" in a:
            self._part = PartitionStage(self.bits, a["partition_centroids"], self.metric, self.partition_spill)
            self._part_assign = RowStore((self._part.spill,), np.int32, a["partition_assign"])
        self._operating_points = dict(state.operating_points)
        if "rerank_codes" in a:
            self._compact = CompactStore(self.rerank, self.dim, a["rerank_params"], a["rerank_codes"])
        self._feature_file = state.feature_file  # a mapped float store with a compact one: rows by pread
        self._code_file = state.code_file  # a mapped code store: the results' rows by pread
