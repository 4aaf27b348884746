"""Row storage that grows by appending and shrinks by compaction.

The index keeps three aligned row arrays (codes, ids, features); row position is the
FAISS sequential id. ``RowStore`` gives them amortised O(1) appends (capacity doubling) and
lets a loaded, memory-mapped array be used in place until the first mutation.
``CompactStore`` holds the rerank rows as FAISS scalar-quantizer codes and ranks candidates on
them (compact_scan.c where built, FAISS's scanner otherwise); ``FileRows`` reads a loaded index's
float rows by ``pread`` (file_rows.c where built, ``os.pread`` otherwise). numpy and faiss, no
torch.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from hashindex.core.errors import IndexFormatError
from hashindex.serving import compact_scan, native


class RowStore:
    """An ``[n, *row_shape]`` array with append / take / keep.

    ``data`` may be a read-only memory map (from ``np.load(mmap_mode="r")``): it is used as is
    for reads and copied into memory on the first append or compaction.
    """

    def __init__(self, row_shape: tuple[int, ...], dtype: np.dtype, data: np.ndarray | None = None):
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        if data is None:
            data = np.empty((0, *self.row_shape), dtype=self.dtype)
        self._buf = data
        self._n = data.shape[0]

    def __len__(self) -> int:
        return self._n

    @property
    def array(self) -> np.ndarray:
        """A view of the ``n`` live rows (no copy)."""
        return self._buf[: self._n]

    @property
    def is_mmap(self) -> bool:
        return isinstance(self._buf, np.memmap) or isinstance(getattr(self._buf, "base", None), np.memmap)

    @property
    def nbytes(self) -> int:
        return self._n * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=self.dtype)
        need = self._n + rows.shape[0]
        if need > self._buf.shape[0] or not self._buf.flags.writeable or self.is_mmap:
            capacity = max(need, 2 * self._n, 1024)
            grown = np.empty((capacity, *self.row_shape), dtype=self.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : need] = rows
        self._n = need

    def take(self, positions: np.ndarray) -> np.ndarray:
        # np.take, not rows[positions]: numpy's fancy indexing copies a row through its general
        # iterator, ~3x slower on the scattered rows a search gathers (benchmarks/README.md)
        return np.take(self._buf[: self._n], positions, axis=0)

    def keep(self, mask: np.ndarray) -> None:
        """Keep only rows where ``mask`` is true, preserving order."""
        kept = np.ascontiguousarray(self.array[mask])
        self._buf = kept
        self._n = kept.shape[0]

    @property
    def capacity(self) -> int:
        return int(self._buf.shape[0])

    def reserve(self, n: int) -> None:
        """Make room for ``n`` rows in all (one allocation), so a large add grows no further."""
        if n > self._buf.shape[0] or not self._buf.flags.writeable or self.is_mmap:
            grown = np.empty((max(n, self._n), *self.row_shape), dtype=self.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown

    @property
    def held_bytes(self) -> int:
        """Bytes this store holds in memory: its whole buffer (capacity included); 0 when the
        rows are a memory map (see :func:`mapped_resident_bytes` for its resident pages)."""
        if self.is_mmap:
            return 0
        return int(self._buf.nbytes)


def mapped_resident_bytes(array: np.ndarray) -> int:
    """Resident bytes of the memory mapping holding ``array`` (Linux ``/proc/self/smaps``; 0
    where it cannot be read). Pages of a mapped file count in the process's resident set once
    touched, so :meth:`HashIndex.memory_usage` reports them for memory-mapped stores."""
    if array.size == 0:
        return 0
    addr = array.__array_interface__["data"][0]
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(v, 16) for v in head.split("-"))
                    inside = lo <= addr < hi
                elif inside and head == "Rss:":
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


# -- compact rerank stores ----------------------------------------------------------------------
RERANK_KINDS = ("float32", "float16", "int8", "int6")
# the FAISS scalar quantizer of each compact kind, and its bits per dimension (the uniform kinds
# int8 / int6 have 2**bits - 1 steps over their range)
COMPACT_QTYPES = {"int8": "QT_8bit", "int6": "QT_6bit", "float16": "QT_fp16"}
COMPACT_BITS = {"int8": 8, "int6": 6, "float16": 16}
# per dimension, for the saved files: float32 values of the trained parameters (uniform kinds:
# vmin then vdiff; float16: none)
COMPACT_PARAMS = {"int8": 2, "int6": 2, "float16": 0}


def _worst(metric: str) -> float:
    """The score of padding: -inf for similarities, +inf for l2 distances."""
    return np.inf if metric == "l2" else -np.inf


def compact_code_bytes(kind: str, dim: int) -> int:
    """Bytes of one row of a compact store (FAISS packs int6 four values to three bytes)."""
    return (dim * COMPACT_BITS[kind] + 7) // 8


# rows encoded per FAISS call when appending: keeps the float32 scratch at ~4 MB (128-d), small
# enough that glibc returns it to the system instead of keeping it in its heap
_ENCODE_ROWS = 1 << 13
# int8 / int6: the per-dimension range (the min and max of the rows it covers) is widened by this
# share of its width on each side, so later items slightly outside it need no re-encoding
# (FAISS RS_minmax arg)
INT8_RANGE_MARGIN = 0.05
# rows per block when the range's extent is read from, or rows are re-encoded from, a float store
_EXTENT_ROWS = 1 << 16


class CompactStore:
    """Rerank rows held as FAISS scalar-quantizer codes: ``int8`` (QT_8bit: one byte per
    dimension, a per-dimension min/max range), ``int6`` (QT_6bit: the same with 64 levels, 3/4
    byte per dimension) or ``float16`` (QT_fp16, IEEE half).

    Candidates are scored on their codes by FAISS's scanner for this quantizer (the one its
    IVF-SQ indexes scan lists with), which reads the packed bytes directly: no decoded float
    copy is made, not even of the candidates (faster than decoding them and taking dot products:
    benchmarks/README.md, "Cheaper rerank").
    Scores are approximate: the decoded row differs from the float32 one
    by at most half a quantisation step per dimension (int8: ``range_d / 255 / 2``, int6:
    ``range_d / 63 / 2``; float16: a relative 2**-11), see :meth:`error_bound`: the range always
    covers every stored row (:meth:`cover` widens it, and re-encodes, when new rows leave it).

    The codes are a :class:`RowStore` of ``uint8 [N, code_size]`` (they append, compact, save
    and memory-map like the index's other row arrays); ``params`` is the quantizer's trained
    vector (int8 / int6: ``vmin[D]`` then ``vdiff[D]``; float16: empty).
    """

    def __init__(self, kind: str, dim: int, params: np.ndarray | None = None, codes: np.ndarray | None = None):
        import faiss

        if kind not in COMPACT_QTYPES:
            raise ValueError(f"compact store kind must be one of {sorted(COMPACT_QTYPES)}, got {kind!r}")
        self.kind, self.dim = kind, int(dim)
        self.sq = faiss.ScalarQuantizer(self.dim, getattr(faiss.ScalarQuantizer, COMPACT_QTYPES[kind]))
        self.sq.rangestat = faiss.ScalarQuantizer.RS_minmax
        self.sq.rangestat_arg = INT8_RANGE_MARGIN
        self.trained = kind == "float16"
        if params is not None and params.size and codes is not None and len(codes):  # (no rows: learnt again)
            faiss.copy_array_to_vector(np.ascontiguousarray(params, dtype=np.float32), self.sq.trained)
            self.trained = True
        self.code_size = int(self.sq.code_size)
        assert self.code_size == compact_code_bytes(kind, self.dim)
        self.rows = RowStore((self.code_size,), np.uint8, codes)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def params(self) -> np.ndarray:
        """The quantizer's trained vector, float32 ``[COMPACT_PARAMS[kind] * D]`` (zeros while
        the int8 range is unlearnt, i.e. before any row was added)."""
        import faiss

        if not self.trained:
            return np.zeros(COMPACT_PARAMS[self.kind] * self.dim, np.float32)
        return faiss.vector_to_array(self.sq.trained).astype(np.float32)

    def error_bound(self) -> np.ndarray:
        """Per-dimension bound on ``|decoded - original|`` for values inside the trained range
        (int8 / int6: half a step); float16: relative, ``2**-11`` of the value."""
        if self.kind == "float16":
            return np.full(self.dim, 2.0**-11, dtype=np.float32)
        vdiff = self.params[self.dim :]
        return (vdiff / (2 ** COMPACT_BITS[self.kind] - 1) / 2).astype(np.float32)

    def covers(self, x: np.ndarray) -> bool:
        """Whether every value of ``x [n, D]`` lies in the trained range (float16: always), so
        that it is encoded within :meth:`error_bound`."""
        if self.kind == "float16":
            return True
        if not self.trained:
            return len(x) == 0
        p = self.params
        lo, width = p[: self.dim], p[self.dim :]
        return bool(((x >= lo) & (x <= lo + width)).all())

    def cover(self, extent: np.ndarray, stored: np.ndarray) -> None:
        """Make the range cover ``extent`` (rows: their per-dimension min and max count) if it
        does not: it becomes the min / max over ``extent`` and ``stored`` (the float rows the
        codes were made from, aligned with them; they are re-encoded on the new range).

        A range learnt from the first rows alone would clip later rows outside it (an ``ip``
        index's norms vary), and a clipped row's compact score can be off by far more than the
        exact rescoring of the best 3k absorbs."""
        if self.covers(extent):
            return
        lo, hi = extent.min(axis=0), extent.max(axis=0)
        for start in range(0, len(stored), _EXTENT_ROWS):
            block = np.asarray(stored[start : start + _EXTENT_ROWS], dtype=np.float32)
            lo, hi = np.minimum(lo, block.min(axis=0)), np.maximum(hi, block.max(axis=0))
        self.sq.train(np.ascontiguousarray(np.stack([lo, hi]), dtype=np.float32))  # RS_minmax: + the margin
        self.trained = True
        if len(self.rows):
            rows = RowStore((self.code_size,), np.uint8)
            rows.reserve(self.rows.capacity)
            for start in range(0, len(stored), _EXTENT_ROWS):
                block = np.ascontiguousarray(stored[start : start + _EXTENT_ROWS], dtype=np.float32)
                rows.append(self.sq.compute_codes(block))
            self.rows = rows

    def append(self, x: np.ndarray, stored: np.ndarray) -> None:
        """Encode and append float32 rows ``x``; ``stored``: the float rows of the codes so far
        (re-encoded if ``x`` widens the range, see :meth:`cover`)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.cover(x, stored)
        for lo in range(0, x.shape[0], _ENCODE_ROWS):
            self.rows.append(self.sq.compute_codes(x[lo : lo + _ENCODE_ROWS]))

    def keep(self, mask: np.ndarray) -> None:
        self.rows.keep(mask)

    def reserve(self, n: int) -> None:
        self.rows.reserve(n)

    def decode(self, positions: np.ndarray) -> np.ndarray:
        """float32 ``[len(positions), D]``: the decoded rows."""
        codes = np.ascontiguousarray(self.rows.take(positions))
        return self.sq.decode(codes) if len(codes) else np.empty((0, self.dim), np.float32)

    def _scanner(self, metric: str):
        """FAISS's inverted-list scanner of this quantizer: it scores codes against a query in
        C++ (SIMD for int8 / int6) straight from the packed bytes, keeping the best ``k`` in a heap."""
        import faiss

        mt = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        return self.sq.select_InvertedListScanner(mt, None, False, None, False)

    def _codes(self, positions: np.ndarray) -> np.ndarray:
        """The packed codes of ``positions int64 [n]`` (all >= 0), contiguous for the scanner."""
        return np.ascontiguousarray(self.rows.take(positions))

    @staticmethod
    def _scan(scanner, query: np.ndarray, codes: np.ndarray, k: int, worst: float):
        """The best ``k`` of ``codes uint8 [n, code_size]`` (:meth:`_codes`) for one ``query
        float32 [D]``: ``(slots int64 [k], scores float32 [k])``, slots into ``codes`` (-1 padded,
        scored ``worst``), in heap order (unsorted)."""
        import faiss

        slots = np.arange(len(codes), dtype=np.int64)
        scores, found = np.full(k, worst, dtype=np.float32), np.full(k, -1, dtype=np.int64)
        scanner.set_query(faiss.swig_ptr(query))
        scanner.set_list(0, 0.0)
        scanner.scan_codes(len(codes), faiss.swig_ptr(codes), faiss.swig_ptr(slots), faiss.swig_ptr(scores),
                           faiss.swig_ptr(found), k)  # fmt: skip
        return found, scores

    def scores(self, queries: np.ndarray, lims: np.ndarray, positions: np.ndarray, metric: str) -> np.ndarray:
        """``float32 [M]``: query ``i`` against its CSR candidates ``positions[lims[i] : lims[i +
        1]]`` (all >= 0), scored on their codes (no decoded copy): by the library's kernel for
        int8 / int6 where it is built (all queries in one call), else by FAISS's scanner."""
        codes = self.rows.array
        if compact_scan.available(self.kind) and codes.flags.c_contiguous:
            return compact_scan.scores(queries, self.params, codes, self.kind, metric, lims, positions)
        out = np.empty(len(positions), dtype=np.float32)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scanner = self._scanner(metric) if len(positions) else None
        for i in range(len(lims) - 1):
            lo, hi = int(lims[i]), int(lims[i + 1])
            if hi > lo:
                slots, found = self._scan(scanner, q[i], self._codes(positions[lo:hi]), hi - lo, _worst(metric))
                out[lo + slots] = found
        return out

    def score(self, queries: np.ndarray, positions: np.ndarray, metric: str) -> np.ndarray:
        """``float32 [nq, w]``: query i against the rows ``positions[i]`` (-1 pads score -inf,
        +inf for l2), scored on their codes (:meth:`scores`)."""
        valid = positions >= 0
        out = np.full(positions.shape, _worst(metric), dtype=np.float32)
        lims = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int64)
        out[valid] = self.scores(queries, lims, positions[valid], metric)
        return out

    def top(self, queries: np.ndarray, lims: np.ndarray, positions: np.ndarray, k: int, metric: str,
            distinct: bool = False):  # fmt: skip
        """The best ``k`` of each query's CSR candidates (``lims int64 [nq + 1]``, ``positions
        int64 [M]``, all >= 0), scored on their codes (:meth:`scores`): see :func:`select_top`."""
        found = self.scores(queries, lims, positions, metric) if k else np.empty(len(positions), np.float32)
        return select_top(found, lims, positions, k, metric, distinct)

    @property
    def held_bytes(self) -> int:
        return self.rows.held_bytes + 4 * int(self.sq.trained.size())


