"""The front every index backend shares: argument checks, fit/add guards, search orchestration.

A backend (the FAISS :class:`~hashindex.serving.index.HashIndex`, the
:class:`~hashindex.serving.milvus.MilvusHashIndex`) subclasses :class:`IndexFront` once and
supplies storage and candidate generation through a handful of hooks (``_insert``, ``_delete``,
``_present_mask``, ``_search_encoded`` ...). Everything a user passes in is checked here, once,
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
- ``recall=r``: the index's tuned operating point for recall@1 >= r (serving/tuning.py;
  tuned on the spot if the index has none for that target);
- none of these: Hamming ranking takes the smallest radius giving each query at least
  ``10 * k`` candidates (multi-probe); asymmetric ranking takes the operating point tuned for
  :data:`DEFAULT_RECALL` if the index has one, else the flat scan with
  :func:`default_candidates` (``max(50 * k, 500)``) candidates.
Candidates are reranked by exact similarity on the stored features, best first.

Identity-aware search (serving/filters.py, serving/grouping.py): items may carry a label (the
identity); ``filter_ids`` / ``filter_labels`` restrict the candidates before ranking;
``group_by="label"`` returns the k best distinct labels; ``min_score`` drops results below an
open-set threshold (calibrated by hashindex.evaluation.calibration). A filtered search never
probes the partition stage: the allowed rows are scanned exactly (serving/filters.py says why).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ClassVar, ContextManager

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
    check_index_hasher_fitted,
    encode_checked,
    fit_untrained,
    make_hasher,
)
from hashindex.serving.filters import PLAIN, SearchOptions, check_labels, check_search_options
from hashindex.serving.grouping import below_threshold
from hashindex.serving.rerank import METRICS, higher_is_better
from hashindex.serving import tuning
from hashindex.serving.interop import to_faiss_binary
from hashindex.serving.tuning import DEFAULT_RECALL, OperatingPoint

RANKINGS = ("hamming", "asymmetric")
# 128-bit codes + rerank beat HNSW at recall@1 0.95 on 1M face-like embeddings where 64-bit
# ones did not (benchmarks/README.md); 16 bytes a code is small beside the features.
DEFAULT_BITS = 128

CSR = tuple[np.ndarray, np.ndarray, np.ndarray]  # lims [nq+1], ids or positions [M], hamming [M]


# add(): rows checked, encoded and stored at a time (the input is never copied whole); an
# unfitted default hasher is fitted on this many evenly spaced rows of a large first add; a bar
# is shown for adds of at least PROGRESS_MIN_ROWS rows
ADD_CHUNK_ROWS = 65_536
FIT_SAMPLE_ROWS = 262_144
PROGRESS_MIN_ROWS = 1_000_000


def default_candidates(k: int) -> int:
    """Candidates of an untuned asymmetric search: ``max(50 * k, 500)``.

    On the 1M face-like benchmark gallery (k = 10) 500 was the smallest measured count whose
    recall@1 reached 0.99, and the scan, not the rerank, dominates the cost there, so a few
    hundred extra candidates are nearly free; 50 per result keeps the margin for larger k
    (benchmarks/README.md, "Partition stage").
    """
    return max(50 * k, 500)


@dataclass
class SearchResult:
    """Per-query results, best first.

    ids: int64 ``[nq, k]``, -1 where fewer than k candidates were found.
    scores: float32 ``[nq, k]``: cosine / inner product (higher is better) or squared L2
        distance (lower is better) on the stored full-precision features.
    hamming: int32 ``[nq, k]``: Hamming distance of each result's code to the query's (-1 pad).
    n_candidates: int64 ``[nq]``: how many items were reranked for each query.
    labels: int64 ``[nq, k]``: each result's label (-1 pad); None when the index has no labels.
    exact_scores: whether ``scores`` are exact on the stored features. An index with a compact
        rerank store (``HashIndex(rerank="int8" | "float16")``) ranks the candidates on it and
        then rescores the k returned rows from its float store (exact, True); a grouped search
        on a compact store keeps the compact store's scores (False).

    With ``group_by="label"`` and ``group_size=g`` the arrays are ``[nq, k * g]``: label block j
    in columns ``j*g .. j*g+g-1`` (``ids.reshape(nq, k, g)``: one row per label), best first.
    """

    ids: np.ndarray
    scores: np.ndarray
    hamming: np.ndarray
    n_candidates: np.ndarray
    labels: np.ndarray | None = None
    exact_scores: bool = True


def resolve_hasher(dim: int, hasher: Hasher | str | None, encoder: Hasher | None, bits: int | None) -> Hasher:
    """The hasher an index of dimension ``dim`` uses: the one given (an object, or a kind name
    such as ``"itq"``), else an unfitted ITQ hasher of ``bits`` (default 128, capped at ``dim``)."""
    if hasher is not None and encoder is not None:
        raise InputError("pass either hasher or encoder, not both")
    hasher = hasher if hasher is not None else encoder
    if bits is not None:
        bits = check_bits(bits)
    if isinstance(hasher, str):
        if hasher not in HASHER_KINDS:
            raise InputError(f"unknown hasher {hasher!r}; choose one of {', '.join(HASHER_KINDS)} or pass a hasher object")
        hasher = make_hasher(hasher, dim, bits or min(DEFAULT_BITS, dim - dim % 8))
    elif hasher is None:
        hasher = make_hasher("itq", dim, bits or min(DEFAULT_BITS, dim - dim % 8))
    elif not (hasattr(hasher, "encode") and isinstance(getattr(hasher, "bits", None), (int, np.integer))):
        raise InputError(
            f"hasher must be a hasher object with bits and encode() (or one of {', '.join(HASHER_KINDS)}), "
            f"got {type(hasher).__name__}"
        )
    if bits is not None and bits != hasher.bits:
        raise InputError(f"bits={bits} disagrees with the hasher's {hasher.bits} bits")
    hasher_dim = getattr(hasher, "dim", None)
    if hasher_dim is not None and getattr(hasher, "kind", None) != "images" and hasher_dim != dim:
        raise InputError(f"hasher expects dimension {hasher_dim}, index has dim={dim}")
    return hasher


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def check_ranking(ranking: str, radius: int | None) -> None:
    """A known ranking, and no Hamming radius with the asymmetric one."""
    if ranking not in RANKINGS:
        raise InputError(f"unknown ranking {ranking!r}; choose one of {', '.join(RANKINGS)}")
    if ranking == "asymmetric" and radius is not None:
        raise InputError("radius selects by Hamming distance; asymmetric ranking takes candidates= (or k alone)")


def empty_csr(nq: int) -> CSR:
    return np.zeros(nq + 1, np.int64), np.empty(0, np.int64), np.empty(0, np.int32)


def no_queries_result(k: int, labelled: bool = False) -> SearchResult:
    """The result of a search with zero queries (answered here: no backend is asked); ``k``
    columns (``k * group_size`` when grouping), labels too when the index has them."""
    return SearchResult(
        np.full((0, k), -1, np.int64), np.empty((0, k), np.float32), np.full((0, k), -1, np.int32), np.empty(0, np.int64),
        np.full((0, k), -1, np.int64) if labelled else None,
    )


@dataclass(frozen=True)
class _SearchArgs:
    """A search's checked arguments (IndexFront._search_args)."""

    k: int
    radius: int | None
    candidates: int | None
    ranking: str
    nprobe: int | None
    recall: float | None
    options: SearchOptions

    @property
    def width(self) -> int:
        """Result columns per query: ``k``, or ``k * group_size`` when grouping by label."""
        return self.k * (self.options.group_size or 1)


