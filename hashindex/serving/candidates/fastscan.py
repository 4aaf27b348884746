"""Our own scan of the partition stage's lists (``fastscan.c``), where it was built.

It reads FAISS's fast-scan blocks in place and scores them as
``IndexIVFPQFastScan.search_preassigned`` does (a lookup table per query and sub-quantizer, sums
in 16 bits; our tables are rounded to 6 bits, FAISS's to 8), or, on a CPU with AVX-512 VBMI, the
stage's own six-bit blocks (six_bit.py: the same scores from 2/3 of the lookups), and collects
the top ``k`` against
a threshold guessed from a sample of each query's lists, where FAISS's reservoir starts from
nothing: at the ~1,000 entries a deep probe collects, that collection is nearly half of FAISS's
scan (benchmarks/README.md, "A scan that knows its threshold").

The C file is compiled when the package is installed (setup.py; an optional extension: an
install without a C compiler still works) and loaded with ``ctypes``, which releases the GIL
while it runs. It needs an x86-64 CPU with AVX2 (AVX-512BW where present). :func:`available`
says whether it can run here; where it cannot, :func:`probe
<hashindex.serving.candidates.partitions.probe>` asks FAISS. The two agree up to their tables'
rounding (tests/test_fastscan.py); the kernel's own answer is exact for its tables (the ``k``
best sums; among entries tied with the ``k``-th, any).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from pathlib import Path
from typing import Iterator, NamedTuple

import faiss
import numpy as np

from hashindex.serving import native
from hashindex.serving.candidates import six_bit
from hashindex.serving.candidates.asymmetric import SUB_BITS, sign_patterns

# queries per C call: enough that each list stays in cache for the dozens of queries probing it
# (fewer queries per call were slower: 1M, nprobe 362, k = 1,097: 0.36 ms per query at 512,
# 0.40 at 150, 0.49 at 60); each holds 2k + 64 keys of 8 bytes while it runs, and a call holds at
# most WORK_KEYS of them (32 MB), so a large k takes fewer queries per call
QUERIES_PER_CALL = 512
WORK_KEYS = 1 << 22
MAX_SUBQUANTIZERS = 128  # scores (<= 255 per sub-quantizer) are compared as signed 16-bit lanes
MAX_SIX_BIT_INDICES = 520  # six-bit lists: <= 63 per index, compared as signed 16-bit lanes
# the instruction sets (isa()): the six-bit scan needs the first
AVX512_VBMI, AVX512, AVX2 = 3, 2, 1
# the kernel names an entry by list and offset in 48 bits (fastscan.c); FAISS scans anything bigger
MAX_LISTS = 1 << 20
MAX_LIST_SIZE = 1 << 28
# an entry's other list, as the kernel reads it (uint16): this value is none, so the lists it can
# name number fewer
PARTNER_NONE = 0xFFFF
# Table entries are rounded to 0 .. TABLE_TOP, not FAISS's 0 .. 255: four lookups then sum in a
# byte before the kernel widens them to 16 bits. Chosen on the seed-11 1M gallery: 0 .. 63 scanned
# 8% faster than 0 .. 127 for 0.001 recall@10 at the same point, 0 .. 31 a little faster for 0.003
# (benchmarks/README.md, "Ids at the end").
TABLE_TOP = 63

_ERRORS = {-1: "not supported by this CPU", -2: "out of memory", -3: "bad arguments"}
# per index width: [width, 2^width], a table = the index's projections @ this
_PATTERNS_T = {w: np.ascontiguousarray(sign_patterns(w).T) for w in (SUB_BITS, six_bit.INDEX_BITS)}


def _load() -> ctypes.CDLL | None:
    lib = native.load(Path(__file__).parent, "_fastscan")
    if lib is not None:
        p, i = ctypes.c_void_p, ctypes.c_int64
        lib.hx_scan.argtypes = [i, ctypes.c_int, i, p, i, p, i, p, p, p, p, i, ctypes.c_int, p, i, p, p, p]
        lib.hx_scan.restype = ctypes.c_int
        lib.hx_work_len.argtypes, lib.hx_work_len.restype = [i, i], i
        lib.hx_isa.restype = ctypes.c_int
        lib.hx_cap_isa.argtypes = [ctypes.c_int]
    return lib


_LIB = _load()
_state = threading.local()


def isa() -> int:
    """The instruction set the scan would use: :data:`AVX512_VBMI`, :data:`AVX512` (BW),
    :data:`AVX2`, or 0: none (or not built)."""
    return int(_LIB.hx_isa()) if _LIB is not None else 0


def available(m: int | None = None, table: "ListTable | None" = None) -> bool:
    """Whether the scan is built, runs on this CPU, is not switched off in this thread
    (:func:`disabled`) and, given ``m`` sub-quantizers and the lists' ``table``, handles them
    (FAISS's blocks; six-bit ones are always scanned here, see :func:`six_bit_available`)."""
    if _LIB is None or getattr(_state, "off", False) or isa() == 0:
        return False
    if table is not None and (len(table.sizes) > MAX_LISTS or (table.sizes > MAX_LIST_SIZE).any()):
        return False
    return m is None or (m % 2 == 0 and 0 < m <= MAX_SUBQUANTIZERS)


def reads(table: "ListTable", ivf: faiss.IndexIVFPQFastScan | None) -> bool:
    """Whether this scan reads the lists of ``table``: six-bit lists always (nothing else can),
    FAISS's (held by ``ivf``) where :func:`available`."""
    return table.six_bit or (ivf is not None and available(ivf.M, table))


def six_bit_available(bits: int, nlist: int) -> bool:
    """Whether lists of ``bits``-bit codes in ``nlist`` lists should be six-bit blocks: the scan
    is :func:`available` with AVX-512 VBMI and handles their size (FAISS cannot scan them, so a
    stage holding them needs this scan for as long as it lives)."""
    return (
        available() and isa() >= AVX512_VBMI and nlist <= MAX_LISTS
        and six_bit.index_count(bits) <= MAX_SIX_BIT_INDICES
    )  # fmt: skip


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, this thread's searches of FAISS's lists use FAISS's scan, and stages it
    builds hold FAISS's lists (tests, A/B benchmarks). Six-bit lists built before are still
    scanned here: nothing else reads them."""
    before = getattr(_state, "off", False)
    _state.off = True
    try:
        yield
    finally:
        _state.off = before


@contextlib.contextmanager
def isa_cap(level: int) -> Iterator[None]:
    """Within the block, the scan uses no instruction set above ``level`` (1: AVX2 only), in
    every thread (tests compare the two kernels)."""
    _LIB.hx_cap_isa(int(level))
    try:
        yield
    finally:
        _LIB.hx_cap_isa(AVX512_VBMI)


class ListTable(NamedTuple):
    """Where each list's blocks and ids live (addresses ``uint64 [nlist]``: FAISS's memory, or
    the arrays in ``kept``) and how many entries it holds (``int64 [nlist]``): valid until the
    lists change. ``six_bit``: the blocks are six-bit ones (six_bit.py), else FAISS's. With
    ``partner_lists`` (per list, ``uint16 [size]``: the other list of each entry's item,
    :data:`PARTNER_NONE` if none), an item found in two of a query's lists enters its top once;
    ``partners`` holds their addresses (empty without)."""

    codes: np.ndarray
    ids: np.ndarray
    sizes: np.ndarray
    partners: np.ndarray = np.empty(0, np.uint64)
    partner_lists: tuple[np.ndarray, ...] = ()  # kept here so the addresses stay valid
    six_bit: bool = False
    kept: tuple[np.ndarray, ...] = ()  # six-bit lists' block and id arrays, for the same reason

    @classmethod
    def of(cls, ivf: faiss.IndexIVFPQFastScan, sizes: np.ndarray, partner_lists=None) -> "ListTable":
        """The table of FAISS's lists."""
        inv = ivf.invlists
        codes, ids = np.zeros(len(sizes), np.uint64), np.zeros(len(sizes), np.uint64)
        for lst in np.flatnonzero(sizes).tolist():
            codes[lst] = faiss.rev_swig_ptr(inv.get_codes(lst), 1).ctypes.data
            ids[lst] = faiss.rev_swig_ptr(inv.get_ids(lst), 1).ctypes.data
        return cls(codes, ids, np.ascontiguousarray(sizes, dtype=np.int64), *_partner_addresses(partner_lists))

    @classmethod
    def of_arrays(cls, blocks: list[np.ndarray], ids: list[np.ndarray], partner_lists=None) -> "ListTable":
        """The table of six-bit lists held as arrays: per list, its blocks (``uint8``) and ids
        (``int64``)."""
        sizes = np.array([a.size for a in ids], dtype=np.int64)
        codes = np.array([a.ctypes.data for a in blocks], dtype=np.uint64)
        where = np.array([a.ctypes.data for a in ids], dtype=np.uint64)
        return cls(codes, where, sizes, *_partner_addresses(partner_lists), True, (*blocks, *ids))


