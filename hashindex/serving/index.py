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
import warnings
from pathlib import Path

import faiss
import numpy as np

from hashindex.core.codes import hamming_pairs
from hashindex.core.errors import IndexFormatError, InputError, ModelMismatchError, NotFittedError, UnknownIdError
from hashindex.core.validation import MAX_ID, check_positive_int
from hashindex.serving import persist
from hashindex.serving.candidates.asymmetric import AsymmetricCandidates
from hashindex.serving.candidates.binary import FlatCandidates, HashCandidates, MultiHashCandidates
from hashindex.serving.candidates.filtered import AllowedRows, asymmetric_knn_rows
from hashindex.serving.candidates.modes import knn_to_csr, select_candidates
from hashindex.serving.candidates.partitions import PartitionStage, nlist_for
from hashindex.serving.front import (
    DEFAULT_BITS,
    RANKINGS,
    IndexFront,
    SearchPlan,
    SearchResult,
    check_ranking,
    default_candidates,
    empty_csr,
    resolve_hasher,
)
from hashindex.serving.filters import Restriction, SearchOptions
from hashindex.serving.grouping import csr_scores, group_top, widen_for_labels
from hashindex.serving.hashers import Hasher, LinearHasher
from hashindex.serving.locks import ReadWriteLock
from hashindex.serving.rerank import rerank, rescore_exact
from hashindex.serving.store import RERANK_KINDS, CompactStore, FileRows, RowStore, advise, mapped_resident_bytes
from hashindex.serving.tuning import nprobe_grid, points_from_manifest, points_to_manifest

__all__ = ["HashIndex", "SearchResult", "DEFAULT_BITS", "RANKINGS", "check_ranking", "describe"]