def select_top(scores: np.ndarray, lims: np.ndarray, positions: np.ndarray, k: int, metric: str,
               distinct: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The best ``k`` of each query's CSR candidates, given their ``scores float32 [M]`` (higher
    is better, lower for ``l2``): ``(slots int64 [nq, w], scores float32 [nq, w])``, slots into
    ``positions`` (-1 padded, scored -inf / +inf for l2), best first, equal scores by position.
    Sorts only the ones kept (a search keeps 3k of hundreds), all queries at once.

    ``w`` is ``k``; with ``distinct``, a row whose score repeats one already kept (an item
    stored twice) does not count toward ``k``: a query keeps rows until it has ``k`` distinct
    scores (or none are left), and ``w`` is the most any query kept. Without it, ``k`` copies of
    a near-best row could take every slot the exact rescoring reads and hide the true best."""
    nq, worst = len(lims) - 1, _worst(metric)
    counts = np.diff(lims).astype(np.int64)
    width = int(counts.max()) if nq else 0
    m = min(k, width)
    signed = np.asarray(scores if metric == "l2" else -scores, dtype=np.float32)  # smaller is better
    if nq and (counts == width).all():
        key = signed.reshape(nq, width)
    else:  # padding last
        key = np.full((nq, width), np.inf, dtype=np.float32)
        key.reshape(-1)[np.arange(len(scores)) + np.repeat(np.arange(nq) * width - lims[:-1], counts)] = signed
    cols = np.argpartition(key, m - 1, axis=1)[:, :m] if 0 < m < width else np.tile(np.arange(m), (nq, 1))
    slot = lims[:-1, None] + cols
    valid = cols < counts[:, None]
    kept = np.take_along_axis(key, cols, 1)
    order = np.lexsort((np.where(valid, positions[np.where(valid, slot, 0)], 0), kept))
    kept, slot, valid = (np.take_along_axis(a, order, 1) for a in (kept, slot, valid))
    out_slots = np.full((nq, k), -1, np.int64)
    out_key = np.full((nq, k), np.inf, np.float32)
    out_slots[:, :m] = np.where(valid, slot, -1)
    out_key[:, :m] = np.where(valid, kept, np.inf)
    if distinct and 0 < m < width:
        with np.errstate(invalid="ignore"):  # inf - inf where a row has fewer than m (not looked at)
            repeats = 1 + np.count_nonzero(np.diff(out_key[:, :m], axis=1), axis=1) < k
        grown = {}
        for i in np.flatnonzero((counts > m) & repeats).tolist():  # keep more of this query's rows
            lo, hi = int(lims[i]), int(lims[i + 1])
            own = key[i, : hi - lo]
            o = np.lexsort((positions[lo:hi], own))
            seen = 1 + np.concatenate([[0], np.cumsum(np.diff(own[o]) != 0)])  # distinct scores so far
            n = int(np.searchsorted(seen, k)) + 1 if seen[-1] >= k else hi - lo
            grown[i] = (lo + o[:n], own[o[:n]])
        w = max([k, *(len(sl) for sl, _ in grown.values())])
        if w > k:
            out_slots = np.concatenate([out_slots, np.full((nq, w - k), -1, np.int64)], axis=1)
            out_key = np.concatenate([out_key, np.full((nq, w - k), np.inf, np.float32)], axis=1)
        for i, (sl, ke) in grown.items():
            out_slots[i, : len(sl)], out_key[i, : len(sl)] = sl, ke
    out_scores = out_key if metric == "l2" else -out_key
    out_scores[out_slots < 0] = worst
    return out_slots, out_scores


def advise(array: np.ndarray, advice: str) -> None:
    """``madvise`` the memory map under ``array`` (no-op for in-memory arrays or where the
    platform lacks it): ``"dontneed"`` drops the mapping's pages from the resident set (they
    stay in the page cache), after a one-pass scan; ``"random"`` turns readahead off (it does
    not stop Linux's fault-around, which maps ~16 neighbouring pages per touched row: hence
    :class:`FileRows` for the rows a search rescores)."""
    import mmap

    m = getattr(array, "_mmap", None)
    if m is None:
        base = getattr(array, "base", None)
        m = getattr(base, "_mmap", None)
    flag = {"random": "MADV_RANDOM", "dontneed": "MADV_DONTNEED"}[advice]
    if m is None or not hasattr(mmap, flag) or not hasattr(m, "madvise"):
        return
    try:
        m.madvise(getattr(mmap, flag))
    except (OSError, ValueError):
        pass


def _load_file_rows() -> ctypes.CDLL | None:
    lib = native.load(Path(__file__).parent, "_file_rows")
    if lib is not None:
        i = ctypes.c_int64
        lib.hx_pread_rows.argtypes = [ctypes.c_int, i, i, ctypes.c_void_p, i, ctypes.c_void_p]
        lib.hx_pread_rows.restype = i
    return lib


_FILE_ROWS = _load_file_rows()


class FileRows:
    """Rows of a memory-mapped ``.npy`` store read with ``os.pread`` (a duplicate of the file's
    descriptor): the few rows a search rescores come through the page cache without being
    mapped into the process (a mapped read maps ~16 neighbouring pages per row: Linux fault-
    around ignores MADV_RANDOM), so the float store on disk adds nothing to the resident set."""

    def __init__(self, fileno: int, offset: int, shape: tuple[int, int], dtype: np.dtype):
        self._fd = os.dup(fileno)
        self.offset, self.shape, self.dtype = int(offset), tuple(shape), np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.dtype.itemsize

    @classmethod
    def of(cls, mapped: np.memmap, file) -> "FileRows":
        """The rows of ``mapped`` (a 2-d ``np.memmap`` of the open ``.npy`` ``file``), by pread."""
        return cls(file.fileno(), mapped.offset, mapped.shape, mapped.dtype)

    def __del__(self):
        try:
            os.close(self._fd)
        except (OSError, AttributeError, TypeError):
            pass

    def fileno(self) -> int:
        """The descriptor the rows are read from (this object's own duplicate)."""
        return self._fd

    def take(self, positions: np.ndarray) -> np.ndarray:
        """float32 ``[len(positions), D]`` (positions >= 0) for float rows, else the rows as stored."""
        positions = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
        if _FILE_ROWS is not None:  # the loop of preads in C (file_rows.c)
            out = np.empty((len(positions), self.shape[1]), dtype=self.dtype)
            done = _FILE_ROWS.hx_pread_rows(self._fd, self.offset, self.row_bytes, positions.ctypes.data,
                                            len(positions), out.ctypes.data)  # fmt: skip
            if done < 0:
                raise OSError(-1 - done, f"reading rows of a {self.shape[0]:,}-row index file: {os.strerror(-1 - done)}")
            if done < len(positions):
                self._truncated(int(positions[done]))
            return out.astype(np.float32, copy=False) if out.dtype.kind == "f" else out
        size, read, fd = self.row_bytes, os.pread, self._fd
        # one pread per row, joined once: ~1.2 us a row, against ~1.7 for a preadv into each
        # output row (the Python around each call is most of it)
        chunks = [read(fd, size, offset) for offset in (self.offset + positions * size).tolist()]
        data = bytearray().join(chunks)
        if len(data) != size * len(chunks):
            self._truncated(next(int(positions[i]) for i, chunk in enumerate(chunks) if len(chunk) != size))
        if not chunks:
            out = np.empty((0, self.shape[1]), dtype=self.dtype)
        else:
            out = np.frombuffer(data, dtype=self.dtype).reshape(len(chunks), self.shape[1])
        return out.astype(np.float32, copy=False) if out.dtype.kind == "f" else out

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        """``rows[positions]``, as on the mapped array (a 1-d array of positions >= 0)."""
        return self.take(positions)

    def _truncated(self, position: int) -> None:
        raise IndexFormatError(f"row {position} of a {self.shape[0]:,}-row index file could not be read whole: "
                               "the file was truncated after the index was loaded")  # fmt: skip