def _partner_addresses(partner_lists) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    kept = tuple(partner_lists) if partner_lists is not None else ()
    return (np.array([a.ctypes.data for a in kept], dtype=np.uint64) if kept else np.empty(0, np.uint64)), kept


def lookup_tables(
    z: np.ndarray, top: int | None = None, six_bits: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Each query's tables, quantized as FAISS's fast-scan does but to ``0 .. top`` (default
    :data:`TABLE_TOP`, read at each call):
    ``uint8 [nq, M, 16]`` for projections ``z [nq, 4M]`` (``six_bits``: ``uint8 [nq, M, 64]``,
    ``M = six_bit.index_count(K)`` for ``z [nq, K]``, zero columns padding the last indices),
    plus ``scale`` and ``offset`` ``float32 [nq]`` that map a summed score ``s`` back to
    ``s / scale + offset`` (one scale per query, so the sums rank codes as the float tables do,
    up to rounding)."""
    nq = z.shape[0]
    width = six_bit.INDEX_BITS if six_bits else SUB_BITS
    m = six_bit.index_count(z.shape[1]) if six_bits else z.shape[1] // SUB_BITS
    top = TABLE_TOP if top is None else top
    z = np.ascontiguousarray(z, dtype=np.float32)
    if z.shape[1] < m * width:  # the last six-bit indices: zero projections add nothing
        z = np.pad(z, ((0, 0), (0, m * width - z.shape[1])))
    t = z.reshape(nq, m, width) @ _PATTERNS_T[width]  # [nq, M, 2^width]
    low = t.min(axis=2, keepdims=True)
    span = (t.max(axis=2, keepdims=True) - low).max(axis=1, keepdims=True)  # [nq, 1, 1]
    scale = np.divide(float(top), span, out=np.zeros_like(span), where=span > 0)
    tables = np.rint((t - low) * scale).astype(np.uint8)
    return tables, scale[:, 0, 0], low.sum(axis=(1, 2)).astype(np.float32)


def _work(n: int) -> np.ndarray:
    """Scratch for ``n`` keys: this thread's, kept from call to call (fresh memory costs the kernel
    a page fault per 4 kB it writes, ~10% of a scan), unless more than ``WORK_KEYS`` (one query
    with a huge k), which is not kept."""
    if n > WORK_KEYS:
        return np.empty(n, np.uint64)
    work = getattr(_state, "work", None)
    if work is None or work.size < n:
        work = _state.work = np.empty(n, np.uint64)
    return work


def scan_raw(
    tables: np.ndarray, lists: np.ndarray, table: ListTable, k: int, distinct: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Top-``k`` list entries by summed table score, for ``tables uint8 [nq, M, 16]`` (``[nq, M,
    64]`` for six-bit lists; as :func:`lookup_tables` makes them) over the lists ``int64 [nq, nprobe]`` (-1: none): ids
    ``int64 [nq, k]`` (-1 padded) and scores ``uint16 [nq, k]``, best first, and how many of the
    ``k`` each query's lists held (``int64 [nq]``). With ``distinct``, an id found again (an item
    in two of the query's lists, same score) is dropped and the rest close up. Call only where
    :func:`available` holds."""
    nq, m = tables.shape[0], tables.shape[1]
    if table.six_bit != (tables.shape[2] == 2**six_bit.INDEX_BITS):
        raise ValueError("tables do not match the lists' blocks")
    tables = np.ascontiguousarray(tables, dtype=np.uint8)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    raw = np.empty((nq, k), np.uint16)
    ids = np.empty((nq, k), np.int64)
    held = np.empty(nq, np.int64)
    per_call = max(1, min(QUERIES_PER_CALL, WORK_KEYS // (2 * k + 64) - 1, nq))
    work = _work(_LIB.hx_work_len(per_call, k))
    for lo in range(0, nq, per_call):
        hi = min(nq, lo + per_call)
        rc = _LIB.hx_scan(
            hi - lo, int(table.six_bit), m, tables[lo:hi].ctypes.data, lists.shape[1], lists[lo:hi].ctypes.data, len(table.sizes),
            table.codes.ctypes.data, table.ids.ctypes.data, table.partners.ctypes.data if table.partners.size else None,
            table.sizes.ctypes.data, k, int(distinct), work.ctypes.data,
            work.size, raw[lo:hi].ctypes.data, ids[lo:hi].ctypes.data, held[lo:hi].ctypes.data,
        )  # fmt: skip
        if rc:
            raise (MemoryError if rc == -2 else RuntimeError)(f"fast-scan kernel: {_ERRORS.get(rc, rc)}")
    return ids, raw, held


def scan(
    z: np.ndarray, lists: np.ndarray, table: ListTable, k: int, distinct: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Top-``k`` list entries for projections ``z [nq, 4M]`` over the lists ``int64 [nq,
    nprobe]`` (-1: none): ids ``int64 [nq, k]`` (-1 padded) and scores ``float32 [nq, k]``
    (-inf padded), best first, and how many each query's lists held (``int64 [nq]``), as
    :func:`probe <hashindex.serving.candidates.partitions.probe>` returns them; ``distinct``: see
    :func:`scan_raw`. Call only where :func:`available` holds."""
    tables, scale, offset = lookup_tables(z, six_bits=table.six_bit)
    ids, raw, held = scan_raw(tables, lists, table, k, distinct)
    inv_scale = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    scores = (raw * inv_scale[:, None] + offset[:, None]).astype(np.float32)
    scores[ids < 0] = -np.inf
    return ids, scores, held
