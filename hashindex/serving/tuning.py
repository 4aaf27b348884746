"""Recall-targeted settings for asymmetric search, measured on queries like the ones users send.

``index.tune(recall=0.99, k=10)`` measures recall@1 *and* recall@k (``recall_at_k``, 0.95 by
default when k > 1; ``recall_at_k=None`` targets recall@1 only) and keeps the fastest setting
meeting both.

Queries: the caller's (``queries=``, features as they will be searched), else ``sample`` stored
items drawn with ``seed``, half of them searched as they are with their own match excluded
(a held-out item against the rest) and half perturbed like a new capture of the same subject:
moved in a random direction by the median distance between an item and its nearest other item.
Ground truth is the
exact top-k over every stored item.

Grid: every candidate count ``c`` from just above k to ``min(n, MAX_CANDIDATES)`` (geometric,
ratio ``CANDIDATE_RATIO``) at the flat scan and at ``nprobe`` = 1, 2, 4, ..., nlist lists (and
two bisection steps between the fastest one's nprobe and the grid point below it). Recall
grows with c at a fixed nprobe, so each nprobe is searched by bisection for its smallest c
meeting the targets, starting from the previous nprobe's answer (more lists need no more
candidates); nprobe stops growing once its cheapest measured setting is slower than the best
found. The grid is screened on ``SCREEN_QUERIES`` of the queries (each setting timed
``SCREEN_TIMINGS`` times, the best kept); the few fastest settings
found are then verified on all of them (a step or two more candidates if they fall short), the
fastest one's count is bisected twice against the grid step below it, and they are re-timed in
turns before one is kept.

The point reports its confidence: the number of queries and a Wilson lower bound on recall@1.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.validation import check_positive_int, check_recall

DEFAULT_RECALL = 0.99
DEFAULT_RECALL_AT_K = 0.95  # recall@k target of tune(k > 1) unless the caller passes recall_at_k
# A default search on an index with (or able to build) a partition stage measures its own
# operating point from this many items; below, the flat scan with the default budget is kept.
AUTO_TUNE_MIN_ITEMS = 100_000
CANDIDATE_RATIO = 1.5  # geometric candidate grid
CANDIDATE_REFINE = 2  # bisection steps between the fastest verified count and the grid point below it
MAX_CANDIDATES = 20_000  # largest candidate count tried (at most the index size)
NPROBE_RATIO = 2  # geometric nprobe grid, 1 .. nlist
NPROBE_REFINE = 2  # bisection steps between the fastest partitioned depth and the grid point below it
RETIME = 3  # fastest feasible settings verified on every query and re-timed, in turns
SCREEN_QUERIES = 300  # the grid is searched on this many of the queries, the finalists on all
# Passes timed per screened setting (the best kept): one pass's time on a shared machine swung by
# up to ~40%, which pruned or passed over the fastest depth in some tunes and not others
# (benchmarks/README.md, "Cheaper gathers, a tuner that holds its point")
SCREEN_TIMINGS = 2
VERIFY_STEPS = 2  # a finalist short of the targets on every query may take this many more candidate steps
PERTURBED_SHARE = 0.5  # share of generated queries that are perturbed copies
WILSON_Z = 1.96  # 95% two-sided
# a result whose exact score equals the true neighbour's is a hit (ties between distinct items)
TIE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class OperatingPoint:
    """An asymmetric-search setting and what it measured.

    nprobe: lists scanned, or None for the flat scan over every code.
    candidates: items reranked exactly per query.
    recall: measured recall@1; recall_k: measured recall@k (None when not measured).
    seconds_per_query: measured wall time per query (one batch of the queries).
    target, k: the recall@1 target and k it was chosen for; target_k: the recall@k target (None:
        recall@1 only).
    nlist: the partition count ``nprobe`` refers to (None for the flat scan).
    items, sample: index size and number of queries when it was measured.
    recall_lower: a 95% Wilson lower bound on recall@1 from ``sample`` queries.
    """

    nprobe: int | None
    candidates: int
    recall: float
    seconds_per_query: float
    target: float
    k: int
    nlist: int | None = None
    items: int = 0
    sample: int = 0
    recall_k: float | None = None
    target_k: float | None = None
    recall_lower: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_stale(self, items: int) -> bool:
        """Measured on fewer than half or more than twice ``items``: re-measure before serving."""
        return self.items > 0 and (items * 2 < self.items or items > 2 * self.items)

    @classmethod
    def from_dict(cls, d: Any) -> "OperatingPoint":
        """Parse a manifest entry; ``InputError`` naming the bad field."""
        if not isinstance(d, dict):
            raise InputError(f"an operating point must be an object, got {type(d).__name__}")
        try:
            nprobe = None if d.get("nprobe") is None else check_positive_int(d["nprobe"], "nprobe")
            nlist = None if d.get("nlist") is None else check_positive_int(d["nlist"], "nlist")
            optional = {name: None if d.get(name) is None else float(d[name])
                        for name in ("recall_k", "target_k", "recall_lower")}  # fmt: skip
            if optional["target_k"] is not None:
                check_recall(optional["target_k"], "target_k")
            point = cls(
                nprobe=nprobe,
                candidates=check_positive_int(d["candidates"], "candidates"),
                recall=float(d["recall"]),
                seconds_per_query=float(d["seconds_per_query"]),
                target=check_recall(d["target"], "target"),
                k=check_positive_int(d["k"], "k"),
                nlist=nlist,
                items=int(d.get("items", 0)),
                sample=int(d.get("sample", 0)),
                **optional,
            )
        except KeyError as e:
            raise InputError(f"operating point lacks {e}") from None
        except (TypeError, ValueError, OverflowError) as e:
            raise InputError(f"bad operating point {d!r}: {e}") from None
        if nprobe is not None and (nlist is None or nprobe > nlist):
            raise InputError(f"operating point nprobe={nprobe} does not fit its {nlist} lists")
        return point


def points_to_manifest(points: dict[tuple[float, int], OperatingPoint]) -> dict[str, dict[str, dict]]:
    """``{"0.99": {"10": {...}}}``: keyed by recall target, then k (JSON keys are strings)."""
    out: dict[str, dict[str, dict]] = {}
    for (target, k), point in sorted(points.items()):
        out.setdefault(repr(target), {})[str(k)] = point.to_dict()
    return out


def points_from_manifest(entry: Any) -> dict[tuple[float, int], OperatingPoint]:
    if not isinstance(entry, dict):
        raise InputError("operating_points must be an object keyed by recall target, then k")
    points = {}
    for by_k in entry.values():
        if not isinstance(by_k, dict):
            raise InputError("operating_points must be an object keyed by recall target, then k")
        for point in map(OperatingPoint.from_dict, by_k.values()):
            points[(point.target, point.k)] = point
    return points



def candidate_grid(k: int, n: int, cap: int | None = None) -> list[int]:
    """Candidate counts to try: geometric (ratio ``CANDIDATE_RATIO``) from ``k + 1`` (the query's
    own item may be among the results) to ``min(n, cap)`` (``MAX_CANDIDATES``), that bound included."""
    cap = MAX_CANDIDATES if cap is None else cap
    top = max(1, min(n, max(cap, k + 1)))
    out, c = [], float(min(k + 1, top))
    while c < top:
        out.append(int(round(c)))
        c = max(c * CANDIDATE_RATIO, c + 1)
    return sorted({*out, top})


def nprobe_grid(nlist: int) -> list[int]:
    """1, 2, 4, ... nlist (every power of ``NPROBE_RATIO`` below it, and nlist itself)."""
    out, p = [], 1
    while p < nlist:
        out.append(p)
        p *= NPROBE_RATIO
    return [*out, nlist]


def drop_self(ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``ids [nq, k+1]`` / ``scores`` without each query's own id (else the last), ``[nq, k]``.
    A self id of -1 (a query that is not a stored item) drops the last column."""
    is_self = (ids == self_ids[:, None]) & (self_ids[:, None] >= 0)
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # non-self entries first, in order
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def recall_at_1(res_ids, res_scores, gt_ids, gt_scores) -> float:
    """Fraction of queries whose top result is the true nearest neighbour (or ties with it)."""
    hit = (res_ids[:, 0] == gt_ids[:, 0]) | (
        (res_ids[:, 0] >= 0) & (np.abs(res_scores[:, 0] - gt_scores[:, 0]) <= TIE_TOLERANCE)
    )
    return float(hit.mean())


