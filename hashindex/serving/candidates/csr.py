"""Candidate lists, the one shape every candidate stage returns and every later step reads.

:class:`Candidates` is CSR (FAISS's ``range_search`` layout): ``lims int64 [nq+1]``,
``keys int64 [M]``, ``hamming int32 [M]``; query q's candidates are ``keys[lims[q]:lims[q+1]]``.
A key is a backend's row key, whatever its ``_rows()`` takes: a row position in HashIndex's
stores, an id in Milvus. ``hamming`` is each candidate's Hamming distance to the query's code
(0 where the stage ranked by something else; the pipeline fills in the results').
It is a NamedTuple, so ``lims, keys, hamming = candidates`` still unpacks.

numpy only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Candidates(NamedTuple):
    lims: np.ndarray
    keys: np.ndarray
    hamming: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """Candidates per query, int64 ``[nq]``."""
        return np.diff(self.lims)


def empty(nq: int) -> Candidates:
    """No candidate for any of ``nq`` queries."""
    return Candidates(np.zeros(nq + 1, np.int64), np.empty(0, np.int64), np.empty(0, np.int32))


def from_csr(lims: np.ndarray, keys: np.ndarray, hamming: np.ndarray) -> Candidates:
    """FAISS range-search output (any integer / float dtypes) -> Candidates."""
    return Candidates(np.asarray(lims, np.int64), np.asarray(keys, np.int64), np.asarray(hamming).astype(np.int32))


def from_knn(keys: np.ndarray, hamming: np.ndarray) -> Candidates:
    """k-NN output ``[nq, c]`` (-1 padded) -> Candidates."""
    valid = keys >= 0
    lims = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int64)
    return Candidates(lims, keys[valid].astype(np.int64), hamming[valid].astype(np.int32))


def take_queries(c: Candidates, qi: np.ndarray) -> Candidates:
    """The candidates of queries ``qi`` only, in that order."""
    counts = np.diff(c.lims)[qi]
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.repeat(c.lims[qi] - lims[:-1], counts) + np.arange(lims[-1])
    return Candidates(lims, c.keys[idx], c.hamming[idx])


def merge(nq: int, parts: list[tuple[np.ndarray, Candidates]]) -> Candidates:
    """Candidates computed for disjoint query subsets ``(query_indices [m], Candidates of m
    queries)`` back in query order (queries in no subset get none)."""
    counts = np.zeros(nq, dtype=np.int64)
    for qi, c in parts:
        counts[qi] = np.diff(c.lims)
    out_lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    keys = np.empty(out_lims[-1], dtype=np.int64)
    hamming = np.empty(out_lims[-1], dtype=np.int32)
    for qi, (lims, k, ham) in parts:
        seg = np.repeat(np.arange(len(qi)), np.diff(lims))
        dst = out_lims[qi][seg] + np.arange(len(k)) - lims[:-1][seg]
        keys[dst] = k
        hamming[dst] = ham
    return Candidates(out_lims, keys, hamming)