@dataclass(frozen=True)
class SearchPlan:
    """What a backend executes: the checked arguments with the asymmetric settings resolved.

    ``nprobe`` only with asymmetric ranking (``z`` given); ``options`` restrict the candidates
    (filters) and shape the results (grouping); the front applies ``options.min_score``.
    """

    k: int
    radius: int | None
    candidates: int | None
    nprobe: int | None = None
    options: SearchOptions = PLAIN


class IndexFront:
    """The public API of every hashindex index; subclasses store items and find candidates.

    Subclass hooks: ``__len__``, ``_present_mask``, ``_next_auto_id``, ``_insert``, ``_delete``,
    ``_features_of``, ``_codes_of``, ``_labels_of``, ``_has_labels``, ``_search_encoded``,
    ``_range_encoded``, and optionally ``_reading`` / ``_writing`` (lock contexts),
    ``_hasher_frozen`` and ``RANKINGS``.
    """

    backend_name: ClassVar[str] = "index"
    RANKINGS: ClassVar[tuple[str, ...]] = RANKINGS

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

    def _search_encoded(self, x: np.ndarray, qcodes: np.ndarray, z: np.ndarray | None, plan: SearchPlan) -> SearchResult:
        """Candidates for checked queries ``x`` (their codes ``qcodes``; ``z``, their projections,
        for asymmetric ranking), restricted by ``plan.options.restriction``, then the exact rerank
        (grouped by label when ``plan.options.grouped``); ``labels`` filled in when the index has them."""
        raise NotImplementedError

    def _check_nprobe(self, nprobe: int) -> None:
        """Raise unless this index can scan ``nprobe`` partition lists now."""
        raise UnsupportedError(f"nprobe= scans partition lists, which the {self.backend_name} backend does not have")

    def _tuning_partitions(self) -> tuple[int | None, list[int]]:
        """(nlist, nprobe values to try) for the tuner; (None, []) without a partition stage."""
        return None, []

    def _exact_knn(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over every stored item: (ids int64 [nq, k], scores float32 [nq, k])."""
        raise UnsupportedError(f"the {self.backend_name} backend has no exact search to tune against")

    def _range_encoded(self, qcodes: np.ndarray, radius: int) -> CSR:
        """All items within Hamming <= radius: ``(lims, ids, hamming)`` (the index is not empty)."""
        raise NotImplementedError

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

    def _check_ranking(self, ranking: str, radius: int | None) -> None:
        check_ranking(ranking, radius)
        if ranking not in self.RANKINGS:
            raise UnsupportedError(f"ranking={ranking!r} is not supported by the {self.backend_name} backend")

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
        with self._writing():
            if self._hasher_frozen():
                raise InputError(
                    "the index already holds codes made by its hasher: refitting would invalidate them "
                    "(build a new index to change the hasher)"
                )
            fit_untrained(self.hasher, x)
        return self

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
                    if x.shape[0] < 2 * self.bits:
                        raise NotFittedError(
                            f"the {self.hasher.kind} hasher is fitted on the first batch, which needs at least "
                            f"{2 * self.bits} vectors (got {x.shape[0]}); call index.fit(sample) first"
                        )
                    self.hasher.fit(x)
        return self._add_checked(self._encode(x), x, ids, labels)

    def _reserve(self, n: int, labelled: bool = False, sample: Callable[[], np.ndarray] | None = None) -> None:
        """Room for ``n`` more rows (a backend hook: one allocation for a bulk add); ``sample()``:
        prepared rows spread over the whole input, for anything trained on the first rows."""

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
        for lo in range(0, n, ADD_CHUNK_ROWS):
            try:
                self._prepare_features(raw[lo : lo + ADD_CHUNK_ROWS])
            except InputError as e:
                raise InputError(f"{e} (rows counted from {lo:,}, the start of the chunk that failed)") from None
        with self._writing():
            new_ids = self._new_ids(ids, n)
            self._check_label_state(labels)
            drawn: list[np.ndarray] = []

            def sample() -> np.ndarray:  # FIT_SAMPLE_ROWS evenly spaced rows, prepared once, if asked for
                if not drawn:
                    rows = np.unique(np.linspace(0, n - 1, min(n, FIT_SAMPLE_ROWS)).astype(np.int64))
                    drawn.append(self._prepare_features(raw[rows]))
                return drawn[0]

            if self._needs_first_fit():
                self.hasher.fit(sample())
            self._reserve(n, labelled=labels is not None, sample=sample)
            drawn.clear()
            show = n >= PROGRESS_MIN_ROWS if progress is None else bool(progress)
            bar = tqdm(total=n, desc="add", unit="rows", disable=not show, leave=False)
            for lo in range(0, n, ADD_CHUNK_ROWS):
                hi = min(lo + ADD_CHUNK_ROWS, n)
                x = self._prepare_features(raw[lo:hi])
                codes = self._encode(x)
                if codes.shape[0] != x.shape[0]:
                    raise ModelMismatchError(f"the hasher returned {codes.shape[0]} codes for {x.shape[0]} rows")
                self._insert(codes, x, new_ids[lo:hi], None if labels is None else labels[lo:hi])
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
        self, codes: np.ndarray, x: np.ndarray, ids: np.ndarray | None, labels: np.ndarray | None = None
    ) -> np.ndarray:
        if codes.shape[0] != x.shape[0]:
            raise ModelMismatchError(f"the hasher returned {codes.shape[0]} codes for {x.shape[0]} rows")
        with self._writing():
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
        a = self._search_args(k, radius, candidates, ranking, nprobe, recall, query_codes is not None,
                              filter_ids, filter_labels, group_by, group_size, min_score)  # fmt: skip
        x = self._prepare_features(queries, name="queries")
        check_result_size(x.shape[0], a.width)
        if a.ranking == "hamming":
            qcodes = self._encode(x) if query_codes is None else check_query_codes(query_codes, self._nbytes, x.shape[0])
            return self._run_search(x, qcodes, None, a)
        if query_codes is not None:
            raise InputError("asymmetric ranking needs the query features' projection, not precomputed codes")
        z = self._project(x)
        return self._run_search(x, binarize(z), z, a)

    def _search_args(
        self, k, radius, candidates, ranking, nprobe, recall, has_query_codes: bool,
        filter_ids, filter_labels, group_by, group_size, min_score,
    ) -> _SearchArgs:  # fmt: skip
        """Every search argument checked, before any query is encoded."""
        k, radius, candidates = check_search_args(k, radius, candidates, self.bits)  # radius > bits: every item
        nprobe, recall = check_tuning_args(nprobe, recall, radius, candidates)
        ranking = self._resolve_ranking(ranking, radius, nprobe, recall, has_query_codes)
        options = check_search_options(
            filter_ids, filter_labels, group_by, group_size, min_score, has_labels=bool(self._has_labels())
        )
        a = _SearchArgs(k, radius, candidates, ranking, nprobe, recall, options)
        if a.width > MAX_K:
            raise InputError(f"k * group_size = {a.width:,} results per query, more than the {MAX_K:,} a search returns")
        return a

    def _run_search(self, x, qcodes, z, a: _SearchArgs) -> SearchResult:
        """Encoded queries -> results: zero queries answered here, asymmetric settings resolved,
        then the backend and the open-set threshold."""
        if x.shape[0] == 0:
            return no_queries_result(a.width, labelled=bool(self._has_labels()))
        candidates, nprobe = a.candidates, None
        if z is not None:
            candidates, nprobe = self._asymmetric_settings(a.k, a.candidates, a.nprobe, a.recall)
        res = self._search_encoded(x, qcodes, z, SearchPlan(a.k, a.radius, candidates, nprobe, a.options))
        return self._finish(res, a.options)

    def _finish(self, res: SearchResult, options: SearchOptions) -> SearchResult:
        """The open-set threshold: results below ``min_score`` become padding."""
        if options.min_score is None:
            return res
        drop = below_threshold(res.scores, options.min_score, self.metric) & (res.ids >= 0)
        res.ids[drop] = -1
        res.scores[drop] = -np.inf if higher_is_better(self.metric) else np.inf
        res.hamming[drop] = -1
        if res.labels is not None:
            res.labels[drop] = -1
        return res

    @property
    def default_ranking(self) -> str:
        """What ``search`` ranks by when ``ranking`` is not given (and no radius or query codes are):
        "asymmetric" when the backend scores it and the hasher has ``project()``, else "hamming"."""
        if "asymmetric" in self.RANKINGS and callable(getattr(self.hasher, "project", None)):
            return "asymmetric"
        return "hamming"

    def _resolve_ranking(self, ranking, radius, nprobe, recall, has_query_codes: bool) -> str:
        if ranking is None:
            if nprobe is not None or recall is not None:
                ranking = "asymmetric"  # only the asymmetric stage has these knobs
            elif radius is not None or has_query_codes:
                ranking = "hamming"  # Hamming rules: a radius, codes without features' projection
            else:
                ranking = self.default_ranking
        self._check_ranking(ranking, radius)
        if ranking == "hamming" and (nprobe is not None or recall is not None):
            raise InputError("nprobe= and recall= set the asymmetric stage; Hamming ranking takes radius= or candidates=")
        return ranking

    def _asymmetric_settings(self, k, candidates, nprobe, recall) -> tuple[int, int | None]:
        """(candidates, nprobe) for an asymmetric search: as given; else the operating point for
        ``recall`` (tuned now if missing) or for DEFAULT_RECALL (if tuned); else the default."""
        if nprobe is not None:
            self._check_nprobe(nprobe)
        if candidates is not None or nprobe is not None:
            return (candidates if candidates is not None else default_candidates(k)), nprobe
        point = self.operating_point(DEFAULT_RECALL if recall is None else recall, k)
        if point is None:
            if recall is None:
                return default_candidates(k), None
            point = self.tune(recall=recall, k=k)
        if point.nprobe is not None:
            self._check_nprobe(point.nprobe)
        return max(point.candidates, k), point.nprobe

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
        self, recall: float = DEFAULT_RECALL, k: int = 10, sample: int = 1000, seed: int = 0, *, progress: bool = True
    ) -> OperatingPoint:
        """Find and keep the cheapest asymmetric setting reaching recall@1 >= ``recall``.

        Measured on ``sample`` of the index's own items (each query is a stored item's feature,
        its own match excluded): the flat scan at a few candidate counts and, where the index
        has or can build partitions, nprobe x candidates (serving/tuning.py). The point is kept
        under (recall, k), saved in the index manifest, and used by ``search`` when asked for
        that recall (and by default for :data:`DEFAULT_RECALL`). If no setting reaches the
        target, the most accurate one measured is kept, with a warning.
        """
        recall, k = check_recall(recall), check_positive_int(k, "k")
        sample = check_positive_int(sample, "sample")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InputError(f"seed must be an integer, got {seed!r}")
        if "asymmetric" not in self.RANKINGS:
            raise UnsupportedError(f"tune() sets asymmetric search, which the {self.backend_name} backend does not do")
        self._project(np.zeros((0, self.dim), np.float32))  # a hasher without project(): say so before measuring
        point = tuning.tune(self, recall, k, sample, int(seed), progress)
        with self._writing():
            self._operating_points[(recall, k)] = point
        return point

    def range_search(self, queries: np.ndarray, radius: int) -> CSR:
        """All items within Hamming <= ``radius``, without reranking.

        ``queries`` are features (float ``[nq, D]``, encoded with the hasher) or packed codes
        (uint8 ``[nq, bits/8]``). Returns CSR ``(lims [nq+1], ids [M], hamming [M])``.
        """
        radius = check_radius(radius, self.bits)
        q = as_array(queries, "queries")
        qcodes = check_codes(q, self._nbytes) if q.dtype == np.uint8 else self._encode(self._prepare_features(q, "queries"))
        with self._reading():
            if len(self) == 0 or qcodes.shape[0] == 0:
                return empty_csr(qcodes.shape[0])
            return self._range_encoded(qcodes, radius)

    # -- images, through a fused ONNX model (backbone + hash head in one graph) -------------------
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
        self,
        images: np.ndarray,
        k: int = 10,
        radius: int | None = None,
        candidates: int | None = None,
        *,
        ranking: str | None = None,
        nprobe: int | None = None,
        recall: float | None = None,
        filter_ids: np.ndarray | None = None,
        filter_labels: np.ndarray | None = None,
        group_by: str | None = None,
        group_size: int | None = None,
        min_score: float | None = None,
    ) -> SearchResult:
        """:meth:`search` with preprocessed query images ``float32 [nq, 3, H, W]``."""
        a = self._search_args(k, radius, candidates, ranking, nprobe, recall, False,
                              filter_ids, filter_labels, group_by, group_size, min_score)  # fmt: skip
        out = self._image_encoder().run(images)
        x = self._prepare_features(out.features, name="queries")
        check_result_size(x.shape[0], a.width)
        z = pre_tanh(out.embedding) if a.ranking == "asymmetric" else None
        return self._run_search(x, out.codes, z, a)