def topk_recall(res_ids, res_scores, gt_ids, gt_scores, higher_is_better: bool = True) -> float:
    """Mean share of the true top-k found in the result's top-k: a result counts when it scores at
    least the true k-th score (ties with it count, -1 never does); rows with no truth are skipped."""
    k = gt_ids.shape[1]
    kth = gt_scores[:, k - 1 : k]
    good = res_scores[:, :k] >= kth - TIE_TOLERANCE if higher_is_better else res_scores[:, :k] <= kth + TIE_TOLERANCE
    found = ((res_ids[:, :k] >= 0) & good).sum(axis=1)
    valid = (gt_ids >= 0).sum(axis=1)
    keep = valid > 0
    return float(np.mean(np.minimum(found[keep], valid[keep]) / valid[keep])) if keep.any() else 1.0


def wilson_lower(p: float, n: int, z: float = WILSON_Z) -> float:
    """Wilson score lower bound of a proportion ``p`` measured on ``n`` trials."""
    if n <= 0:
        return 0.0
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


@dataclass
class _Queries:
    x: np.ndarray  # float32 [nq, D], prepared like search queries
    self_ids: np.ndarray  # int64 [nq]: the stored item a query is, or -1


def tuning_queries(index, sample: int, seed: int, queries: np.ndarray | None, kk: int):
    """(queries, ground-truth ids ``[nq, kk-1]``, their scores): the caller's queries, else stored
    items, the first half held out as they are (their own match excluded), the second half
    perturbed like new captures: moved in a random direction by the median distance between a
    held-out item and its nearest other item. One exact pass over the index per half."""
    def truth(x, self_ids):
        return drop_self(*index.exact_search(x, kk), self_ids, kk - 1)

    if queries is not None:
        x = np.asarray(queries, dtype=np.float32)  # exact_search checks them as search will
        if x.ndim != 2 or x.shape[0] == 0:
            raise InputError(f"tune(queries=...) needs a 2-D array [n >= 1, dim] of queries, got shape {x.shape}")
        none = np.full(x.shape[0], -1, np.int64)
        return _Queries(x, none), *truth(x, none)
    ids, x = index.sample_items(sample, seed)  # one snapshot: a concurrent remove cannot split it
    n_pert = int(round(len(ids) * PERTURBED_SHARE)) if len(ids) > 1 else 0
    held = len(ids) - n_pert
    gt_ids, gt_scores = truth(x[:held], ids[:held])
    if n_pert == 0:
        return _Queries(x, ids), gt_ids, gt_scores
    sq = np.einsum("ij,ij->i", x[:held], x[:held]).astype(np.float64)
    s = gt_scores[:, 0].astype(np.float64)
    dist2 = s if index.metric == "l2" else 2 * sq - 2 * s  # ip / cosine: |x|^2 + |y|^2 - 2<x, y>, |y| ~ |x|
    scale = float(np.sqrt(np.median(np.clip(dist2[gt_ids[:, 0] >= 0], 0.0, None)))) if (gt_ids[:, 0] >= 0).any() else 0.0
    g = np.random.default_rng(seed + 1).standard_normal((n_pert, x.shape[1]))
    g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-12
    moved = (x[held:] + scale * g).astype(np.float32)
    if index.metric == "cosine":
        moved /= np.linalg.norm(moved, axis=1, keepdims=True) + 1e-12
    none = np.full(n_pert, -1, np.int64)  # a new capture: its original is a legitimate neighbour
    p_ids, p_scores = truth(moved, none)
    return (_Queries(np.concatenate([x[:held], moved]), np.concatenate([ids[:held], none])),
            np.concatenate([gt_ids, p_ids]), np.concatenate([gt_scores, p_scores]))  # fmt: skip


