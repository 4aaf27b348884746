"""The front every index backend shares: argument checks, fit/add guards, the public search API.

A backend (the FAISS :class:`~hashindex.serving.index.HashIndex`, the
:class:`~hashindex.serving.milvus.MilvusHashIndex`) subclasses :class:`IndexFront` once and
supplies storage and candidate generation through a handful of hooks (``_insert``, ``_delete``,
``_present_mask``, and the search protocol of :mod:`hashindex.serving.search`, which plans and
runs every search for every backend). Everything a user passes in is checked here, once,
so a check added to the front holds for every backend; an option a backend cannot honour raises
:class:`~hashindex.core.errors.UnsupportedError` naming the backend.

Ranking (``ranking=``): ``"hamming"`` orders items by Hamming distance between codes;
``"asymmetric"`` by ``<z, 2b - 1>``, the query's continuous projection ``z`` (before the sign)
against each item's bits (serving/candidates/asymmetric.py). ``radius`` is a Hamming rule and
always ranks by Hamming distance. The default (``ranking=None``) is asymmetric when the hasher
has ``project()`` and the backend scores it, else Hamming (always Hamming with ``radius`` or
``query_codes``).

Search modes (``radius`` is inclusive, ARCHITECTURE.md §2):
- ``radius=r``: every item within Hamming <= r is a candidate (Hamming ranking);
- ``candidates=c``: the c best-ranked items;
- ``nprobe=p`` (asymmetric, backends with a partition stage): rank only the items of the p
  k-means lists nearest to the query (serving/candidates/partitions.py);
- ``recall=r``: the index's tuned operating point for recall@1 >= r (and recall@k >= 0.95, see
  serving/tuning.py; tuned on the spot if the index has none for that target, or if it was
  measured on fewer than half or more than twice today's items);
- none of these: Hamming ranking takes the smallest radius giving each query at least
  ``10 * k`` candidates (multi-probe); asymmetric ranking takes the operating point tuned for
  :data:`DEFAULT_RECALL` if the index has one (measured on the first such search where the
  index has or can build a partition stage), else the flat scan with
  :func:`default_candidates` (``max(50 * k, 500)``) candidates (serving/plan.py resolves
  all of these in one planner).
Candidates are reranked by exact similarity on the stored features, best first.

Identity-aware search (serving/filters.py, serving/grouping.py): items may carry a label (the
identity); ``filter_ids`` / ``filter_labels`` restrict the candidates before ranking;
``group_by="label"`` returns the k best distinct labels; ``min_score`` drops results below an
open-set threshold (calibrated by hashindex.evaluation.calibration). A filtered search never
probes the partition stage: the allowed rows are scanned exactly (serving/filters.py says why).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from dataclasses import dataclass
from typing import ClassVar, ContextManager

import numpy as np
from tqdm.auto import tqdm

from hashindex.core.codes import binarize, check_codes, pre_tanh
from hashindex.core.errors import DuplicateIdError, InputError, ModelMismatchError, NotFittedError, UnsupportedError
from hashindex.core.bits import check_bits
from hashindex.core.validation import (
    MAX_K,
    as_array,
    check_features,
    auto_ids,
    check_recall,
    check_tuning_args,
    check_id_list,
    check_new_ids,
    check_positive_int,
    check_query_codes,
    check_radius,
    check_result_size,
    check_search_args,
    prepare_features,
)
from hashindex.serving.hashers import (
    HASHER_KINDS,
    Hasher,
    LinearHasher,
    check_fit_rows,
    check_index_hasher_fitted,
    encode_checked,
    fit_untrained,
    make_hasher,
)
from hashindex.serving.filters import check_labels, check_search_options
from hashindex.serving.rerank import METRICS
from hashindex.serving.candidates.csr import Candidates, empty as no_candidates
from hashindex.serving import plan as planner
from hashindex.serving import search as pipeline
from hashindex.serving import tuning
from hashindex.serving.interop import to_faiss_binary
from hashindex.serving.plan import RANKINGS, Request, check_ranking, default_candidates  # noqa: F401 (kept importable here)
from hashindex.serving.search import Queries, Rows, Scope, SearchResult
from hashindex.serving.tuning import DEFAULT_RECALL, DEFAULT_RECALL_AT_K, OperatingPoint

# 128-bit codes + rerank reach the recall 64-bit ones could not at the scale of the benchmarks
# (benchmarks/README.md); 16 bytes a code is small beside the features.
DEFAULT_BITS = 128


@dataclass(frozen=True)
class PartitionInfo:
    """What an index's partition stage is (:meth:`IndexFront.partition_info`).

    lists: its k-means lists, as built or as it would be built now (the valid ``nprobe``
        values are 1 .. lists); None when the index has none and cannot build one.
    built: whether it is trained. requested: whether the user asked for a number of lists.
    reason: why there is none (empty when ``lists`` is set).
    """

    lists: int | None
    built: bool = False
    requested: bool = False
    reason: str = ""


# add(): rows checked, encoded and stored at a time (the input is never copied whole); an
# unfitted default hasher is fitted on this many evenly spaced rows of a large first add; a bar
# is shown for adds (and the partition stage's k-means and assignment) of at least PROGRESS_MIN_ROWS rows
ADD_CHUNK_ROWS = 65_536
FIT_SAMPLE_ROWS = 262_144
PROGRESS_MIN_ROWS = 1_000_000


def default_bits(kind: str, dim: int) -> int:
    """Code length when none is given: ``DEFAULT_BITS`` capped at ``dim`` (rounded down to bytes);
    a residual hasher adds a half-length refinement stage (192 bits at 128-d)."""
    first = min(DEFAULT_BITS, max(8, dim - dim % 8))
    return first + (first // 2 // 8) * 8 if kind == "residual" else first


def resolve_hasher(
    dim: int, hasher: Hasher | str | None, encoder: Hasher | None, bits: int | None, default_kind: str = "itq"
) -> Hasher:  # fmt: skip
    """The hasher an index of dimension ``dim`` uses: the one given (an object, or a kind name
    such as ``"itq"``), else an unfitted hasher of ``default_kind`` and ``bits`` (default
    :func:`default_bits`). A residual default with ``bits`` that one ITQ stage holds is plain ITQ."""
    hasher = single_hasher(hasher, encoder)
    if bits is not None:
        bits = check_bits(bits)
    if isinstance(hasher, str):
        if hasher not in HASHER_KINDS:
            raise InputError(f"unknown hasher {hasher!r}; choose one of {', '.join(HASHER_KINDS)} or pass a hasher object")
        hasher = make_hasher(hasher, dim, bits or default_bits(hasher, dim))
    elif hasher is None:
        kind = default_kind if bits is None or bits > default_bits("itq", dim) else "itq"
        hasher = make_hasher(kind, dim, bits or default_bits(kind, dim))
    elif not (hasattr(hasher, "encode") and isinstance(getattr(hasher, "bits", None), (int, np.integer))):
        raise InputError(
            f"hasher must be a hasher object with bits and encode() (or one of {', '.join(HASHER_KINDS)}), "
            f"got {type(hasher).__name__}"
        )
    if bits is not None and bits != hasher.bits:
        raise InputError(f"bits={bits} disagrees with the hasher's {hasher.bits} bits")
    hasher_dim = getattr(hasher, "dim", None)
    if hasher_dim is not None and hasher_dim != dim:
        if getattr(hasher, "kind", None) == "images":  # a fused model: its features output is what is stored
            raise InputError(
                f"the image model {getattr(hasher, 'path', '')} outputs {hasher_dim}-d features, index has dim={dim}"
            )
        raise InputError(f"hasher expects dimension {hasher_dim}, index has dim={dim}")
    return hasher


def single_hasher(hasher: Hasher | str | None, encoder: Hasher | None) -> Hasher | str | None:
    """The one of ``hasher`` / ``encoder`` (an alias for ONNX encoders) given, or None."""
    if hasher is not None and encoder is not None:
        raise InputError("pass either hasher or encoder, not both")
    return hasher if hasher is not None else encoder


def check_choice(name: str, value, choices: tuple[str, ...]):
    """``value`` when it is one of ``choices``, else an InputError naming them."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_metric(metric: str) -> str:
    return check_choice("metric", metric, METRICS)


