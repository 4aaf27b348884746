"""Recall-targeted settings for asymmetric search, measured on the index's own items.

``index.tune(recall=0.99, k=10)`` draws ``sample`` stored items as queries, finds each one's
exact top-k among the *other* stored items (the item itself is excluded from the ground truth
and from the results, so a query never finds itself), and times a small grid of settings:

- the flat asymmetric scan at ``candidates`` c (every code scored, the best c reranked);
- when the index has (or may build) a partition stage, ``nprobe`` lists x c.

``faiss.contrib.evaluation.OperatingPointsWithRanges`` keeps the Pareto frontier of (recall@1,
seconds per query) and, assuming more of every knob is slower and more accurate (the flat scan
counts as "every list"), skips settings it can already tell are dominated; we also skip those
that cannot reach the target or cannot beat the cheapest one that did. The cheapest measured
setting reaching the target is returned as an :class:`OperatingPoint`.

The grid is 6 candidate values x (6 nprobe values + flat), most of it pruned, so that tuning a
large index stays short once the partition stage exists (timings in benchmarks/README.md).
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
# candidates per query tried for k = 10 (scaled up with k), spanning the counts the benchmarks
# needed for the recall targets (benchmarks/README.md).
CANDIDATE_GRID = (20, 50, 100, 200, 500, 1000)
# nprobe = nlist / d: 1/64 .. 1/2 of the lists (high targets need a large share; benchmarks/README.md).
NPROBE_DIVISORS = (64, 32, 16, 8, 4, 2)
# a top-1 whose exact score equals the true top-1's is a hit (ties between distinct items)
TIE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class OperatingPoint:
    """An asymmetric-search setting and what it measured on the index's own items.

    nprobe: lists scanned, or None for the flat scan over every code.
    candidates: items reranked exactly per query.
    recall: measured recall@1 on the tuning sample (self-matches excluded).
    seconds_per_query: measured wall time per query (one batch of the sample).
    target, k: the recall target and k it was chosen for.
    nlist: the partition count ``nprobe`` refers to (None for the flat scan).
    items, sample: index size and number of queries when it was measured.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "OperatingPoint":
        """Parse a manifest entry; ``InputError`` naming the bad field."""
        if not isinstance(d, dict):
            raise InputError(f"an operating point must be an object, got {type(d).__name__}")
        try:
            nprobe = None if d.get("nprobe") is None else check_positive_int(d["nprobe"], "nprobe")
            nlist = None if d.get("nlist") is None else check_positive_int(d["nlist"], "nlist")
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
            )
        except KeyError as e:
            raise InputError(f"operating point lacks {e}") from None
        except (TypeError, ValueError) as e:
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


def candidate_grid(k: int, n: int) -> list[int]:
    """Candidate counts to try: ``CANDIDATE_GRID`` scaled for k (x ceil(k/10)), each >= k + 1
    (the query itself is among the results) and <= n."""
    scale = max(1, math.ceil(k / 10))
    return sorted({min(n, max(k + 1, v * scale)) for v in CANDIDATE_GRID})


def nprobe_grid(nlist: int) -> list[int]:
    return sorted({max(1, nlist // d) for d in NPROBE_DIVISORS})


def drop_self(ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``ids [nq, k+1]`` / ``scores`` without each query's own id (else the last), ``[nq, k]``."""
    is_self = ids == self_ids[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # non-self entries first, in order
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def recall_at_1(res_ids, res_scores, gt_ids, gt_scores) -> float:
    """Fraction of queries whose top result is the true nearest neighbour (or ties with it)."""
    hit = (res_ids[:, 0] == gt_ids[:, 0]) | (
        (res_ids[:, 0] >= 0) & (np.abs(res_scores[:, 0] - gt_scores[:, 0]) <= TIE_TOLERANCE)
    )
    return float(hit.mean())


def tune(index, recall: float, k: int, sample: int, seed: int, progress: bool) -> OperatingPoint:
    """Measure the grid on ``index`` (an IndexFront with asymmetric ranking); see the module doc."""
    from faiss.contrib.evaluation import OperatingPointsWithRanges
    from tqdm.auto import tqdm

    n = len(index)
    if n < 2:
        raise InputError(f"tuning needs at least 2 items (each query is a stored item, its own match excluded); the index holds {n}")
    sample = min(sample, n)
    rng = np.random.default_rng(seed)
    qids = np.sort(index.ids[rng.choice(n, sample, replace=False)])
    x = index.get_features(qids)
    kk = min(k + 1, n)  # one more than k: each query's own item is dropped from its results
    gt_ids, gt_scores = drop_self(*index.exact_search(x, kk), qids, kk - 1)

    part = index.partition_info()
    if part.lists is None and part.requested:  # asked for, but cannot be trained: say so
        warnings.warn(f"tuning the flat scan only: {part.reason}", stacklevel=3)
    nlist, nprobes = part.lists, (nprobe_grid(part.lists) if part.lists else [])
    cands = candidate_grid(k, n)
    ops = OperatingPointsWithRanges()
    ops.add_range("nprobe", [*nprobes, None])  # None (the flat scan) = every list: the top of the range
    ops.add_range("candidates", cands)

    def run(nprobe, c):
        return index.search(x, kk, candidates=c, nprobe=nprobe, ranking="asymmetric")

    for nprobe in {nprobes[0] if nprobes else None, None}:  # build lazily built structures untimed
        run(nprobe, cands[0])

    best: tuple[float, float, dict] | None = None  # (seconds, recall, params) of the cheapest reaching target
    bar = tqdm(total=ops.num_experiments(), desc=f"tuning recall@1 >= {recall:g}", unit="setting", disable=not progress)
    try:
        for cno in ops.sample_experiments(0):
            key = ops.cno_to_key(cno)
            bar.update(1)
            max_recall, min_time = ops.predict_bounds(key)
            if max_recall < recall or (best is not None and min_time >= best[0]) or not ops.should_run_experiment(key):
                continue
            params = ops.get_parameters(key)
            start = time.perf_counter()
            res = run(params["nprobe"], params["candidates"])
            secs = (time.perf_counter() - start) / sample
            r = recall_at_1(*drop_self(res.ids, res.scores, qids, kk - 1), gt_ids, gt_scores)
            ops.add_operating_point(key, r, secs)
            if r >= recall and (best is None or secs < best[0]):
                best = (secs, r, params)
                bar.set_postfix_str(f"best {_describe(params)}: {r:.3f} at {secs * 1e3:.3f} ms/query")
    finally:
        bar.close()
    if best is None:
        key, r, secs = max(ops.operating_points + ops.suboptimal_points, key=lambda p: (p[1], -p[2]))
        params = ops.get_parameters(key)
        warnings.warn(
            f"no setting reached recall@1 {recall:g} on {sample} of the index's items (k={k}); the best measured, "
            f"{_describe(params)}, reached {r:.4f}: using it",
            stacklevel=3,
        )
        best = (secs, r, params)
    secs, r, params = best
    return OperatingPoint(
        nprobe=params["nprobe"],
        candidates=int(params["candidates"]),
        recall=r,
        seconds_per_query=secs,
        target=recall,
        k=k,
        nlist=nlist if params["nprobe"] is not None else None,
        items=n,
        sample=sample,
    )


def _describe(params: dict) -> str:
    where = "flat scan" if params["nprobe"] is None else f"nprobe {params['nprobe']}"
    return f"{where}, {params['candidates']} candidates"