@dataclass
class _Measure:
    nprobe: int | None
    candidates: int
    r1: float
    rk: float | None
    secs: float


def tune(
    index, recall: float, k: int, sample: int, seed: int, progress: bool,
    recall_at_k: float | None = None, queries: np.ndarray | None = None,
) -> OperatingPoint:  # fmt: skip
    """Measure the grid on ``index`` (an IndexFront with asymmetric ranking); see the module doc.

    ``recall_at_k``: the recall@k target (None: recall@1 only; ignored for k = 1)."""
    from tqdm.auto import tqdm

    n = len(index)
    if n < 2 and queries is None:
        raise InputError(f"tuning needs at least 2 items (each query is a stored item, its own match excluded); the index holds {n}")
    target_k = recall_at_k if k > 1 else None
    kk = min(k + 1, n)  # one more than k: a stored item's own match is dropped from its results
    q, gt_ids, gt_scores = tuning_queries(index, min(sample, n), seed, queries, kk)
    nq = q.x.shape[0]
    higher = index.metric != "l2"

    part = index.partition_info()
    if part.lists is None and part.requested:  # asked for, but cannot be trained: say so
        warnings.warn(f"tuning the flat scan only: {part.reason}", stacklevel=3)
    nlist, nprobes = part.lists, (nprobe_grid(part.lists) if part.lists else [])
    cands = candidate_grid(k, n)
    bar = tqdm(desc=f"tuning recall@1 >= {recall:g}" + (f", recall@{k} >= {target_k:g}" if target_k else ""),
               unit="setting", disable=not progress)  # fmt: skip
    screen = np.sort(np.random.default_rng(seed + 2).permutation(nq)[: min(nq, SCREEN_QUERIES)])
    measured: dict[tuple[int | None, int, bool], _Measure] = {}

    def run(nprobe, c, rows=slice(None)):
        return index.search(q.x[rows], kk, candidates=c, nprobe=nprobe, ranking="asymmetric")

    def measure(nprobe, c, full: bool = False) -> _Measure:
        """recall and time at (nprobe, c) on the screening queries (the best of SCREEN_TIMINGS
        passes), or on all of them (one pass: the finalists are re-timed on the screen)."""
        key = (nprobe, c, full or len(screen) == nq)
        if key not in measured:
            rows = slice(None) if key[2] else screen
            secs = math.inf
            for _ in range(1 if full else SCREEN_TIMINGS):
                start = time.perf_counter()
                res = run(nprobe, c, rows)
                secs = min(secs, (time.perf_counter() - start) / res.ids.shape[0])
            ids, scores = drop_self(res.ids, res.scores, q.self_ids[rows], kk - 1)
            r1 = recall_at_1(ids, scores, gt_ids[rows], gt_scores[rows])
            rk = topk_recall(ids, scores, gt_ids[rows], gt_scores[rows], higher) if target_k else None
            measured[key] = _Measure(nprobe, c, r1, rk, secs)
            bar.update(1)
        return measured[key]

    def meets(m: _Measure) -> bool:
        return m.r1 >= recall and (target_k is None or m.rk >= target_k)

    try:
        for nprobe in {nprobes[0] if nprobes else None, None}:  # build lazily built structures untimed
            run(nprobe, cands[0], screen[:1])
        feasible: list[_Measure] = []
        start = min(range(len(cands)), key=lambda j: abs(cands[j] - 10 * (k + 1)))  # first guess: ~10 k
        # screening: the flat scan first (the baseline every partitioned setting must beat), then nprobe upward
        for nprobe in [None, *nprobes]:
            best = min((m.secs for m in feasible), default=math.inf)
            found, first_secs = _smallest_candidates(lambda j, p=nprobe: measure(p, cands[j]), meets, start,
                                                     cands, best, _candidate_cost(measured))  # fmt: skip
            if found is not None:
                feasible.append(measure(nprobe, cands[found]))
                start = found  # the next nprobe starts from here (more lists need about as many or fewer)
                bar.set_postfix_str(f"best {min(m.secs for m in feasible) * 1e3:.3f} ms/query")
            if nprobe is not None and first_secs > best:
                break  # this many lists cost more than the best at any candidate count: more cost more
        # between grid points: the grid doubles, and the cheapest depth for a high target often lies
        # between two of its points (at 10M, 8,192 lists: ~900 between 512 and 1,024), so the depth
        # below the fastest partitioned setting is bisected (in log nprobe) for NPROBE_REFINE steps
        part_feasible = [m for m in feasible if m.nprobe is not None and m.nprobe > 2]
        if part_feasible:
            fastest = [min(part_feasible, key=lambda m: m.secs)]  # the fastest depth so far, last

            def faster_depth(p: int) -> bool:
                # no pruning by predicted time here: fewer lists need more candidates, and one
                # screening pass's noise (~10%) is the size of the difference sought (at 1M a
                # depth of 362 at 573 candidates was pruned against 512 at 423 on a noisy first
                # measure, yet the two ran within 5-9% of each other, in either order from run to
                # run); the finalists are re-timed in turns below
                found, _ = _smallest_candidates(lambda j: measure(p, cands[j]), meets, cands.index(fastest[-1].candidates),
                                                cands, math.inf)  # fmt: skip
                if found is None:
                    return False  # short of the targets: look between it and the faster depth
                feasible.append(measure(p, cands[found]))  # a finalist if among the fastest
                if feasible[-1].secs >= fastest[-1].secs:
                    return False  # slower: look between it and the faster depth
                fastest.append(feasible[-1])
                return True  # faster with fewer lists: look lower still

            _log_bisect(fastest[0].nprobe / NPROBE_RATIO, fastest[0].nprobe, NPROBE_REFINE, faster_depth)
        # verification: the fastest few on every query, each raised a step or two of c if it falls short
        verified: list[_Measure] = []
        for m in sorted(feasible, key=lambda m: m.secs)[:RETIME]:
            j = cands.index(m.candidates)
            for j in range(j, min(j + VERIFY_STEPS + 1, len(cands))):
                full = measure(m.nprobe, cands[j], full=True)
                if meets(full):
                    verified.append(full)
                    break
        if verified:
            # between candidate grid points (ratio CANDIDATE_RATIO): the fastest verified setting's
            # count bisected (in log c) against the grid step below it, on every query; at a fixed
            # nprobe fewer candidates that still meet the targets are faster
            kept = min(verified, key=lambda m: m.secs)
            at = cands.index(kept.candidates)

            def enough(c: int) -> bool:
                full = measure(kept.nprobe, c, full=True)
                ok = meets(full)
                if ok:
                    verified.append(full)
                return ok

            _log_bisect(cands[at - 1] if at else kept.candidates, kept.candidates, CANDIDATE_REFINE, enough)
        if verified:  # re-time in turns (the machine may be shared)
            for _ in range(2):
                for m in verified:
                    start = time.perf_counter()
                    run(m.nprobe, m.candidates, screen)
                    m.secs = min(m.secs, (time.perf_counter() - start) / len(screen))
            chosen = min(verified, key=lambda m: m.secs)
        else:
            pool = [m for (_, _, full), m in measured.items() if full] or list(measured.values())
            chosen = max(pool, key=lambda m: (m.r1 + (m.rk or 0), -m.secs))
            got = f"recall@1 {chosen.r1:.4f}" + (f", recall@{k} {chosen.rk:.4f}" if target_k else "")
            warnings.warn(
                f"no setting reached recall@1 {recall:g}" + (f" and recall@{k} {target_k:g}" if target_k else "")
                + f" on {nq} queries (k={k}); the best measured, {_describe(chosen)}, reached {got}: using it",
                stacklevel=3,
            )  # fmt: skip
    finally:
        bar.close()
    return OperatingPoint(
        nprobe=chosen.nprobe,
        candidates=int(chosen.candidates),
        recall=chosen.r1,
        seconds_per_query=chosen.secs,
        target=recall,
        k=k,
        nlist=nlist if chosen.nprobe is not None else None,
        items=n,
        sample=nq,
        recall_k=chosen.rk,
        target_k=target_k,
        recall_lower=wilson_lower(chosen.r1, nq),
    )


