"""Partitioned asymmetric candidates: k-means lists over the float features, scanned in code space.

An item's score is the flat asymmetric one (candidates/asymmetric.py), ``<z, 2b - 1>`` for a
query projection ``z`` (before the sign) and the item's bits ``b``, but only the items in the
``nprobe`` lists whose centroids are nearest to the query's *features* are scored. The coarse
quantizer lives in feature space (an ``IndexFlatIP`` / ``IndexFlatL2`` over spherical k-means
centroids, dimension D) and the lists in code space (K bits), so FAISS cannot hold both in one
index: the lists are a ``faiss.IndexIVFPQFastScan(K, nlist, M=K/4, 4 bits, IP)`` with
``by_residual=False`` and the fixed {-1, +1} codebooks of the flat scanner, whose PQ code of an
item is byte for byte our packed code. Its own quantizer is an empty placeholder of dimension K
(FAISS wants ``quantizer.d == d``); we always choose the lists ourselves:

- when adding, :func:`append_to_lists` packs our codes straight into FAISS's 32-vector
  fast-scan blocks (no float expansion, no PQ encode);
- when searching, :func:`probe` asks the coarse index for the lists and hands them to the
  library's own scan of FAISS's blocks (candidates/fastscan.py: a threshold guessed per query
  before the scan; benchmarks/README.md, "A scan that knows its threshold") where it is built,
  else to
  ``search_preassigned``, with ``nprobe`` in per-call ``SearchParametersIVF`` (never a field of
  the shared index, which concurrent searches would race on).

Where our scan runs with AVX-512 VBMI, the lists are not FAISS's but the stage's own
(:class:`SixBitLists`): the same codes in blocks of six-bit indices (candidates/six_bit.py), which
that scan scores with 2/3 of the lookups (benchmarks/README.md, "Six-bit lists"). FAISS cannot
read them, so the stage chooses when it builds its lists (they are derived data, never saved:
a loaded index chooses again on its machine). Both kinds share :func:`list_members` and the
partner lists.

An item may sit in ``s`` lists (assignment ``int32 [N, s]``; ``s = 2`` is "spilling": the
nearest list plus one chosen by SOAR's orthogonality rule (:func:`soar_lists`), which raises the
recall a given ``nprobe`` can reach at twice the list memory, see benchmarks/README.md). An
item whose two lists a query both probes is found twice: our scan, given each entry's other list
(the stage keeps them beside FAISS's lists, 2 bytes an entry), lets it enter the query's top
once; through FAISS's scan, :func:`probe` drops the repeat afterwards.

Whether it pays depends on the recall target: on face-like embeddings high targets need a large
share of the lists probed, where the flat scan is as fast (benchmarks/README.md, "Partition
stage"), so the tuner (serving/tuning.py) decides per index.

This module is numpy + faiss only (and tqdm, for the bars of a long build; fastscan.py for the
scan): a small functional core (layout, k-means, assignment, packing, probing) and
:class:`PartitionStage`, which holds one coarse quantizer and its lists.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator, NamedTuple

import faiss
import numpy as np
from tqdm.auto import tqdm

from hashindex.serving.candidates import fastscan, six_bit
from hashindex.serving.candidates.asymmetric import SUB_BITS, sign_patterns
from hashindex.serving.faiss_settings import blas_products, faiss_setting

# faiss.Kmeans samples at most this many points per centroid; 64 keeps k-means on large galleries
# fast with recall indistinguishable from larger samples (benchmarks/README.md).
TRAIN_POINTS_PER_LIST = 64
# FAISS warns below 39 training points per centroid; we refuse fewer than one (see
# check_trainable) and leave the warning to FAISS's own threshold.
# 10 iterations, not FAISS's default 20: the same recall at 1M at half the k-means time
# (benchmarks/README.md, "10M").
KMEANS_NITER = 10
KMEANS_SEED = 1234


def nlist_for(n: int) -> int:
    """Lists for ``n`` items: about ``2 * sqrt(n)`` rounded to a power of two, at least 16.

    Nearby powers of two behave alike at an equal probed fraction at 1M (half the lists lose
    no recall@1 and ~0.01 recall@10 there, for ~10% more queries per second), but not at 10M,
    where 8,192 lists reach the same recalls 6-9% faster than 4,096 (the coarse search being one
    BLAS product now, their extra centroids cost little), for a longer build: k-means and the
    assignment cost time in proportion to the lists. 2 keeps 100k and 1M at 512 and 2,048 lists
    and gives 10M 8,192 (benchmarks/README.md, "More lists at 10M").
    """
    return int(max(16, 2 ** round(np.log2(2 * np.sqrt(max(n, 1))))))


# -- fast-scan block layout ---------------------------------------------------------------------
def _nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 ``[n, K/8]`` -> uint8 ``[n, K/4]`` sub-quantizer values (low nibble first, as FAISS's
    PQ with 4-bit codes packs them)."""
    out = np.empty((codes.shape[0], codes.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = codes & 15
    out[:, 1::2] = codes >> 4
    return out


class BlockLayout:
    """Where nibble (vector i, sub-quantizer m) of a fast-scan block lands, for one M.

    Read once from FAISS's own ``CodePacker`` by packing probe codes (values 1..15 at 15
    slots at a time) and seeing where they land, so the layout cannot drift from FAISS's.
    ``lo_src[j]`` / ``hi_src[j]``: the flat slot ``i * M + m`` feeding the low / high nibble of
    block byte j.
    """

    _cache: dict[int, "BlockLayout"] = {}
    _cache_lock = threading.Lock()

    def __init__(self, ivf: faiss.IndexIVFPQFastScan):
        packer = ivf.get_CodePacker()
        self.nvec, self.block_size, self.code_size = packer.nvec, packer.block_size, packer.code_size
        m = ivf.M
        if ivf.M2 != m:  # M odd: FAISS pads a sub-quantizer; never the case for whole bytes
            raise ValueError(f"bits/4 must be even, got M={m}")
        lo = np.full(self.block_size, -1, dtype=np.int64)
        hi = np.full(self.block_size, -1, dtype=np.int64)
        flat = np.zeros((self.nvec, self.code_size), dtype=np.uint8)
        block = np.zeros(self.block_size, dtype=np.uint8)
        slots = [(i, j) for i in range(self.nvec) for j in range(m)]
        for start in range(0, len(slots), 15):
            flat[:] = 0
            batch = slots[start : start + 15]
            for v, (i, j) in enumerate(batch, 1):
                flat[i, j // 2] |= v << (4 * (j % 2))
            packer.pack_all(faiss.swig_ptr(flat), faiss.swig_ptr(block))
            for v, (i, j) in enumerate(batch, 1):
                at_lo, at_hi = np.flatnonzero((block & 15) == v), np.flatnonzero((block >> 4) == v)
                if at_lo.size + at_hi.size != 1:
                    raise RuntimeError("unexpected FAISS fast-scan block layout")
                if at_lo.size:
                    lo[at_lo[0]] = i * m + j
                else:
                    hi[at_hi[0]] = i * m + j
        if (lo < 0).any() or (hi < 0).any():
            raise RuntimeError("unexpected FAISS fast-scan block layout")
        self.lo_src, self.hi_src = lo, hi
        # inverse, for unpack: slot -> (byte, shift)
        self.slot_byte = np.empty(self.nvec * m, dtype=np.int64)
        self.slot_shift = np.empty(self.nvec * m, dtype=np.uint8)
        self.slot_byte[lo], self.slot_shift[lo] = np.arange(self.block_size), 0
        self.slot_byte[hi], self.slot_shift[hi] = np.arange(self.block_size), 4

    @classmethod
    def of(cls, ivf: faiss.IndexIVFPQFastScan) -> "BlockLayout":
        with cls._cache_lock:
            if ivf.M not in cls._cache:
                cls._cache[ivf.M] = cls(ivf)
            return cls._cache[ivf.M]

    def nbytes_for(self, n: int) -> int:
        return -(-n // self.nvec) * self.block_size

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """uint8 ``[n, K/8]`` -> uint8 ``[ceil(n/32) * block_size]`` blocks (zero padded)."""
        n = codes.shape[0]
        nib = np.zeros((-(-n // self.nvec) * self.nvec, self.code_size * 2), dtype=np.uint8)
        nib[:n] = _nibbles(codes)
        nib = nib.reshape(-1, self.nvec * self.code_size * 2)
        return (nib[:, self.lo_src] | (nib[:, self.hi_src] << 4)).reshape(-1)

    def unpack(self, blocks: np.ndarray, n: int) -> np.ndarray:
        """Inverse of :meth:`pack`: uint8 ``[n, K/8]``."""
        b = blocks.reshape(-1, self.block_size)
        nib = ((b[:, self.slot_byte] >> self.slot_shift) & 15).reshape(-1, self.code_size * 2)[:n]
        return (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)


# -- functional core ------------------------------------------------------------------------------
def make_lists(bits: int, nlist: int) -> tuple[faiss.IndexIVFPQFastScan, faiss.Index]:
    """Empty lists for ``bits``-bit codes: (the IVF fast-scan index, its placeholder quantizer,
    which must outlive it: the IVF index does not own it)."""
    m = bits // SUB_BITS
    placeholder = faiss.IndexFlatIP(bits)  # never searched: lists are always preassigned
    ivf = faiss.IndexIVFPQFastScan(placeholder, bits, nlist, m, SUB_BITS, faiss.METRIC_INNER_PRODUCT)
    ivf.by_residual = False  # score the code itself, not code minus a K-dim centroid
    codebooks = np.broadcast_to(sign_patterns(), (m, 2**SUB_BITS, SUB_BITS))
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks).ravel(), ivf.pq.centroids)
    ivf.is_trained = True
    return ivf, placeholder


# FAISS's exhaustive search multiplies the queries by blocks of this many database rows (its
# default is 1,024): against the centroids, one block of up to this many is ~1.5x faster at
# 4,096 lists, for k-means and the assignment alike (benchmarks/README.md, "Compact by default").
CENTROID_BLOCK_ROWS = 8192


@contextlib.contextmanager
def centroid_blocks(nlist: int) -> Iterator[None]:
    """Flat searches against the centroids on BLAS whatever the batch (a small add too), with
    FAISS's BLAS database block raised to ``min(nlist, CENTROID_BLOCK_ROWS)`` rows, while the
    block runs (serving/faiss_settings.py: process-wide, restored afterwards); they change how
    the product is computed, not what (scores equal up to float rounding)."""
    rows = max(faiss.cvar.distance_compute_blas_database_bs, min(int(nlist), CENTROID_BLOCK_ROWS))
    with faiss_setting("distance_compute_blas_database_bs", rows), blas_products():
        yield


def train_centroids(
    features: np.ndarray, nlist: int, spherical: bool, seed: int = KMEANS_SEED, progress: bool = False
) -> np.ndarray:  # fmt: skip
    """k-means centroids ``float32 [nlist, D]`` from ``features [N, D]`` (N >= nlist).

    At most ``TRAIN_POINTS_PER_LIST * nlist`` rows, drawn with ``seed``, are clustered; spherical
    (unit centroids, for cosine / inner product) unless ``spherical`` is false (l2). ``progress``:
    a bar over the iterations.
    """
    n = features.shape[0]
    take = min(n, TRAIN_POINTS_PER_LIST * nlist)
    rows = np.sort(np.random.default_rng(seed).choice(n, take, replace=False)) if take < n else slice(None)
    x = np.ascontiguousarray(features[rows], dtype=np.float32)
    km = faiss.Kmeans(
        x.shape[1], nlist, niter=1, seed=seed, spherical=spherical,
        max_points_per_centroid=TRAIN_POINTS_PER_LIST, verbose=False,
    )  # fmt: skip
    # one iteration per call, each starting from the last one's centroids: the same iterations as
    # one call with niter=KMEANS_NITER (FAISS seeds only the first call's initial centroids), with
    # a bar between them
    centroids = None
    with centroid_blocks(nlist):
        for _ in tqdm(range(KMEANS_NITER), desc=f"k-means, {nlist} lists", unit="iter", disable=not progress, leave=False):
            km.train(x, init_centroids=centroids)
            centroids = km.centroids
    return np.ascontiguousarray(centroids, dtype=np.float32)


def _chunks(n: int, chunk: int, progress: bool, desc: str):
    """``range(0, n, chunk)`` under a bar counting rows (``progress``)."""
    with tqdm(total=n, desc=desc, unit="rows", disable=not progress, leave=False) as bar:
        for lo in range(0, n, chunk):
            yield lo
            bar.update(min(chunk, n - lo))


def nearest_lists(
    coarse: faiss.Index, features: np.ndarray, spill: int, chunk: int = 65536, progress: bool = False
) -> np.ndarray:  # fmt: skip
    """int32 ``[n, spill]``: each row's ``spill`` nearest lists, nearest first."""
    out = np.empty((features.shape[0], spill), dtype=np.int32)
    with centroid_blocks(coarse.ntotal):
        for lo in _chunks(features.shape[0], chunk, progress, "assigning lists"):
            _, lists = coarse.search(np.ascontiguousarray(features[lo : lo + chunk], dtype=np.float32), spill)
            out[lo : lo + chunk] = lists
    return out


# SOAR (Sun et al., "SOAR: improved indexing for approximate nearest neighbor search", NeurIPS
# 2023): an item's further lists are chosen among its SOAR_CANDIDATES nearest centroids to have
# residuals orthogonal to the primary one, so a query that misses the primary list (its residual
# points the same way) still finds the item in another. lambda = 1 as in the paper.
SOAR_CANDIDATES = 16
SOAR_LAMBDA = 1.0
# With spilling, the scan collects more results than the c candidates wanted, since repeats are
# dropped after it, but not ``spill * c``: collecting costs the scan time, and a query left short
# of c distinct items is scanned again for ``spill * c`` (twice the scan). How many of the top
# entries repeat grows with the share p of lists probed (both of an item's lists probed): the
# factor the worst of 300 queries needed lies below 1 + (1 - exp(-7.5 p)) at spill 2 (1M, 2,048
# lists: 1.35 at p = 1/16, 1.65 at 0.18, 1.76 at 1/4, 1.90 at 0.35, 1.96 at 1/2), where a fixed
# 1.6c left every query short from p ~ 1/3 on and doubled the scan (benchmarks/README.md,
# "Collection by probed share"). SPILL_COLLECT is the floor (1.6c held at 10M, p = 1/8).
SPILL_COLLECT = 1.6
SPILL_REPEAT_RATE = 7.5


def collect_factor(probed_share: float, spill: int) -> float:
    """Entries collected per wanted candidate when items sit in ``spill`` lists and a share
    ``probed_share`` (0..1) of the lists is probed: ``1 + (spill - 1) * (1 - exp(-SPILL_REPEAT_RATE
    * share))``, at least ``SPILL_COLLECT`` and at most ``spill``."""
    grown = 1 + (spill - 1) * (1 - math.exp(-SPILL_REPEAT_RATE * probed_share))
    return float(min(spill, max(SPILL_COLLECT, grown)))


def soar_lists(
    coarse: faiss.Index, centroids: np.ndarray, features: np.ndarray, spill: int, chunk: int = 16384,
    progress: bool = False,
) -> np.ndarray:  # fmt: skip
    """int32 ``[n, spill]``: each row's nearest list, then ``spill - 1`` more lists by SOAR's loss.

    Among the ``SOAR_CANDIDATES`` nearest centroids ``c'`` other than the primary ``c1``, the
    lists with the smallest ``||x - c'||^2 + lambda * <x - c', r>^2``, ``r`` the unit primary
    residual ``(x - c1) / ||x - c1||``, best first.

    Both terms come from inner products the coarse search already returned (``<x, c>``, or the
    distance for l2) plus ``<c', c1>``: for a large batch looked up in the centroids' Gram matrix,
    never the ``[n, width - 1, D]`` residual arrays or gathered centroid rows (benchmarks/README.md);
    for a batch with fewer such pairs than an eighth of the Gram matrix (a small add), from the
    gathered rows, since the matrix alone costs ``nlist^2 * D`` (37 ms at 2,048 lists, whatever
    the batch; 256 MB at 8,192).
    """
    n, nlist = features.shape[0], centroids.shape[0]
    out = np.empty((n, spill), dtype=np.int32)
    width = min(max(SOAR_CANDIDATES, spill), nlist)
    cnorm = np.einsum("ld,ld->l", centroids, centroids)  # ||c||^2
    gram = centroids @ centroids.T if n * (width - 1) >= nlist * nlist // 8 else None  # <c', c1>
    with centroid_blocks(nlist):
        for lo in _chunks(features.shape[0], chunk, progress, "assigning lists (SOAR)"):
            x = np.ascontiguousarray(features[lo : lo + chunk], dtype=np.float32)
            got, near = coarse.search(x, width)
            xx = np.einsum("nd,nd->n", x, x)[:, None]
            if coarse.metric_type == faiss.METRIC_INNER_PRODUCT:
                dot, d2 = got, xx + cnorm[near] - 2 * got  # <x, c>, ||x - c||^2
            else:
                dot, d2 = (xx + cnorm[near] - got) / 2, got
            if gram is not None:
                c1c = gram[near[:, :1], near[:, 1:]]  # <c', c1>
            else:
                c1c = np.einsum("nd,nwd->nw", centroids[near[:, 0]], centroids[near[:, 1:]])
            # <x - c', x - c1> = <x, x> - <x, c1> - <x, c'> + <c', c1>; divided by ||x - c1|| it is <x - c', r>
            along = (xx - dot[:, :1] - dot[:, 1:] + c1c) ** 2 / np.maximum(d2[:, :1], 1e-12)
            best = np.argsort(d2[:, 1:] + SOAR_LAMBDA * along, axis=1, kind="stable")[:, : spill - 1]
            out[lo : lo + chunk, 0] = near[:, 0]
            out[lo : lo + chunk, 1:] = np.take_along_axis(near[:, 1:], best, axis=1)
    return out


def list_members(assign: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(list, rows int64 [r])`` for each list that ``assign int32 [n, s]`` names: the rows it
    gets (every column's list gets the row), in row order."""
    spill = assign.shape[1]
    lists = assign.reshape(-1)  # item i's j-th list at i * spill + j
    rows = np.repeat(np.arange(assign.shape[0]), spill)
    order = np.argsort(lists, kind="stable")  # keeps position order within each list
    uniq, starts = np.unique(lists[order], return_index=True)
    bounds = np.append(starts, order.size)
    for lst, lo, hi in zip(uniq.tolist(), bounds[:-1], bounds[1:]):
        yield lst, rows[order[lo:hi]]


def other_lists(pairs: np.ndarray, lst: int) -> np.ndarray:
    """``uint16 [r]``: for items in two lists (``pairs int32 [r, 2]``, one of them ``lst``), the other."""
    return np.where(pairs[:, 0] == lst, pairs[:, 1], pairs[:, 0]).astype(np.uint16)


def append_to_lists(
    ivf: faiss.IndexIVFPQFastScan, layout: BlockLayout, codes: np.ndarray, positions: np.ndarray, assign: np.ndarray,
    partners: list[np.ndarray] | None = None,
) -> None:  # fmt: skip
    """Append items to their lists: ``codes uint8 [n, K/8]``, ``positions int64 [n]`` (the ids
    the lists return), ``assign int32 [n, 2]`` (every column's list gets the item). With
    ``partners`` (per list, ``uint16``: each entry's other list, for the scan; items in two
    lists), each list's array grows with its entries.

    Never through ``BlockInvertedLists.add_entries``: in FAISS 1.15.1 its whole-block path,
    taken when a list already holds a nonzero multiple of 512 entries, copies all of the list's
    blocks past the old end (heap overflow). Instead each list is grown with ``resize`` and its
    last partial block plus the new blocks are rewritten in place.
    """
    if codes.shape[0] == 0:
        return
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    for lst, members in list_members(assign):
        old = invlists.list_size(lst)
        first = old // layout.nvec  # the block holding the old tail
        tail = old - first * layout.nvec
        if tail:
            blocks = faiss.rev_swig_ptr(invlists.get_codes(lst), layout.nbytes_for(old))
            tail_codes = layout.unpack(blocks[first * layout.block_size :].copy(), tail)
            new_codes = np.concatenate([tail_codes, codes[members]])
        else:
            new_codes = codes[members]
        total = old + members.size
        invlists.resize(lst, total)
        blocks = faiss.rev_swig_ptr(invlists.get_codes(lst), layout.nbytes_for(total))
        blocks[first * layout.block_size :] = layout.pack(new_codes)
        faiss.rev_swig_ptr(invlists.get_ids(lst), total)[old:] = positions[members]
        if partners is not None:
            partners[lst] = np.concatenate([partners[lst], other_lists(assign[members], lst)])
    ivf.ntotal += int(assign.size)


class FaissLists:
    """A stage's lists as FAISS's ``IndexIVFPQFastScan`` holds them (its 32-code blocks of
    nibbles, 8-byte ids), which FAISS's scan and ours (AVX2 / AVX-512BW) read, plus (``partners``)
    each entry's other list."""

    six_bit = False

    def __init__(self, bits: int, nlist: int, partners: bool):
        self.ivf, self._placeholder = make_lists(bits, nlist)
        self.layout = BlockLayout.of(self.ivf)
        self.partners = [np.empty(0, np.uint16) for _ in range(nlist)] if partners else None

    def append(self, codes: np.ndarray, positions: np.ndarray, assign: np.ndarray) -> None:
        """See :func:`append_to_lists`."""
        append_to_lists(self.ivf, self.layout, codes, positions, assign, self.partners)

    def table(self) -> fastscan.ListTable:
        inv = self.ivf.invlists
        sizes = np.array([inv.list_size(i) for i in range(self.ivf.nlist)], dtype=np.int64)
        return fastscan.ListTable.of(self.ivf, sizes, self.partners)

    def contents(self) -> list[tuple[np.ndarray, np.ndarray]]:
        inv, bytes_per_code, out = self.ivf.invlists, self.ivf.code_size, []
        for i in range(self.ivf.nlist):
            n = inv.list_size(i)
            ids = faiss.rev_swig_ptr(inv.get_ids(i), n).copy() if n else np.empty(0, np.int64)
            blocks = faiss.rev_swig_ptr(inv.get_codes(i), self.layout.nbytes_for(n)).copy() if n else None
            out.append((ids, self.layout.unpack(blocks, n) if n else np.empty((0, bytes_per_code), np.uint8)))
        return out

    @property
    def nbytes(self) -> int:
        """Blocks (padded to 32 per list, each list's table allocated as FAISS's AlignedTable
        does: rounded up to a power of two), 8-byte ids and 2-byte partners."""
        cap, inv = faiss.AlignedTableUint8.round_capacity, self.ivf.invlists
        sizes = [inv.list_size(i) for i in range(self.ivf.nlist)]
        total = int(sum(cap(self.layout.nbytes_for(n)) for n in sizes)) + 8 * int(sum(sizes))
        return total + (sum(a.nbytes for a in self.partners) if self.partners is not None else 0)


class SixBitLists:
    """A stage's lists in six-bit blocks (six_bit.py), which only our scan reads (AVX-512 VBMI):
    per list, its blocks (``uint8``), ids (``int64`` positions) and (``partners``) each entry's
    other list (``uint16``), as numpy arrays of exactly their size."""

    six_bit = True
    ivf = None  # FAISS cannot scan these

    def __init__(self, bits: int, nlist: int, partners: bool):
        self.bits, self.m = int(bits), six_bit.index_count(bits)
        self.blocks = [np.empty(0, np.uint8) for _ in range(nlist)]
        self.ids = [np.empty(0, np.int64) for _ in range(nlist)]
        self.partners = [np.empty(0, np.uint16) for _ in range(nlist)] if partners else None

    def append(self, codes: np.ndarray, positions: np.ndarray, assign: np.ndarray) -> None:
        """As :func:`append_to_lists`: each list's last partial block is unpacked and packed
        again with its new codes."""
        per_block = six_bit.block_bytes(self.m)
        for lst, members in list_members(assign):
            old = self.ids[lst].size
            full = old // six_bit.BLOCK
            new = codes[members]
            if old > full * six_bit.BLOCK:
                tail = six_bit.unpack(self.blocks[lst][full * per_block :], old - full * six_bit.BLOCK, self.m, self.bits)
                new = np.concatenate([tail, new])
            self.blocks[lst] = np.concatenate([self.blocks[lst][: full * per_block], six_bit.pack(new, self.m)])
            self.ids[lst] = np.concatenate([self.ids[lst], positions[members]])
            if self.partners is not None:
                self.partners[lst] = np.concatenate([self.partners[lst], other_lists(assign[members], lst)])

    def table(self) -> fastscan.ListTable:
        return fastscan.ListTable.of_arrays(self.blocks, self.ids, self.partners)

    def contents(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(ids.copy(), six_bit.unpack(b, ids.size, self.m, self.bits)) for b, ids in zip(self.blocks, self.ids)]

    @property
    def nbytes(self) -> int:
        """Blocks (padded to 64 per list), 8-byte ids and 2-byte partners."""
        arrays = [*self.blocks, *self.ids, *(self.partners or ())]
        return int(sum(a.nbytes for a in arrays))


def dedupe(positions: np.ndarray) -> np.ndarray:
    """``int64 [nq, c]`` with repeats of a position (an item found through two of its lists)
    replaced by -1, keeping the first (best-scored) occurrence."""
    # position * width + column orders by position, then column (a stable sort's order), with
    # numpy's unstable sort: ~2x faster than a stable one on the thousands a deep probe returns
    width = positions.shape[1]
    order = np.argsort(positions * width + np.arange(width), axis=1)
    s = np.take_along_axis(positions, order, 1)
    repeat = np.zeros(s.shape, dtype=bool)
    repeat[:, 1:] = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    out = positions.copy()
    np.put_along_axis(out, order, np.where(repeat, -1, s), 1)
    return out


# queries per block of the coarse product: its [block, nlist] float32 scores stay ~16 MB
_COARSE_CELLS = 1 << 22


def nearest_centroids(
    centroids: np.ndarray, x: np.ndarray, nprobe: int, metric: str, ordered: bool = True
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The ``nprobe`` centroids (``float32 [nlist, D]``) nearest to each row of ``x [nq, D]``,
    nearest first (in no set order without ``ordered``: a scan of the lists does not need it):
    ``(scores float32 [nq, nprobe], lists int64 [nq, nprobe])``, scores being inner products
    (``ip`` / ``cosine``) or squared distances (``l2``), as FAISS's flat index gives.

    One BLAS product and an ``argpartition`` per block of queries, then a sort of the kept
    ``nprobe`` only: FAISS's flat search keeps its top-k in a per-query heap, which for the
    hundreds of lists a deep probe takes costs ~3x the product itself (benchmarks/README.md,
    "Cheaper rerank").
    """
    nq, nlist = x.shape[0], centroids.shape[0]
    nprobe = min(int(nprobe), nlist)
    scores, lists = np.empty((nq, nprobe), np.float32), np.empty((nq, nprobe), np.int64)
    half_norms = np.einsum("ld,ld->l", centroids, centroids) / 2 if metric == "l2" else None
    step = max(1, _COARSE_CELLS // max(nlist, 1))
    for lo in range(0, nq, step):
        xb = np.ascontiguousarray(x[lo : lo + step], dtype=np.float32)
        key = xb @ centroids.T  # higher is nearer: <x, c>, or <x, c> - ||c||^2 / 2 for l2
        if half_norms is not None:
            key -= half_norms
        if nprobe < nlist:
            top = np.argpartition(-key, nprobe - 1, axis=1)[:, :nprobe]
        else:
            top = np.broadcast_to(np.arange(nlist), key.shape)
        kept = np.take_along_axis(key, top, 1)
        if ordered:
            order = np.argsort(-kept, axis=1)  # not stable: ~4x faster on the hundreds kept; ties are rare
            kept, top = np.take_along_axis(kept, order, 1), np.take_along_axis(top, order, 1)
        lists[lo : lo + step] = top
        scores[lo : lo + step] = (np.einsum("nd,nd->n", xb, xb)[:, None] - 2 * kept) if half_norms is not None else kept
    return scores, lists


def adaptive_depth(centroid_scores: np.ndarray, slack: float, higher_is_better: bool = True) -> np.ndarray:
    """Lists each query scans, ``int64 [nq]``, from its coarse scores ``[nq, nprobe]`` (best
    first): every list whose centroid scores within ``slack`` of the query's best list (at least
    one). A query close to one centroid stops after a few lists; one between several scans them
    all (query-adaptive depth, capped at ``nprobe``)."""
    s = np.asarray(centroid_scores, dtype=np.float64)
    keep = s >= s[:, :1] - slack if higher_is_better else s <= s[:, :1] + slack
    return np.maximum(1, keep.sum(axis=1)).astype(np.int64)


class Probed(NamedTuple):
    """What a partitioned scan returns: ``positions int64 [nq, c]`` (-1 padded), their approximate
    ``scores float32 [nq, c]`` and ``scanned int64 [nq]``, the codes each query scored (the sizes
    of the lists it scanned; a spilled item counts once per list)."""

    positions: np.ndarray
    scores: np.ndarray
    scanned: np.ndarray


class Scanned(NamedTuple):
    """What :func:`probe` returns: the top ``positions int64 [nq, c]`` (-1 padded) and their
    approximate ``scores float32 [nq, c]`` (-inf padded), the ``lists int64 [nq, nprobe]`` scanned
    (-1: none) and ``held int64 [nq]``, how many of the ``c`` the lists held (counting repeats)."""

    positions: np.ndarray
    scores: np.ndarray
    lists: np.ndarray
    held: np.ndarray


def probe(
    centroids: np.ndarray, metric: str, ivf: faiss.IndexIVFPQFastScan | None, x: np.ndarray, z: np.ndarray, c: int,
    nprobe: int, slack: float | None = None, table: fastscan.ListTable | None = None, distinct: bool = False,
) -> Scanned:  # fmt: skip
    """The top ``c`` entries among the ``nprobe`` lists nearest to the features ``x [nq, D]``,
    scored by the projections ``z [nq, K]`` (see :class:`Scanned`). With ``distinct``, a position
    found again (an item in two of the query's lists) is dropped and the rest close up, best
    first. With ``slack``, each query scans only its first :func:`adaptive_depth` lists (the
    others are passed as -1: skipped). With ``table`` (the lists' addresses) and where
    :func:`fastscan.available` holds, our scan reads the lists; otherwise FAISS's (``ivf``). Six-bit
    lists (``table.six_bit``, no ``ivf``) only ours reads."""
    coarse_scores, lists = nearest_centroids(centroids, x, nprobe, metric, ordered=slack is not None)
    if slack is not None:
        depth = adaptive_depth(coarse_scores, slack, higher_is_better=metric != "l2")
        lists = np.where(np.arange(lists.shape[1])[None, :] < depth[:, None], lists, -1)
    if table is not None and fastscan.reads(table, ivf):
        pos, scores, held = fastscan.scan(z, lists, table, c, distinct)
        return Scanned(pos, scores, lists, held)
    zeros = np.zeros(lists.shape, dtype=np.float32)  # coarse distances: unused without residuals
    z = np.ascontiguousarray(z, dtype=np.float32)
    scores = np.empty((z.shape[0], c), dtype=np.float32)
    pos = np.empty((z.shape[0], c), dtype=np.int64)
    # the C++ call: FAISS's Python wrapper refuses params, and ivf.nprobe is shared state
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    ivf.search_preassigned_c(
        z.shape[0], faiss.swig_ptr(z), c, faiss.swig_ptr(lists), faiss.swig_ptr(zeros),
        faiss.swig_ptr(scores), faiss.swig_ptr(pos), False, params,
    )  # fmt: skip
    held = (pos >= 0).sum(axis=1).astype(np.int64)
    if distinct:
        pos = dedupe(pos)
        keep = np.argsort(pos < 0, axis=1, kind="stable")  # distinct ones first, in score order
        pos, scores = np.take_along_axis(pos, keep, 1), np.take_along_axis(scores, keep, 1)
    scores[pos < 0] = -np.inf
    return Scanned(pos, scores, lists, held)


# -- the stage ------------------------------------------------------------------------------------
class PartitionStage:
    """A trained coarse quantizer and (once built) its lists of packed codes: six-bit blocks where
    our scan reads them (:func:`fastscan.six_bit_available`, decided when the lists are built;
    they are not saved), else FAISS's.

    The assignment ``int32 [N, spill]`` belongs to the caller (a row array beside its codes, so
    it compacts and persists with them); the lists are derived data, rebuilt from the caller's
    code store and that assignment by :meth:`build`. Positions in the lists are row positions.

    Not thread-safe for mutation: the index calls ``build`` / ``append`` / ``drop_lists`` under
    its write lock (or its build lock), ``knn`` under its read lock.
    """

    name = "partitioned"

    def __init__(self, bits: int, centroids: np.ndarray, metric: str, spill: int = 1):
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.bits, self.nlist, self.dim = int(bits), int(centroids.shape[0]), int(centroids.shape[1])
        self.metric, self.spill = metric, min(int(spill), self.nlist)  # no more lists than there are
        self.coarse = faiss.IndexFlatL2(self.dim) if metric == "l2" else faiss.IndexFlatIP(self.dim)
        self.coarse.add(centroids)
        # a view of the coarse index's own rows (no copy), for nearest_centroids
        self._centroid_rows = faiss.rev_swig_ptr(self.coarse.get_xb(), self.nlist * self.dim).reshape(self.nlist, self.dim)
        self._lists: FaissLists | SixBitLists | None = None
        self._table: fastscan.ListTable | None = None  # list_table(), until the lists change

    @classmethod
    def train(
        cls, bits: int, features: np.ndarray, nlist: int, metric: str, spill: int = 1, progress: bool = False
    ) -> "PartitionStage":  # fmt: skip
        return cls(bits, train_centroids(features, nlist, spherical=metric != "l2", progress=progress), metric, spill)

    @property
    def centroids(self) -> np.ndarray:
        """float32 ``[nlist, D]`` (a copy)."""
        return self._centroid_rows.copy()

    @property
    def has_lists(self) -> bool:
        return self._lists is not None

    @property
    def ivf(self) -> faiss.IndexIVFPQFastScan | None:
        """FAISS's index holding the lists, if they are FAISS's."""
        return self._lists.ivf if self._lists is not None else None

    def assign(self, features: np.ndarray, progress: bool = False) -> np.ndarray:
        """int32 ``[n, spill]`` lists for new items: the nearest, then SOAR's picks (spilling)."""
        if self.spill == 1:
            return nearest_lists(self.coarse, features, 1, progress=progress)
        return soar_lists(self.coarse, self.centroids, features, self.spill, progress=progress)

    def build(self, codes: np.ndarray, assign: np.ndarray) -> None:
        """Lists from scratch for positions ``0 .. N-1`` (``codes [N, K/8]``, ``assign [N, s]``)."""
        kind = SixBitLists if fastscan.six_bit_available(self.bits, self.nlist) else FaissLists
        lists = kind(self.bits, self.nlist, self._names_partners())
        lists.append(np.ascontiguousarray(codes), np.arange(len(codes), dtype=np.int64), np.asarray(assign, dtype=np.int32))
        self._lists, self._table = lists, None

    def _names_partners(self) -> bool:
        """Whether the lists carry each entry's other list (two lists per item, few enough lists
        for the scan's 16-bit names)."""
        return self.spill == 2 and self.nlist < fastscan.PARTNER_NONE

    def append(self, codes: np.ndarray, start: int, assign: np.ndarray) -> None:
        """Add items at positions ``start ..`` to built lists (no-op until :meth:`build`)."""
        if self._lists is not None and len(codes):
            positions = np.arange(start, start + len(codes), dtype=np.int64)
            self._lists.append(np.ascontiguousarray(codes), positions, np.asarray(assign, dtype=np.int32))
            self._table = None

    def drop_lists(self) -> None:
        """Forget the lists (positions changed); the next :meth:`build` makes them again."""
        self._lists, self._table = None, None

    def knn(self, x: np.ndarray, z: np.ndarray, c: int, nprobe: int, slack: float | None = None) -> Probed:
        """See :func:`probe` (``slack``: query-adaptive depth, at most ``nprobe`` lists). When
        items spill and the scan cannot keep a twice-found item out of a candidate's slot (FAISS's
        scan, or no partner lists), more than ``c`` are scanned for and repeats dropped before the
        top ``c`` are kept: :func:`collect_factor` ``* c`` first, and ``spill * c`` for a query
        whose lists held more items than that but fewer than ``c`` distinct ones among them."""
        nprobe = min(nprobe, self.nlist)
        if self.spill == 1:
            pos, scores, lists, _ = probe(self._centroid_rows, self.metric, self.ivf, x, z, c, nprobe, slack, self.list_table())
        else:
            most = self.spill * c
            factor = 1.0 if self._scan_names_partners() else collect_factor(nprobe / self.nlist, self.spill)
            first = min(most, int(np.ceil(factor * c)))
            pos, scores, lists, full = self._distinct(x, z, first, c, nprobe, slack)
            short = np.flatnonzero(full & ((pos >= 0).sum(axis=1) < c)) if first < most else []
            if len(short):
                pos[short], scores[short] = self._distinct(x[short], z[short], most, c, nprobe, slack)[:2]
        sizes = self.list_sizes()
        scanned = np.where(lists >= 0, sizes[np.maximum(lists, 0)], 0).sum(axis=1).astype(np.int64)
        return Probed(pos, scores, scanned)

    def _scan_names_partners(self) -> bool:
        """Whether this search's scan keeps an item found in two lists once (our kernel, with the
        lists' partners): then ``c`` entries are ``c`` items and no more need collecting."""
        return self._lists.partners is not None and fastscan.reads(self.list_table(), self.ivf)

    def _distinct(self, x: np.ndarray, z: np.ndarray, want: int, c: int, nprobe: int, slack: float | None):
        """The first ``c`` distinct of the top ``want`` (:func:`probe`): positions and scores
        ``[nq, c]`` in score order (-1 padded), the lists, and whether each query's lists held
        ``want`` entries (bool ``[nq]``; if not, asking for more finds nothing more)."""
        found = probe(self._centroid_rows, self.metric, self.ivf, x, z, want, nprobe, slack, self.list_table(), True)
        return found.positions[:, :c], found.scores[:, :c], found.lists, found.held >= want

    # -- introspection (tests, memory_usage) --------------------------------------------------
    def list_table(self) -> fastscan.ListTable:
        """Each list's size and where FAISS keeps its blocks and ids, read once per state of the
        lists (a search needs the sizes for every query's scanned count, our scan the rest)."""
        if self._table is None:
            self._table = self._lists.table()
        return self._table

    def list_sizes(self) -> np.ndarray:
        """int64 ``[nlist]``."""
        return self.list_table().sizes

    def list_contents(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per list: (positions int64 ``[n]``, codes uint8 ``[n, K/8]``) read back from its blocks."""
        return self._lists.contents()

    @property
    def nbytes(self) -> int:
        """Centroids, plus the lists once built (their blocks, 8-byte ids and, two lists per item,
        2-byte partners: see :meth:`FaissLists.nbytes`, :meth:`SixBitLists.nbytes`)."""
        total = 4 * self.nlist * self.dim
        return total + (self._lists.nbytes if self._lists is not None else 0)
