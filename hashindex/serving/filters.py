"""Identity-aware search options, checked once for every backend: labels, allow-lists, grouping,
an open-set threshold.

* **Labels**: one int64 label (the identity) per item, ``>= 0`` (-1 pads search results). An
  index either labels every item or none: the first insert decides, and the choice is
  permanent (HashIndex: ``labels.npy`` in the index directory; Milvus: an INT64 ``label`` field
  in the collection).
* **Filters** (``filter_ids`` / ``filter_labels``): allow-lists. An item is a candidate only if
  its id is in ``filter_ids`` and (when given) its label is in ``filter_labels``. They restrict
  the candidate stage itself -- the Hamming k-NN / range search and the asymmetric scan run over
  the allowed items only -- so a filter never loses a neighbour the way post-filtering a top-k
  does. Ids or labels absent from the index are allowed and simply match nothing.
* **Filters and the partition stage** (HashIndex): a filtered asymmetric search never probes
  the k-means lists, whether ``nprobe`` is given or comes from a tuned operating point; it
  scores every allowed row exactly (candidates/filtered.py) and takes the setting's candidate
  count. The rule is the simple one that stays exact: masking the probe's top-c to the allowed
  rows is exact only when every allowed item lies in the probed lists *and* that top-c still
  holds c allowed items. A spread-out allow-list fails the first test for almost any
  ``nprobe`` below ``nlist``, and a narrow one (a few identities) costs less to scan than to
  probe, so the fallback would be the common path anyway. ``nprobe`` is still checked (an index
  without a partition stage refuses it, filter or not). ``group_by`` widens its candidates
  through the flat scan (restricted to the allowed rows), never the lists, which can hold
  fewer than k labels.
* **Grouping** (``group_by="label"``): the k best distinct labels, each with its ``group_size``
  best items (hashindex.serving.grouping).
* **Open-set threshold** (``min_score=t``): results scoring below ``t`` (for l2: at a distance
  above ``t``) are dropped and padded like missing results.

numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.validation import as_array, check_positive_int

GROUP_BY = ("label",)
_INT64_MAX = np.iinfo(np.int64).max


def _as_int64(values, name: str, n: int | None = None) -> np.ndarray:
    """1-D non-negative integers that fit int64 -> int64 (a scalar counts as one entry)."""
    a = as_array(values, name)  # ragged lists -> InputError
    if n is None:
        a = np.atleast_1d(a)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = f"1-D of length {n}" if n is not None else "1-D"
        raise InputError(f"{name} must be {want}, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} must be integers, got dtype {a.dtype}")
    if a.size == 0:
        return np.empty(0, np.int64)
    if np.issubdtype(a.dtype, np.unsignedinteger) and int(a.max()) > _INT64_MAX:
        raise InputError(f"{name} must fit int64, got {int(a.max())}")
    a = a.astype(np.int64, copy=False)
    if (a < 0).any():
        raise InputError(f"{name} must be non-negative (-1 pads search results), got {a[a < 0][:5].tolist()}")
    return a


def check_labels(labels, n: int) -> np.ndarray:
    """Labels for ``n`` new items: 1-D non-negative integers of length n -> int64."""
    return _as_int64(labels, "labels", n)


@dataclass(frozen=True)
class Restriction:
    """A checked allow-list: sorted distinct ids and / or labels (None: no condition)."""

    ids: np.ndarray | None = None
    labels: np.ndarray | None = None

    def allows(self, ids: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """Boolean mask of the items ``(ids, labels)`` that pass (labels needed when filtering on them)."""
        keep = np.ones(ids.shape, dtype=bool)
        if self.ids is not None:
            keep &= np.isin(ids, self.ids, assume_unique=False)
        if self.labels is not None:
            keep &= np.isin(labels, self.labels)
        return keep


@dataclass(frozen=True)
class SearchOptions:
    """What identity-aware search adds to a plain search; the default changes nothing.

    restriction: allow-lists, or None. group_size: items per label when grouping by label,
    None for a plain top-k. min_score: the open-set threshold, or None.
    """

    restriction: Restriction | None = None
    group_size: int | None = None
    min_score: float | None = None

    @property
    def grouped(self) -> bool:
        return self.group_size is not None

    @property
    def needs_labels(self) -> bool:
        return self.grouped or (self.restriction is not None and self.restriction.labels is not None)


PLAIN = SearchOptions()


def check_search_options(
    filter_ids=None, filter_labels=None, group_by: str | None = None, group_size: int | None = None,
    min_score: float | None = None, *, has_labels: bool,
) -> SearchOptions:  # fmt: skip
    """Check the identity options of a search against an index that has (or lacks) labels."""
    restriction = None
    if filter_ids is not None or filter_labels is not None:
        restriction = Restriction(
            None if filter_ids is None else np.unique(_as_int64(filter_ids, "filter_ids")),
            None if filter_labels is None else np.unique(_as_int64(filter_labels, "filter_labels")),
        )
    if group_by is not None and (not isinstance(group_by, str) or group_by not in GROUP_BY):
        raise InputError(f"group_by must be None or one of {', '.join(map(repr, GROUP_BY))}, got {group_by!r}")
    if group_by is None:
        if group_size is not None:
            raise InputError('group_size needs group_by="label"')
    else:
        group_size = 1 if group_size is None else check_positive_int(group_size, "group_size")
    if min_score is not None:
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.integer, np.floating)):
            raise InputError(f"min_score must be a number, got {min_score!r}")
        if not math.isfinite(float(min_score)):
            raise InputError(f"min_score must be finite, got {min_score!r}")
        min_score = float(min_score)
    options = SearchOptions(restriction, group_size, min_score)
    if options.needs_labels and not has_labels:
        what = 'group_by="label"' if group_by is not None else "filter_labels"
        raise InputError(f"{what}: this index has no labels (add items with labels=...)")
    return options