def _log_bisect(lo: float, hi: int, steps: int, accept) -> None:
    """Bisect ``(lo, hi)`` in log space for up to ``steps`` rounded midpoints: ``accept(mid)``
    (which measures it) moves ``hi`` down to an accepted midpoint, else ``lo`` up to it; stops
    once a midpoint rounds onto either end."""
    for _ in range(steps):
        mid = int(round(math.sqrt(lo * hi)))
        if mid <= lo or mid >= hi:
            return
        if accept(mid):
            hi = mid
        else:
            lo = mid


def _candidate_cost(measures) -> float | None:
    """Seconds per query per extra candidate, from what was measured: at each nprobe (and query
    set) the slope between its fewest and most candidates measured, the median of them; None
    until some nprobe has two counts.

    The median, not the steepest: a slope over one grid step (282 -> 423 candidates) turns a
    single pass's timing noise into a cost several times the true one (1.8 us per candidate from
    nprobe 1,024 at 1M, against ~0.3 measured between 423 and 634 at 362), and that one slope
    then pruned the fastest point in some tunes and not in others (benchmarks/README.md,
    "Cheaper gathers, a tuner that holds its point"). Underestimating only measures a point more."""
    spans: dict[tuple, list[_Measure]] = {}
    for (nprobe, _, full), m in measures.items():
        spans.setdefault((nprobe, full), []).append(m)
    slopes = []
    for ms in spans.values():
        lo, hi = min(ms, key=lambda m: m.candidates), max(ms, key=lambda m: m.candidates)
        if hi.candidates > lo.candidates:
            slopes.append((hi.secs - lo.secs) / (hi.candidates - lo.candidates))
    return float(np.median(slopes)) if slopes else None