class IndexFront:
    """The public API of every hashindex index; subclasses store items and find candidates.

    Subclass hooks: ``__len__``, ``_present_mask``, ``_next_auto_id``, ``_insert``, ``_delete``,
    ``_features_of``, ``_codes_of``, ``_labels_of``, ``_has_labels``, the search protocol of
    :mod:`hashindex.serving.search` (``_restrict``, ``_hamming_range``, ``_hamming_knn``,
    ``_rows``; with asymmetric ranking ``_asymmetric_knn``; optionally ``_rerank``,
    ``_exact_features`` (with a compact rerank store), ``_max_candidates``),
    and optionally ``_reserve`` (room for a bulk add), ``_reading`` / ``_writing`` (lock
    contexts), ``_hasher_frozen``, ``_exact_knn`` and ``RANKINGS``.
    """

    backend_name: ClassVar[str] = "index"
    RANKINGS: ClassVar[tuple[str, ...]] = RANKINGS
    # how to use one index from several processes (pickling refuses, naming this)
    SHARING: ClassVar[str] = (
        "save it once (index.save(path)) and open it in each process with HashIndex.load(path, mmap=True): "
        "the memory-mapped features are shared through the page cache"
    )
    # bumped under _writing() before and after every fit of the hasher (_fitting_hasher); add()
    # re-encodes rows encoded while it changed (see _add_checked)
    _hasher_version: int = 0
    _max_candidates: ClassVar[int | None] = None  # candidates a backend returns per query at most

    dim: int
    bits: int
    metric: str
    hasher: Hasher

    def _init_front(self, dim: int, hasher: Hasher, metric: str) -> None:
        self.dim = dim
        self.hasher = hasher
        self.bits = int(hasher.bits)
        self.metric = check_metric(metric)
        self._nbytes = self.bits // 8
        # (recall target, k) -> tuned setting; see tune() and serving/tuning.py
        self._operating_points: dict[tuple[float, int], OperatingPoint] = {}
        self._tune_lock = threading.Lock()  # one measurement at a time (a search may start one)
        self._tune_progress = True  # the caller's last tune(progress=) choice, for tunes a search starts

    # -- hooks --------------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def _reading(self) -> ContextManager:
        return contextlib.nullcontext()

    def _writing(self) -> ContextManager:
        return contextlib.nullcontext()

    def _hasher_frozen(self) -> bool:
        """Whether stored codes depend on the hasher (then it may no longer be fitted)."""
        return len(self) > 0

    def _present_mask(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _next_auto_id(self) -> int:
        raise NotImplementedError

    def _insert(self, codes: np.ndarray, features: np.ndarray, ids: np.ndarray, labels: np.ndarray | None) -> None:
        """Store checked rows, with labels exactly when the index is labelled (called under ``_writing``)."""
        raise NotImplementedError

    def _has_labels(self) -> bool | None:
        """Whether items carry labels; None while the first insert has yet to decide."""
        raise NotImplementedError

    def _labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Labels of present ids (the index has labels)."""
        raise NotImplementedError

    def _delete(self, ids: np.ndarray) -> None:
        """Remove distinct ids, all present (called under ``_writing``)."""
        raise NotImplementedError

    def _features_of(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _codes_of(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # the search protocol (serving/search.py; called under ``_reading``)
    def _restrict(self, restriction, nq: int) -> Scope:
        """The items an allow-list admits, as a :class:`~hashindex.serving.search.Scope`."""
        raise NotImplementedError

    def _hamming_range(self, qcodes: np.ndarray, radius: int, scope: Scope) -> Candidates:
        """Every item of ``scope`` within Hamming <= radius."""
        raise NotImplementedError

    def _hamming_knn(self, qcodes: np.ndarray, c: int, scope: Scope) -> Candidates:
        """The ``c`` Hamming-nearest items of ``scope``, each query's sorted by distance."""
        raise NotImplementedError

    def _asymmetric_knn(self, x, z, c: int, nprobe: int | None, scope: Scope) -> tuple[Candidates, np.ndarray]:
        """The ``c`` best items of ``scope`` by ``<z, 2b - 1>`` (from the lists nearest ``x`` with
        ``nprobe``), and the codes each query scored ``int64 [nq]``."""
        raise UnsupportedError(f"the {self.backend_name} backend has no asymmetric ranking")

    def _rows(self, keys: np.ndarray, *, features: bool = False, labels: bool = False, codes: bool = False) -> Rows:
        """The stored rows of candidate ``keys``, with the fields asked for."""
        raise NotImplementedError

    def _rerank(self, x: np.ndarray, cands: Candidates, k: int):
        """The exact top-k of each query's candidates: ``(keys, scores, hamming)`` ``[nq, k]``."""
        return pipeline.rerank_rows(self, x, cands, k)

    def _exact_features(self, keys: np.ndarray) -> np.ndarray:
        """float32 feature rows ``[M, D]`` of ``keys`` (>= 0): what the results are rescored on
        when ``_rows`` scores candidates on a compact rerank store (``Rows.exact`` False)."""
        raise NotImplementedError

    def _range_scans(self, radius: int, scope: Scope) -> bool:
        """Whether a range search at ``radius`` scans every code of ``scope`` (else it probes
        hash buckets, and ``n_scanned`` reports the candidates found)."""
        return True

    def _check_nprobe(self, nprobe: int) -> None:
        """Raise unless this index can scan ``nprobe`` partition lists now."""
        raise UnsupportedError(f"nprobe= scans partition lists, which the {self.backend_name} backend does not have")

    def partition_info(self) -> PartitionInfo:
        """The partition stage this index has or would build now (:class:`PartitionInfo`)."""
        return PartitionInfo(None, reason=f"the {self.backend_name} backend has no partition stage")

    def _exact_knn(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over every stored item: (ids int64 [nq, k], scores float32 [nq, k])."""
        raise UnsupportedError(f"the {self.backend_name} backend has no exact search")

    # -- copies -----------------------------------------------------------------------------------
    def __reduce_ex__(self, protocol):
        """Refuse pickle, copy.copy and copy.deepcopy with a HashIndexError that says what to do.

        An index holds FAISS objects, locks and possibly a database connection: none of them
        copy, and a shallow copy would share the row stores with the original.
        """
        raise UnsupportedError(
            f"a {type(self).__name__} cannot be pickled or copied; to share it between processes, {self.SHARING}"
        )

    # -- facts ----------------------------------------------------------------------------------
    def __contains__(self, item_id: object) -> bool:
        if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
            return False
        try:
            ids = check_id_list(np.asarray([item_id]))
        except (InputError, ValueError, TypeError, OverflowError):
            return False
        with self._reading():
            return bool(self._present_mask(ids)[0])

    # -- input preparation ------------------------------------------------------------------------
    def _prepare_features(self, features: np.ndarray, name: str = "features") -> np.ndarray:
        return prepare_features(features, self.dim, self.metric, name)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        return encode_checked(self.hasher, x, self._nbytes)

    def _project(self, x: np.ndarray) -> np.ndarray:
        project = getattr(self.hasher, "project", None)
        if project is None:
            raise InputError(
                f"asymmetric ranking needs a hasher with a continuous projection (project()); "
                f"{type(self.hasher).__name__} has none"
            )
        check_index_hasher_fitted(self.hasher)
        z = np.asarray(project(x), dtype=np.float32)
        if z.shape != (x.shape[0], self.bits):
            raise ModelMismatchError(f"the hasher's projection has shape {z.shape}, expected {(x.shape[0], self.bits)}")
        return z

    def _new_ids(self, ids: np.ndarray | None, n: int) -> np.ndarray:
        """Ids for ``n`` new rows: the next auto ids, or the given ones checked (not yet stored)."""
        if ids is None:
            return auto_ids(self._next_auto_id(), n)  # InputError rather than overflow past 2**63 - 2
        ids = check_new_ids(ids, n)
        present = self._present_mask(ids)
        if present.any():
            raise DuplicateIdError(f"ids already in the index: {ids[present][:5].tolist()}")
        return ids

    # -- hasher ---------------------------------------------------------------------------------
    def fit(self, features: np.ndarray) -> "IndexFront":
        """Fit an untrained hasher on a sample of features (no items are added).

        Refused once the index holds codes: they were made by the current hasher.
        """
        x = self._prepare_features(features)
        if isinstance(self.hasher, LinearHasher):
            check_fit_rows(self.hasher, x.shape[0])  # before waiting for the lock
        with self._writing():
            if self._hasher_frozen():
                raise InputError(
                    "the index already holds codes made by its hasher: refitting would invalidate them "
                    "(build a new index to change the hasher)"
                )
            self._fitting_hasher(lambda: fit_untrained(self.hasher, x))
        return self

    def _fitting_hasher(self, fit) -> None:
        """Run ``fit()`` (under ``_writing``) between two bumps of the hasher version: an add that
        read the version before the fit or during it sees it changed (_add_checked) and encodes
        again; one that reads it after the fit encodes with the new hasher."""
        self._hasher_version += 1
        try:
            fit()
        finally:
            self._hasher_version += 1

    def _needs_first_fit(self) -> bool:
        return isinstance(self.hasher, LinearHasher) and not self.hasher.is_fitted and not self._hasher_frozen()

    # -- mutation -------------------------------------------------------------------------------
    def add(
        self, features: np.ndarray, ids: np.ndarray | None = None, labels: np.ndarray | None = None,
        *, progress: bool | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Encode and add ``features float [N, D]``; returns the int64 ids used.

        ``labels``: int64 ``[N]``, each item's identity (>= 0). An index labels all its items or
        none; its first insert decides.
        An unfitted default hasher is fitted on this first batch (needs >= 2 * bits rows).
        More than :data:`ADD_CHUNK_ROWS` rows (e.g. a memory-mapped ``np.load(path, mmap_mode="r")``)
        are checked, encoded and stored a chunk at a time: the input is never copied whole
        (:meth:`_add_chunked`); ``progress`` shows a bar (default: above ``PROGRESS_MIN_ROWS``).
        """
        raw = as_array(features, "features")
        if raw.ndim == 2 and raw.shape[0] > ADD_CHUNK_ROWS:
            return self._add_chunked(raw, ids, labels, progress)
        x = self._prepare_features(raw)
        labels = None if labels is None else check_labels(labels, x.shape[0])
        if self._needs_first_fit():
            with self._writing():  # two first adds must not both fit
                if self._needs_first_fit():
                    self._new_ids(ids, x.shape[0])  # reject bad ids before fitting changes anything
                    self._check_label_state(labels)
                    self._first_fit(x)
        # encoded outside the write lock (searches go on meanwhile); _add_checked re-encodes under
        # the lock if fit() changed the hasher in between, so stored codes always match it
        version = self._hasher_version
        return self._add_checked(self._encode(x), x, ids, labels, version)

    def _first_fit(self, x: np.ndarray) -> None:
        """Fit the unfitted default hasher on ``x``, the first add's rows (under ``_writing``),
        as a versioned fit (:meth:`_fitting_hasher`): an add encoding meanwhile encodes again."""
        check_fit_rows(self.hasher, x.shape[0], NotFittedError,
                       " (the first batch fits the hasher; or call index.fit(sample) first)")  # fmt: skip
        self._fitting_hasher(lambda: self.hasher.fit(x))

    def _encoded(self, x: np.ndarray) -> np.ndarray:
        """Codes of ``x``, one per row (else ModelMismatchError)."""
        return self._check_code_count(self._encode(x), x)

    @staticmethod
    def _check_code_count(codes: np.ndarray, x: np.ndarray) -> np.ndarray:
        if codes.shape[0] != x.shape[0]:
            raise ModelMismatchError(f"the hasher returned {codes.shape[0]} codes for {x.shape[0]} rows")
        return codes

    def _reserve(self, n: int, labelled: bool = False, extent: np.ndarray | None = None) -> None:
        """Room for ``n`` more rows (a backend hook: one allocation for a bulk add); ``extent``:
        float32 ``[2, D]``, the per-dimension min and max of the whole prepared input, for
        anything that would otherwise learn a range from the first rows."""

    def _add_chunked(self, raw: np.ndarray, ids, labels, progress: bool | None) -> np.ndarray:
        """:meth:`add` of a large array, ``ADD_CHUNK_ROWS`` rows at a time.

        Everything is checked before anything is stored (a first pass over the chunks for NaN /
        zero rows, the ids and labels whole), so bad input still leaves the index unchanged; an
        unfitted default hasher is fitted on ``FIT_SAMPLE_ROWS`` evenly spaced rows. The rows
        are then stored under one write lock (searches wait for the bulk add).
        """
        n = raw.shape[0]
        check_features(raw[:0], self.dim, "features")  # shape and dtype, no copy
        labels = None if labels is None else check_labels(labels, n)
        extent = None  # per-dimension min and max of the prepared rows
        for lo in range(0, n, ADD_CHUNK_ROWS):
            try:
                x = self._prepare_features(raw[lo : lo + ADD_CHUNK_ROWS])
            except InputError as e:
                raise InputError(f"{e} (rows counted from {lo:,}, the start of the chunk that failed)") from None
            low, high = x.min(axis=0), x.max(axis=0)
            extent = (low, high) if extent is None else (np.minimum(extent[0], low), np.maximum(extent[1], high))
        with self._writing():
            new_ids = self._new_ids(ids, n)
            self._check_label_state(labels)
            if self._needs_first_fit():  # on FIT_SAMPLE_ROWS evenly spaced rows
                rows = np.unique(np.linspace(0, n - 1, min(n, FIT_SAMPLE_ROWS)).astype(np.int64))
                self._first_fit(self._prepare_features(raw[rows]))
            self._reserve(n, labelled=labels is not None, extent=None if extent is None else np.stack(extent))
            show = n >= PROGRESS_MIN_ROWS if progress is None else bool(progress)
            bar = tqdm(total=n, desc="add", unit="rows", disable=not show, leave=False)
            for lo in range(0, n, ADD_CHUNK_ROWS):
                hi = min(lo + ADD_CHUNK_ROWS, n)
                x = self._prepare_features(raw[lo:hi])
                self._insert(self._encoded(x), x, new_ids[lo:hi], None if labels is None else labels[lo:hi])
                bar.update(hi - lo)
            bar.close()
        return new_ids

    def add_codes(
        self, codes: np.ndarray, features: np.ndarray, ids: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """Add precomputed codes ``uint8 [N, bits/8]`` with their features (and labels); returns the ids."""
        codes = check_codes(codes, self._nbytes)
        x = self._prepare_features(features)
        if codes.shape[0] != x.shape[0]:
            raise InputError(f"{codes.shape[0]} codes but {x.shape[0]} feature rows")
        labels = None if labels is None else check_labels(labels, x.shape[0])
        return self._add_checked(codes, x, ids, labels)

    def _check_label_state(self, labels: np.ndarray | None) -> None:
        state = self._has_labels()
        if state is True and labels is None:
            raise InputError("this index stores a label for every item: pass labels=")
        if state is False and labels is not None:
            raise InputError("this index has no labels (its first items came without them): build a new index to use labels")

    def _add_checked(
        self, codes: np.ndarray, x: np.ndarray, ids: np.ndarray | None, labels: np.ndarray | None = None,
        hasher_version: int | None = None,
    ) -> np.ndarray:
        """Insert rows under the write lock. ``hasher_version``: the hasher version read before
        ``codes`` were encoded from ``x``; if fit() has changed the hasher since, the rows are
        encoded again here, under the lock (fit() takes it too), so no code of a replaced hasher
        is ever stored."""
        self._check_code_count(codes, x)
        with self._writing():
            if hasher_version is not None and hasher_version != self._hasher_version:
                codes = self._encoded(x)
            new_ids = self._new_ids(ids, x.shape[0])
            self._check_label_state(labels)
            if x.shape[0]:
                self._insert(codes, x, new_ids, labels)
        return new_ids

    def remove(self, ids: np.ndarray) -> int:
        """Remove items by id (all must exist, else nothing is removed); returns the count."""
        ids = np.unique(check_id_list(ids))
        with self._writing():
            self._delete(ids)
        return int(ids.size)

    # -- lookup ---------------------------------------------------------------------------------
    def get_features(self, ids: np.ndarray) -> np.ndarray:
        """Stored features ``float32 [n, D]`` for ``ids``, in the order given."""
        ids = check_id_list(ids)
        with self._reading():
            return self._features_of(ids)

    def sample_items(self, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``min(count, len)`` stored items drawn at random with ``seed``: ``(ids int64 [m],
        features float32 [m, D])``, in storage order, read under one lock (a concurrent ``remove``
        cannot take an id away between the two)."""
        count = check_positive_int(count, "count")
        with self._reading():
            ids = self.ids
            rows = np.sort(np.random.default_rng(seed).choice(len(ids), min(count, len(ids)), replace=False))
            return ids[rows], self._features_of(ids[rows])

    def get_codes(self, ids: np.ndarray) -> np.ndarray:
        """Stored codes ``uint8 [n, bits/8]`` for ``ids``, in the order given."""
        ids = check_id_list(ids)
        with self._reading():
            return self._codes_of(ids)

    @property
    def has_labels(self) -> bool:
        """Whether the items carry labels."""
        return bool(self._has_labels())

    def get_labels(self, ids: np.ndarray) -> np.ndarray:
        """Stored labels ``int64 [n]`` for ``ids``, in the order given."""
        ids = check_id_list(ids)
        with self._reading():
            if not self._has_labels():
                raise InputError("this index has no labels (add items with labels=...)")
            return self._labels_of(ids)

    def to_faiss(self):
        """A plain ``faiss.IndexBinaryIDMap`` over an ``IndexBinaryFlat`` holding exactly this
        index's codes and ids (for ``faiss.write_index_binary`` and FAISS-only consumers)."""
        with self._reading():
            return to_faiss_binary(self.bits, self.ids, self.codes)

    # -- search ---------------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        radius: int | None = None,
        candidates: int | None = None,
        *,
        ranking: str | None = None,
        nprobe: int | None = None,
        recall: float | None = None,
        query_codes: np.ndarray | None = None,
        filter_ids: np.ndarray | None = None,
        filter_labels: np.ndarray | None = None,
        group_by: str | None = None,
        group_size: int | None = None,
        min_score: float | None = None,
    ) -> SearchResult:
        """Candidates from the codes, then exact top-k on the stored features.

        Args:
            queries: float ``[nq, D]``.
            k: results per query, at most ``core.validation.MAX_K`` (and ``len(queries) * k``
                at most ``MAX_RESULT_CELLS``); larger is refused before anything is allocated.
            radius: take every item within Hamming <= radius (a radius beyond ``bits`` is
                ``bits``: every item).
            candidates: take the ``candidates`` best-ranked items (default: multi-probe for
                Hamming ranking; the tuned or default setting for asymmetric ranking, see the
                module docstring).
            ranking: "hamming", "asymmetric" (the query's continuous projection against the
                items' bits; needs a hasher with ``project``, and no ``radius``), or None: the
                backend's default (:attr:`default_ranking`).
            nprobe: scan only the ``nprobe`` nearest partition lists (asymmetric ranking on an
                index with partitions).
            recall: use (or tune, see :meth:`tune`) the operating point for recall@1 >= recall.
            query_codes: precomputed query codes (skips the hasher; Hamming ranking only).
            filter_ids, filter_labels: allow-lists of ids / labels; an item must pass every
                list given. Applied in the candidate stage, before ranking.
            group_by: "label": the k best distinct labels, each with its best item (its
                ``group_size`` best items; results are then ``[nq, k * group_size]``, see
                :class:`SearchResult`). Candidates are widened until k labels are found (the
                ``radius`` ball is a rule and is not widened).
            min_score: open-set threshold: results with a score below it (l2: a distance
                above it) become padding (id -1).
        """
        a = self._search_args(k, radius, candidates, query_codes is not None, ranking=ranking, nprobe=nprobe,
                              recall=recall, filter_ids=filter_ids, filter_labels=filter_labels, group_by=group_by,
                              group_size=group_size, min_score=min_score)  # fmt: skip
        x = self._prepare_features(queries, name="queries")
        check_result_size(x.shape[0], a.width)
        if a.ranking == "hamming":
            qcodes = self._encode(x) if query_codes is None else check_query_codes(query_codes, self._nbytes, x.shape[0])
            return self._run_search(a, Queries(x, qcodes))
        if query_codes is not None:
            raise InputError("asymmetric ranking needs the query features' projection, not precomputed codes")
        z = self._project(x)
        return self._run_search(a, Queries(x, binarize(z), z))

    def _search_args(self, k, radius, candidates, has_query_codes: bool, *, ranking=None, nprobe=None, recall=None,
                     filter_ids=None, filter_labels=None, group_by=None, group_size=None, min_score=None) -> Request:  # fmt: skip
        """Every search argument checked, before any query is encoded (the keywords: search's options)."""
        k, radius, candidates = check_search_args(k, radius, candidates, self.bits)  # radius > bits: every item
        nprobe, recall = check_tuning_args(nprobe, recall, radius, candidates)
        ranking = planner.resolve_ranking(ranking, self.default_ranking, radius, nprobe, recall, has_query_codes)
        if ranking not in self.RANKINGS:
            raise UnsupportedError(f"ranking={ranking!r} is not supported by the {self.backend_name} backend")
        options = check_search_options(
            filter_ids, filter_labels, group_by, group_size, min_score, has_labels=bool(self._has_labels())
        )
        a = Request(k, radius, candidates, ranking, nprobe, recall, options)
        if a.width > MAX_K:
            raise InputError(f"k * group_size = {a.width:,} results per query, more than the {MAX_K:,} a search returns")
        return a

    def _run_search(self, a: Request, q: Queries) -> SearchResult:
        """Checked, encoded queries -> results: plan every default, then run the pipeline."""
        plan = planner.plan_search(self, a) if q.x.shape[0] else planner.Plan(a.k, a.ranking, options=a.options)
        return pipeline.execute(self, plan, q)

    @property
    def default_ranking(self) -> str:
        """What ``search`` ranks by when ``ranking`` is not given (and no radius or query codes are):
        "asymmetric" when the backend scores it and the hasher has ``project()``, else "hamming"."""
        if "asymmetric" in self.RANKINGS and callable(getattr(self.hasher, "project", None)):
            return "asymmetric"
        return "hamming"

    def exact_search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by the index's metric over every stored item, no codes involved (the
        ground truth :meth:`tune` measures against): ``(ids int64 [nq, k'], scores float32
        [nq, k'])`` with ``k' = min(k, len(index))``, best first."""
        k = check_positive_int(k, "k")
        x = self._prepare_features(queries, name="queries")
        return self._exact_knn(x, k)

    def _current_point(self, recall: float, k: int, explicit: bool) -> OperatingPoint | None:
        """The operating point a search should use, (re-)measured when missing or stale; None
        where the default search should stay the flat scan (no target asked, no partitions)."""
        point = self.operating_point(recall, k)
        n = len(self)
        if point is not None and not point.is_stale(n):
            return point
        if not explicit and (point is None or self._takes_images()) and (
            n < tuning.AUTO_TUNE_MIN_ITEMS or getattr(self, "partition_lists", None) is None or self._takes_images()
        ):
            return None  # nothing to choose between (or nothing to measure with): the flat scan, default budget
        if n < 2:
            return point
        with self._tune_lock:
            point = self.operating_point(recall, k)  # another search may have measured it meanwhile
            if point is None or point.is_stale(len(self)):
                target_k = point.target_k if point is not None else DEFAULT_RECALL_AT_K
                point = self.tune(recall=recall, k=k, recall_at_k=target_k, progress=self._tune_progress)
        return point

    # -- recall targets ---------------------------------------------------------------------------
    @property
    def operating_points(self) -> dict[tuple[float, int], OperatingPoint]:
        """Tuned settings keyed by (recall target, k) (a copy)."""
        return dict(self._operating_points)

    def operating_point(self, recall: float = DEFAULT_RECALL, k: int = 10) -> OperatingPoint | None:
        """The tuned setting for ``recall`` and ``k``, else the one for the same target and the
        smallest larger k (it ranks at least as many candidates), else None."""
        recall, k = check_recall(recall), check_positive_int(k, "k")
        points = self._operating_points
        if (recall, k) in points:
            return points[(recall, k)]
        larger = sorted(kk for (r, kk) in points if r == recall and kk > k)
        return points[(recall, larger[0])] if larger else None

    def tune(
        self, recall: float = DEFAULT_RECALL, k: int = 10, sample: int = 1000, seed: int = 0, *,
        recall_at_k: float | None = DEFAULT_RECALL_AT_K, queries: np.ndarray | None = None, progress: bool = True,
    ) -> OperatingPoint:  # fmt: skip
        """Find and keep the fastest asymmetric setting reaching recall@1 >= ``recall`` and, for
        k > 1, recall@k >= ``recall_at_k`` (None: recall@1 only).

        Measured on ``queries`` (features, as they will be searched) or, by default, on ``sample``
        stored items: half searched as they are, their own match excluded, half perturbed like a
        new capture (serving/tuning.py); the flat scan and, where the index has or can build
        partitions, nprobe = 1, 2, 4 .. every list, each at its smallest sufficient candidate
        count. The point (with its measured recalls and a lower confidence bound) is kept under
        (recall, k), saved in the index manifest, and used by ``search`` when asked for that
        recall (and by default for :data:`DEFAULT_RECALL`); it is measured again when the index
        has halved or doubled since. If no setting reaches the targets, the most accurate one
        measured is kept, with a warning. ``progress`` is remembered for measurements a search
        starts.
        """
        recall, k = check_recall(recall), check_positive_int(k, "k")
        sample = check_positive_int(sample, "sample")
        if recall_at_k is not None:
            recall_at_k = check_recall(recall_at_k, "recall_at_k")
        self._tune_progress = bool(progress)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InputError(f"seed must be an integer, got {seed!r}")
        if "asymmetric" not in self.RANKINGS:
            raise UnsupportedError(f"tune() sets asymmetric search, which the {self.backend_name} backend does not do")
        if self._takes_images():
            raise UnsupportedError(
                "tune() measures by searching the stored features, and this index's image model takes images, "
                "not features: pass candidates= (and nprobe=) to search_images instead of recall="
            )
        self._project(np.zeros((0, self.dim), np.float32))  # a hasher without project(): say so before measuring
        point = tuning.tune(self, recall, k, sample, int(seed), progress, recall_at_k=recall_at_k, queries=queries)
        with self._writing():
            self._operating_points[(recall, k)] = point
            self._release_scans(point)
        return point

    def _release_scans(self, point: OperatingPoint) -> None:
        """Drop derived scan structures ``point`` does not use (under the write lock); a backend
        that keeps none has nothing to drop."""

    def range_search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All items within Hamming <= ``radius``, without reranking.

        ``queries`` are features (float ``[nq, D]``, encoded with the hasher) or packed codes
        (uint8 ``[nq, bits/8]``). Returns CSR ``(lims [nq+1], ids [M], hamming [M])``.
        """
        radius = check_radius(radius, self.bits)
        q = as_array(queries, "queries")
        qcodes = check_codes(q, self._nbytes) if q.dtype == np.uint8 else self._encode(self._prepare_features(q, "queries"))
        with self._reading():
            if len(self) == 0 or qcodes.shape[0] == 0:
                return tuple(no_candidates(qcodes.shape[0]))
            lims, keys, hamming = self._hamming_range(qcodes, radius, Scope(len(self)))
            rows = self._rows(keys)
            return lims, rows.ids[rows.at], hamming

    # -- images, through a fused ONNX model (backbone + hash head in one graph) -------------------
    def _takes_images(self) -> bool:
        """Whether queries are images (a fused image model), not feature rows."""
        return getattr(self.hasher, "kind", None) == "images"

    def _image_encoder(self):
        if not getattr(self.hasher, "has_features", False):
            raise InputError(
                "this index's hasher does not take images: build it with a fused model "
                "(hashindex export --backbone ... --head ...) to use add_images / search_images"
            )
        return self.hasher

    def add_images(
        self, images: np.ndarray, ids: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """Add preprocessed images ``float32 [N, 3, H, W]``: one model run gives codes and features."""
        encoder = self._image_encoder()
        if labels is not None:
            check_labels(labels, np.shape(images)[0] if np.ndim(images) else -1)  # before running the model
        out = encoder.run(images)
        return self.add_codes(out.codes, out.features, ids, labels)

    def search_images(
        self, images: np.ndarray, k: int = 10, radius: int | None = None, candidates: int | None = None, **options
    ) -> SearchResult:
        """:meth:`search` with preprocessed query images ``float32 [nq, 3, H, W]``: one model run
        gives the queries' features, codes and projections. ``options``: the keyword options of
        :meth:`search` (``ranking``, ``nprobe``, ``recall``, ``filter_ids``, ``filter_labels``,
        ``group_by``, ``group_size``, ``min_score``), all but ``query_codes``."""
        unknown = sorted(set(options) - IMAGE_SEARCH_OPTIONS)
        if unknown:
            raise TypeError(f"search_images() got unexpected keyword arguments {unknown}; it takes {sorted(IMAGE_SEARCH_OPTIONS)}")
        a = self._search_args(k, radius, candidates, False, **options)
        out = self._image_encoder().run(images)
        x = self._prepare_features(out.features, name="queries")
        check_result_size(x.shape[0], a.width)
        z = pre_tanh(out.embedding) if a.ranking == "asymmetric" else None
        return self._run_search(a, Queries(x, out.codes, z))


# search()'s keyword options that search_images() takes too (its images give the query codes)
IMAGE_SEARCH_OPTIONS = frozenset(inspect.signature(IndexFront.search).parameters) - {
    "self", "queries", "k", "radius", "candidates", "query_codes"
}
