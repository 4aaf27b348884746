"""A search's plan: every default resolved once, before any backend is asked anything.

:func:`plan_search` turns a checked :class:`Request` into a :class:`Plan`: the Hamming mode
(radius / the c nearest / multi-probe with at least ``DEFAULT_CANDIDATES_PER_K * k``), the
asymmetric candidate count and ``nprobe`` (given, else the operating point tuned for the recall
target, else :func:`default_candidates`), and the rule that a filtered search never probes the
partition lists (serving/filters.py says why). :func:`resolve_ranking` picks the ranking (it
decides how the queries are encoded, so the front calls it first). serving/search.py runs the plan.

Pure but for :func:`asymmetric_settings`, which reads (or, for ``recall=``, tunes) the index's
operating points and asks it whether it can scan ``nprobe`` lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hashindex.core.errors import InputError
from hashindex.serving.filters import PLAIN, SearchOptions
from hashindex.serving.tuning import DEFAULT_RECALL

RANKINGS = ("hamming", "asymmetric")
DEFAULT_CANDIDATES_PER_K = 10  # Hamming multi-probe: the smallest radius giving >= this * k


def default_candidates(k: int) -> int:
    """Candidates of an untuned asymmetric search: ``max(50 * k, 500)`` (why: benchmarks/README.md,
    "Partition stage": the scan, not the rerank, dominates, so a margin of candidates is cheap)."""
    return max(50 * k, 500)


@dataclass(frozen=True)
class Request:
    """A search's checked arguments, before any default is resolved."""

    k: int
    radius: int | None
    candidates: int | None
    ranking: str
    nprobe: int | None
    recall: float | None
    options: SearchOptions = PLAIN

    @property
    def width(self) -> int:
        """Result columns per query: ``k``, or ``k * group_size`` when grouping by label."""
        return self.k * (self.options.group_size or 1)


@dataclass(frozen=True)
class Plan:
    """Everything a backend needs, every default resolved. Hamming ranking: exactly one of
    ``radius``, ``candidates`` and ``at_least`` (multi-probe). Asymmetric: ``candidates``, and
    ``nprobe`` (the partition lists) or None (the flat scan; always None when filtered)."""

    k: int
    ranking: str
    radius: int | None = None
    candidates: int | None = None
    at_least: int | None = None
    nprobe: int | None = None
    options: SearchOptions = PLAIN

    @property
    def width(self) -> int:
        return self.k * (self.options.group_size or 1)

    @property
    def asymmetric(self) -> bool:
        return self.ranking == "asymmetric"

    @property
    def nothing_allowed(self) -> bool:
        """An empty allow-list: no item can be returned, no backend is asked."""
        r = self.options.restriction
        return r is not None and any(a is not None and a.size == 0 for a in (r.ids, r.labels))


def check_ranking(ranking: str, radius: int | None) -> None:
    """A known ranking, and no Hamming radius with the asymmetric one."""
    if ranking not in RANKINGS:
        raise InputError(f"unknown ranking {ranking!r}; choose one of {', '.join(RANKINGS)}")
    if ranking == "asymmetric" and radius is not None:
        raise InputError("radius selects by Hamming distance; asymmetric ranking takes candidates= (or k alone)")


def resolve_ranking(ranking, default: str, radius, nprobe, recall, has_query_codes: bool) -> str:
    """The ranking a search uses: as given; else asymmetric when ``nprobe`` / ``recall`` (its
    knobs) are given; Hamming with a radius or precomputed codes; else the backend's ``default``."""
    if ranking is None:
        if nprobe is not None or recall is not None:
            ranking = "asymmetric"
        elif radius is not None or has_query_codes:
            ranking = "hamming"
        else:
            ranking = default
    check_ranking(ranking, radius)
    if ranking == "hamming" and (nprobe is not None or recall is not None):
        raise InputError("nprobe= and recall= set the asymmetric stage; Hamming ranking takes radius= or candidates=")
    return ranking


def plan_search(index: Any, req: Request) -> Plan:
    """Resolve every default of ``req`` for ``index`` (which may tune, for ``recall=``)."""
    if req.ranking == "hamming":
        at_least = None if req.radius is not None or req.candidates is not None else DEFAULT_CANDIDATES_PER_K * req.k
        return Plan(req.k, "hamming", req.radius, req.candidates, at_least, None, req.options)
    candidates, nprobe = asymmetric_settings(index, req.k, req.candidates, req.nprobe, req.recall)
    if req.options.restriction is not None:
        nprobe = None  # a filtered search scans the allowed rows exactly, never the lists (filters.py)
    return Plan(req.k, "asymmetric", None, candidates, None, nprobe, req.options)


def asymmetric_settings(index: Any, k: int, candidates, nprobe, recall) -> tuple[int, int | None]:
    """(candidates, nprobe) of an asymmetric search: as given; else the operating point for
    ``recall`` or for DEFAULT_RECALL, measured now when missing (for DEFAULT_RECALL: only where
    the index has or can build a partition stage) or stale (measured on fewer than half or more
    than twice today's items: ``IndexFront._current_point``); else the default flat scan."""
    if nprobe is not None:
        index._check_nprobe(nprobe)
    if candidates is not None or nprobe is not None:
        return (candidates if candidates is not None else default_candidates(k)), nprobe
    point = index._current_point(DEFAULT_RECALL if recall is None else recall, k, explicit=recall is not None)
    if point is None:
        return default_candidates(k), None
    if point.nprobe is not None:
        index._check_nprobe(point.nprobe)
    return max(point.candidates, k), point.nprobe