def _smallest_candidates(
    measure, meets, start: int, cands: list[int], best: float, cost: float | None = None
) -> tuple[int | None, float]:  # fmt: skip
    """Smallest grid index j meeting the targets at one nprobe (recall grows with j), searched by
    galloping from ``start`` (up if it fails, down if it meets) then bisection. Upward, a step
    whose predicted time exceeds ``best`` is not taken: more candidates only cost more. The
    prediction adds ``cost`` (seconds per extra candidate, :func:`_candidate_cost`) to the last
    time; without it, it scales the last time by the candidate ratio, as if the rerank were all
    of it, which at deep probes (the scan most of the time) skipped counts that were faster than
    ``best``. Returns (j or None, seconds of the first measurement)."""

    def predicted(j: int, last: int) -> float:
        secs = measure(last).secs
        if cost is None:
            return secs * cands[j] / cands[last]
        return secs + max(cost, 0.0) * (cands[j] - cands[last])

    first = measure(start)
    ok, fail = (start, -1) if meets(first) else (None, start)
    step = 1
    while ok is None:  # gallop up
        j = min(len(cands) - 1, fail + step)
        if j == fail or predicted(j, fail) > best:
            return None, first.secs
        if meets(measure(j)):
            ok = j
        else:
            fail, step = j, step * 2
    while fail == -1 and ok > 0:  # gallop down from a success
        j = max(0, ok - step)
        if meets(measure(j)):
            ok, step = j, step * 2
        else:
            fail = j
    while ok - fail > 1:  # bisect
        mid = (ok + fail) // 2
        if meets(measure(mid)):
            ok = mid
        else:
            fail = mid
    return ok, first.secs


def _describe(m: _Measure) -> str:
    where = "flat scan" if m.nprobe is None else f"nprobe {m.nprobe}"
    return f"{where}, {m.candidates} candidates"
