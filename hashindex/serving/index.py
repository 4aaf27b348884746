"""HashIndex: binary codes in FAISS for the candidate stage, exact float reranking after it.

Serving path: numpy + faiss only (an ONNX encoder brings onnxruntime, never torch). Search modes
and rankings are the front's (:mod:`hashindex.serving.front`); this module stores the items in
row arrays and finds candidates with FAISS.

Backends for the Hamming stage: ``flat`` (IndexBinaryFlat, exact for everything and the source
of truth), ``hash`` (IndexBinaryHash) and ``multihash`` (IndexBinaryMultiHash), both exact for
range queries by the nflip / nhash rules, and ``auto`` (see :meth:`HashIndex.backend_for`).
Asymmetric ranking scans the same codes with FAISS fast-scan PQ (candidates/asymmetric.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from hashindex.core.codes import hamming_pairs
from hashindex.core.errors import IndexFormatError, InputError, ModelMismatchError, NotFittedError, UnknownIdError
from hashindex.core.validation import check_positive_int
from hashindex.serving import persist
from hashindex.serving.candidates.asymmetric import AsymmetricCandidates
from hashindex.serving.candidates.binary import FlatCandidates, HashCandidates, MultiHashCandidates
from hashindex.serving.candidates.filtered import AllowedRows, asymmetric_knn_rows
from hashindex.serving.candidates.modes import DEFAULT_CANDIDATES_PER_K, knn_to_csr, select_candidates
from hashindex.serving.front import (
    DEFAULT_BITS,
    RANKINGS,
    IndexFront,
    SearchResult,
    check_ranking,
    empty_csr,
    resolve_hasher,
)
from hashindex.serving.filters import PLAIN, Restriction, SearchOptions
from hashindex.serving.grouping import csr_scores, group_top, widen_for_labels
from hashindex.serving.hashers import Hasher, LinearHasher
from hashindex.serving.locks import ReadWriteLock
from hashindex.serving.rerank import rerank
from hashindex.serving.store import RowStore

__all__ = ["HashIndex", "SearchResult", "DEFAULT_BITS", "RANKINGS", "check_ranking", "describe"]

BACKENDS = ("flat", "hash", "multihash", "auto")
FEATURE_DTYPES = ("float32", "float16")
# auto: accelerators pay off only on large galleries and small radii (benchmarks/backends.py).
AUTO_MIN_ITEMS = 100_000
AUTO_MAX_RADIUS = 3


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
    ):
        dim = check_positive_int(dim, "dim")
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
        self._flat = FlatCandidates(self.bits)
        # built on first use, kept in step by add, dropped by remove
        self._accel: dict[str, HashCandidates | MultiHashCandidates | AsymmetricCandidates] = {}
        self._id_lookup: tuple[np.ndarray, np.ndarray] | None = None  # (sorted ids, positions)
        self._lock = ReadWriteLock()

    # -- basic facts -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"HashIndex(dim={self.dim}, bits={self.bits}, n={len(self)}, metric={self.metric!r}, "
            f"backend={self.backend!r}, feature_dtype={self.feature_dtype!r})"
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
        a third time once an asymmetric search has built its scanner)."""
        asym = self._accel.get("asymmetric")
        usage = {
            "codes": self._codes.nbytes * 2 + (asym.nbytes if asym is not None else 0),
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

    def _range(self, qcodes: np.ndarray, radius: int, allowed: AllowedRows | None = None):
        if allowed is not None:  # exact flat scans only (candidates/filtered.py)
            return allowed.range(self._flat, qcodes, radius)
        generator = self._generator(self.backend_for(radius))
        if not generator.handles(radius):
            generator = self._flat  # exact too, and cheaper than probing this many buckets
        return generator.range(qcodes, radius)

    def _knn(self, qcodes: np.ndarray, c: int, allowed: AllowedRows | None = None):
        return knn_to_csr(*(self._flat.knn(qcodes, c) if allowed is None else allowed.knn(self._flat, qcodes, c)))

    def _candidates(self, qcodes: np.ndarray, k: int, radius: int | None, candidates: int | None, allowed=None):
        if allowed is None:
            return select_candidates(qcodes, k, radius, candidates, len(self), self.bits, self._range, self._knn)
        return select_candidates(
            qcodes, k, radius, candidates, allowed.count, self.bits,
            lambda q, r: self._range(q, r, allowed), lambda q, c: self._knn(q, c, allowed),
        )  # fmt: skip

    def _asymmetric_candidates(self, z: np.ndarray, k: int, candidates: int | None, allowed=None):
        """CSR candidates by asymmetric score; their Hamming column is 0 (filled in for the
        k results only, after the rerank)."""
        if allowed is not None:
            c = min(candidates or DEFAULT_CANDIDATES_PER_K * k, allowed.count)
            pos = asymmetric_knn_rows(z, self._codes.array, allowed.positions, c)
        else:
            c = min(candidates or DEFAULT_CANDIDATES_PER_K * k, len(self))
            pos, _ = self._generator("asymmetric").knn(z, c)
        return knn_to_csr(pos, np.zeros(pos.shape, np.int32))

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
    def _search_encoded(
        self, x, qcodes, z, k: int, radius: int | None, candidates: int | None, options: SearchOptions = PLAIN
    ) -> SearchResult:
        """``qcodes`` always, ``z`` (the queries' projections) for asymmetric ranking."""
        with self._lock.read():
            allowed = self._allowed(options.restriction, x.shape[0])
            if len(self) == 0 or (allowed is not None and allowed.count == 0):
                lims, positions, hamming = empty_csr(x.shape[0])
            elif z is not None:
                lims, positions, hamming = self._asymmetric_candidates(z, k, candidates, allowed)
            else:
                lims, positions, hamming = self._candidates(qcodes, k, radius, candidates, allowed)
            if options.grouped:
                lims, pos, scores, ham = self._grouped(x, qcodes, z, k, radius, allowed, (lims, positions, hamming), options)
            else:
                pos, scores, ham = rerank(x, self._features.array, lims, positions, hamming, k, self.metric)
            if z is not None:  # Hamming distances of the results only, not of every candidate
                rows, cols = np.nonzero(pos >= 0)
                ham[rows, cols] = hamming_pairs(qcodes[rows], self._codes.array[pos[rows, cols]])
            ids = np.full(pos.shape, -1, dtype=np.int64)
            ids[pos >= 0] = self._ids.array[pos[pos >= 0]]
            labels = None
            if self._labelled:
                labels = np.full(pos.shape, -1, dtype=np.int64)
                labels[pos >= 0] = self._labels.array[pos[pos >= 0]]
        return SearchResult(ids, scores, ham, np.diff(lims), labels)

    def _grouped(self, x, qcodes, z, k, radius, allowed, csr, options: SearchOptions):
        """group_by="label": widen the candidates to k labels, score them all, keep the best per label."""
        n_allowed = len(self) if allowed is None else allowed.count
        if radius is not None or n_allowed == 0:
            refetch = None  # the radius ball is the rule
        elif z is not None:
            refetch = lambda qi, c: self._asymmetric_candidates(z[qi], k, c, allowed)  # noqa: E731
        else:
            refetch = lambda qi, c: self._knn(qcodes[qi], c, allowed)  # noqa: E731
        labels = self._labels.array
        lims, positions, hamming = widen_for_labels(csr, k, n_allowed, lambda p: labels[p], refetch)
        scores = csr_scores(x, self._features.array, lims, positions, self.metric)
        pos, scores, ham, _ = group_top(
            lims, positions, hamming, scores, labels[positions], k, options.group_size, self.metric
        )
        return lims, pos, scores, ham

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

        ``mmap``: memory-map the feature and label stores instead of reading them into memory.
        An index saved before labels existed (no ``labels.npy``) loads without labels.
        ``encoder``: use this ONNX encoder instead of the stored model copy; it must be the very
        model the index was built with (same SHA-256 and bits).
        """
        root = persist.resolve_index_dir(path)
        m = persist.read_manifest(root, verify=verify)
        try:
            bits, dim, count = int(m["bits"]), int(m["dim"]), int(m["count"])
            hasher_info = m["hasher"]
            metric, backend, fdtype = m["metric"], m["backend"], m["feature_dtype"]
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{root}: manifest lacks a required field ({e})") from None

        if hasher_info.get("type") == "linear":
            hasher = LinearHasher.load(root / "hasher.npz")
        elif hasher_info.get("type") == "onnx":
            from hashindex.serving.encoder import OnnxEncoder  # onnxruntime only when an ONNX model is used

            hasher = encoder if encoder is not None else OnnxEncoder(root / "model.onnx")
            if getattr(hasher, "sha256", None) != m.get("model_sha256"):
                raise ModelMismatchError(
                    f"model SHA-256 {getattr(hasher, 'sha256', None)} differs from the index's "
                    f"{m.get('model_sha256')}: this index was built with another model"
                )
        else:
            raise IndexFormatError(f"{root}: unknown hasher type {hasher_info.get('type')!r}")
        if hasher.bits != bits:
            raise ModelMismatchError(f"hasher gives {hasher.bits} bits, index was built with {bits}")

        try:
            index = cls(dim, hasher, metric=metric, backend=backend, feature_dtype=fdtype)
        except InputError as e:
            raise IndexFormatError(f"{root}: invalid manifest ({e})") from None
        codes = _load_array(root / "codes.npy", np.uint8, (count, bits // 8), mmap=False)
        ids = _load_array(root / "ids.npy", np.int64, (count,), mmap=False)
        features = _load_array(root / "features.npy", np.dtype(fdtype), (count, dim), mmap=mmap)
        if np.unique(ids).size != ids.size:
            raise IndexFormatError(f"{root}/ids.npy: repeated ids")
        index._codes = RowStore((bits // 8,), np.uint8, codes)
        index._ids = RowStore((), np.int64, ids)
        index._features = RowStore((dim,), np.dtype(fdtype), features)
        if "labels.npy" in m["files"]:
            index._labels = RowStore((), np.int64, _load_array(root / "labels.npy", np.int64, (count,), mmap=mmap))
            index._labelled = True
        elif m.get("labelled") is True:
            raise IndexFormatError(f"{root}: the manifest says the index is labelled but lists no labels.npy")
        else:
            index._labelled = False if (m.get("labelled") is False or count) else None
        index._flat.rebuild(codes)
        index._next_id = max(int(m.get("next_id", 0)), int(ids.max()) + 1 if count else 0)
        return index


def _load_array(path: Path, dtype: np.dtype, shape: tuple[int, ...], mmap: bool) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{path}: unreadable array ({e})") from None
    if arr.dtype != dtype or arr.shape != shape:
        raise IndexFormatError(f"{path}: expected {np.dtype(dtype)} {shape}, found {arr.dtype} {arr.shape}")
    return arr


def describe(path: str | os.PathLike) -> str:
    """Human-readable summary of an index directory (for ``hashindex info``)."""
    root = persist.resolve_index_dir(path)
    m = persist.read_manifest(root, verify=True)
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