BACKENDS = ("flat", "hash", "multihash", "auto")
FEATURE_DTYPES = ("float32", "float16")
# auto: accelerators pay off only on large galleries and small radii (benchmarks/backends.py).
AUTO_MIN_ITEMS = 100_000
AUTO_MAX_RADIUS = 3
_EXACT_BLOCK = 1 << 18  # gallery rows per exact-search block (float16 stores are converted per block)
# partitions="auto" builds a partition stage from this many items. The flat asymmetric scan
# costs ~1.4 ms per 1M items per query and the partition stage a fixed ~0.1-0.2 ms (coarse
# search, per-list overhead) plus the lists it scans, so it can only win where the flat scan
# costs well above that: ~100k items and up (an estimate from the 1M measurements in benchmarks/README.md);
# below it k-means would also train on fewer than 64 points per list of 2*sqrt(N) lists.
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
        rerank: the store candidates are reranked on: "float32" (default: the feature store
            itself), or a compact copy beside it, "int8" (FAISS QT_8bit, one byte per dimension,
            per-dimension range learnt from the first rows added) or "float16" (QT_fp16). With a
            compact store the k returned rows are rescored exactly from the feature store, which
            a loaded index memory-maps (``load(mmap=True)``): serving then holds the compact
            store in memory and reads the float rows of the results only (benchmarks/memory.py).
        partitions: the partition stage searched with ``nprobe`` (asymmetric ranking):
            ``"auto"`` (default) builds ``nlist_for(N)`` (~2 sqrt(N), a power of two) lists once
            the index holds ``PARTITION_MIN_ITEMS`` items; an int builds that many lists (the
            index must hold at least that many items); ``None`` never builds one. It is built
            on first use (``nprobe=``, or :meth:`tune`), kept in step by ``add``, rebuilt after
            ``remove`` and saved with the index. Without one, searches scan every code (the
            flat scan) and :meth:`tune` measures only that.
        partition_spill: lists each item is put in: 2 (default) is its nearest list plus the one
            SOAR's rule picks, which about halves the lists a 0.99 recall target must probe on
            face-like data, for 24 more bytes per item (benchmarks/README.md); 1: nearest only.
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
        rerank: str = "float32",
    ):
        dim = check_positive_int(dim, "dim")
        if rerank not in RERANK_KINDS:
            raise InputError(f"rerank must be one of {RERANK_KINDS}, got {rerank!r}")
        if partitions is not None and partitions not in PARTITION_MODES:
            if isinstance(partitions, str):
                raise InputError(f"partitions must be 'auto', a number of lists or None, got {partitions!r}")
            partitions = check_positive_int(partitions, "partitions (number of lists)")
        partition_spill = check_positive_int(partition_spill, "partition_spill")
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
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
        self.rerank = rerank
        # the compact rerank store (None: rerank on the feature store itself)
        self._compact: CompactStore | None = None if rerank == "float32" else CompactStore(rerank, self.dim)
        # the FAISS flat binary index: a second copy of the codes, built on first Hamming use
        # (the asymmetric default never needs it), dropped by remove
        self._flat: FlatCandidates | None = None
        # a loaded, mapped float store read by pread for the final rescoring (store.FileRows)
        self._feature_file: FileRows | None = None
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
        for id -> row, built by the first lookup), ``binary_flat`` (FAISS IndexBinaryFlat: a copy
        of the codes, built on first Hamming use), ``hash`` / ``multihash`` (their tables, an
        estimate: codes + 8-byte ids), ``asymmetric_scan`` (the flat fast-scan copy of the codes),
        ``partition_lists`` (codes in 32-item blocks, each list's table as FAISS allocates it,
        + 8-byte ids, ``spill`` times), ``partition_centroids``, ``partition_assign``. Row stores
        count with their spare capacity (they grow by doubling)."""

        def held(store: RowStore) -> int:
            return store.held_bytes if not store.is_mmap else mapped_resident_bytes(store.array)

        usage = {"codes": held(self._codes), "ids": held(self._ids), "features": held(self._features)}
        if self._compact is not None:
            usage["rerank"] = self._compact.held_bytes
        if self._labelled:
            usage["labels"] = held(self._labels)
        if self._id_lookup is not None:
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

    def _reserve(self, n: int, labelled: bool = False, sample=None) -> None:
        need = len(self) + n
        for store in (self._codes, self._ids, self._features) + ((self._labels,) if labelled else ()):
            store.reserve(need)
        if self._compact is not None:
            self._compact.reserve(need)
            if sample is not None and not self._compact.trained:
                self._compact.train(sample())  # the int8 range from the whole input, not its first chunk
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
        self._features.append(x)
        self._feature_file = None  # the float store is in memory from here on
        if self._compact is not None:
            self._compact.append(x)
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
        self._feature_file = None  # rows moved: the store is in memory now
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
        if self._feature_file is not None:  # a loaded compact-store index: read, never map, the rows
            return self._feature_file.take(self._positions_of(ids))
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

        ``auto`` follows benchmarks/backends.py (1M synthetic ITQ codes, results in
        benchmarks/README.md): flat below AUTO_MIN_ITEMS items; hash for radius <= 1 (one
        bucket probe per flipped-bit pattern); multihash where its tables need no flips
        (radius < nhash), else hash up to radius 2 and multihash at 3; flat beyond, where
        probing costs more than a scan.
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
            self._accel[name] = accel
        return accel

    def _range(self, qcodes: np.ndarray, radius: int, allowed: AllowedRows | None = None):
        if allowed is not None:  # exact flat scans only (candidates/filtered.py)
            return allowed.range(self._flat_index(), qcodes, radius)
        generator = self._generator(self.backend_for(radius))
        if not generator.handles(radius):
            generator = self._flat_index()  # exact too, and cheaper than probing this many buckets
        return generator.range(qcodes, radius)

    def _knn(self, qcodes: np.ndarray, c: int, allowed: AllowedRows | None = None):
        flat = self._flat_index()
        return knn_to_csr(*(flat.knn(qcodes, c) if allowed is None else allowed.knn(flat, qcodes, c)))

    def _candidates(self, qcodes: np.ndarray, k: int, radius: int | None, candidates: int | None, allowed=None):
        return select_candidates(
            qcodes, k, radius, candidates, len(self) if allowed is None else allowed.count, self.bits,
            lambda q, r: self._range(q, r, allowed), lambda q, c: self._knn(q, c, allowed),
        )  # fmt: skip

    def _asymmetric_candidates(
        self, x: np.ndarray, z: np.ndarray, k: int, candidates: int | None, nprobe: int | None,
        allowed: AllowedRows | None = None,
    ):  # fmt: skip
        """CSR candidates by asymmetric score, from every code, (``nprobe``) the nearest lists, or
        (``allowed``) the allowed rows, scored exactly; their Hamming column is 0 (filled in for the
        k results only, after the rerank). A filtered search never probes the lists, ``nprobe``
        or not: the allowed rows hold every item the probe could find (serving/filters.py)."""
        c = min(candidates or default_candidates(k), len(self) if allowed is None else allowed.count)
        if allowed is not None:
            pos = asymmetric_knn_rows(z, self._codes.array, allowed.positions, c)
        elif nprobe is None:
            pos, _ = self._generator("asymmetric").knn(z, c)
        else:
            pos, _ = self._partitioned().knn(x, z, c, nprobe)
        return knn_to_csr(pos, np.zeros(pos.shape, np.int32))

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
                advise(self._features.array, "dontneed")  # a mapped float store: read once, not held
            if not self._part.has_lists:
                self._part.build(self._codes.array, self._part_assign.array)
                advise(self._part_assign.array, "dontneed")  # a mapped assignment: read once, not held
            return self._part

    def _tuning_partitions(self) -> tuple[int | None, list[int]]:
        with self._lock.read():
            nlist, why = self._partition_plan()
        if nlist is None:
            if isinstance(self.partitions, int):  # asked for, but cannot be trained: say so
                warnings.warn(f"tuning the flat scan only: {why}", stacklevel=4)
            return None, []
        return nlist, nprobe_grid(nlist)

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
            advise(features, "dontneed")  # a mapped float store: scanned once, not held
            return self._ids.array[heap.I], heap.D

    def _allowed(self, restriction: Restriction | None, nq: int = 1) -> AllowedRows | None:
        """The rows a filtered search may return (None: every row)."""
        if restriction is None:
            return None
        n = len(self)
        if restriction.ids is not None:
            wanted = restriction.ids[self._present_mask(restriction.ids)]
            mask = np.zeros(n, dtype=bool)
            mask[self._positions_of(wanted)] = True
        else:
            mask = np.ones(n, dtype=bool)
        if restriction.labels is not None:
            mask &= np.isin(self._labels.array, restriction.labels)
        return AllowedRows(mask, self._codes.array, self.bits, nq)

    # -- search (the front has checked and encoded the queries) ------------------------------------
    def _search_encoded(self, x: np.ndarray, qcodes: np.ndarray, z: np.ndarray | None, plan: SearchPlan) -> SearchResult:
        """``qcodes`` always, ``z`` (the queries' projections) for asymmetric ranking."""
        k, radius, candidates, nprobe, options = plan.k, plan.radius, plan.candidates, plan.nprobe, plan.options
        with self._lock.read():
            allowed = self._allowed(options.restriction, x.shape[0])
            if len(self) == 0 or (allowed is not None and allowed.count == 0):
                lims, positions, hamming = empty_csr(x.shape[0])
            elif z is not None:
                lims, positions, hamming = self._asymmetric_candidates(x, z, k, candidates, nprobe, allowed)
            else:
                lims, positions, hamming = self._candidates(qcodes, k, radius, candidates, allowed)
            exact = self._compact is None
            if options.grouped:
                lims, pos, scores, ham = self._grouped(x, qcodes, z, k, radius, allowed, (lims, positions, hamming), options)
            else:
                pos, scores, ham = rerank(x, self._rerank_rows(), lims, positions, hamming, k, self.metric)
                if not exact:  # the k returned rows, rescored on the float store
                    float_rows = self._feature_file if self._feature_file is not None else self._features.array
                    pos, scores, ham = rescore_exact(x, float_rows, pos, ham, self.metric)
                    exact = True
            if z is not None:  # Hamming distances of the results only, not of every candidate
                rows, cols = np.nonzero(pos >= 0)
                ham[rows, cols] = hamming_pairs(qcodes[rows], self._codes.array[pos[rows, cols]])
            ids = np.full(pos.shape, -1, dtype=np.int64)
            ids[pos >= 0] = self._ids.array[pos[pos >= 0]]
            labels = None
            if self._labelled:
                labels = np.full(pos.shape, -1, dtype=np.int64)
                labels[pos >= 0] = self._labels.array[pos[pos >= 0]]
        return SearchResult(ids, scores, ham, np.diff(lims), labels, exact_scores=exact)

    def _grouped(self, x, qcodes, z, k, radius, allowed, csr, options: SearchOptions):
        """group_by="label": widen the candidates to k labels, score them all, keep the best per label."""
        n_allowed = len(self) if allowed is None else allowed.count
        if radius is not None or n_allowed == 0:
            refetch = None  # the radius ball is the rule
        elif z is not None:  # the flat scan (never the lists: they may hold fewer than k labels)
            refetch = lambda qi, c: self._asymmetric_candidates(x[qi], z[qi], k, c, None, allowed)  # noqa: E731
        else:
            refetch = lambda qi, c: self._knn(qcodes[qi], c, allowed)  # noqa: E731
        labels = self._labels.array
        lims, positions, hamming = widen_for_labels(csr, k, n_allowed, lambda p: labels[p], refetch)
        scores = csr_scores(x, self._rerank_rows(), lims, positions, self.metric)
        pos, scores, ham, _ = group_top(
            lims, positions, hamming, scores, labels[positions], k, options.group_size, self.metric
        )
        return lims, pos, scores, ham

    def _rerank_rows(self):
        """What candidates are scored on: the compact store, or the feature rows themselves."""
        return self._compact if self._compact is not None else self._features.array

    def _range_encoded(self, qcodes: np.ndarray, radius: int):
        lims, positions, hamming = self._range(qcodes, radius)
        return lims, self._ids.array[positions], hamming

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
            self._save_compact(manifest, writers)
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

    # the compact rerank store's files (kept apart from the rest of save / load)
    def _save_compact(self, manifest: dict, writers: dict) -> None:
        """``rerank`` in the manifest (absent: float32, as indexes saved before it); a compact
        store adds ``rerank_codes.npy`` (uint8 ``[N, code_size]``) and ``rerank_params.npy``
        (float32: the int8 range, vmin then vdiff per dimension; empty for float16)."""
        if self._compact is None:
            return
        manifest["rerank"] = self.rerank
        store = self._compact
        writers["rerank_codes.npy"] = lambda p: np.save(p, store.rows.array)
        writers["rerank_params.npy"] = lambda p: np.save(p, store.params)

    def _load_compact(self, d: persist.IndexDir, m: dict) -> None:
        kind = m.get("rerank", "float32")
        has_files = "rerank_codes.npy" in m["files"]
        if (kind != "float32") != has_files:
            raise IndexFormatError(f"{d.root}: rerank={kind!r} but rerank_codes.npy is {'present' if has_files else 'missing'}")
        if kind == "float32":
            return
        probe = CompactStore(kind, self.dim)
        params = d.load_array("rerank_params.npy", np.float32, (0 if kind == "float16" else 2 * self.dim,))
        codes = d.load_array("rerank_codes.npy", np.uint8, (len(self), probe.code_size))
        self._compact = CompactStore(kind, self.dim, params, codes)

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
                rerank=m.get("rerank", "float32"),
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
        index._load_compact(d, m)
        if index._compact is not None and mmap and count:
            f = d.file("features.npy")
            index._feature_file = FileRows(f.fileno(), features.offset, (count, dim), np.dtype(fdtype))
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
    for key in ("count", "dim", "bits", "metric", "backend", "feature_dtype", "rerank", "model_sha256"):
        if key in m:
            lines.append(f"  {key:14s} {m[key]}")
    lines.append(f"  {'hasher':14s} {json.dumps(m.get('hasher'))}")
    lines.append(f"  {'bytes on disk':14s} {size:,} ({size / max(m['count'], 1):.1f} per item)")
    n = max(m["count"], 1)
    for name, info in sorted(m["files"].items()):
        lines.append(f"    {name:22s} {info['bytes']:>14,} {info['bytes'] / n:>9.1f} B/item  sha256 {info['sha256'][:16]}...")
    lines.append(f"  {'in memory':14s} ~{serving_bytes_per_item(m):.0f} B/item while serving, loaded with mmap=True "
                 "(estimate: benchmarks/README.md, Memory)")
    return "\n".join(lines)


def serving_bytes_per_item(m: dict) -> float:
    """Resident bytes per item of a loaded (``mmap=True``) index serving searches, from its
    manifest: codes, ids, the compact rerank store (a float32 one is mapped: its pages are read
    for the candidates, and count once touched), the flat asymmetric scanner, the partition
    lists (``spill`` x (code + 8-byte position)) when saved with a partition stage. Within ~1% of
    ``memory_usage()`` at 1M x 128-d, int8 (benchmarks/memory.py: 229 vs 231 B/item)."""
    code = m["bits"] / 8
    rerank = m.get("rerank", "float32")
    store = {"int8": m["dim"], "float16": 2 * m["dim"]}.get(rerank, m["dim"] * np.dtype(m["feature_dtype"]).itemsize)
    # FAISS allocates each list's block table rounded up to a power of two: ~1.4x its codes at 1M
    lists = m.get("partition_spill", 1) * (1.4 * code + 8) if "partition_nlist" in m else 0
    return code + 8 + store + code + lists
