"""How fast the rows a search touches are gathered: numpy fancy indexing against ``np.take``, and
``FileRows`` (a loaded index's rescored float rows and results' codes) by ``pread`` + one join
against a ``preadv`` into each output row (its code before 2026-12-04, fifth stop).

A partitioned search gathers each query's few hundred candidates from the int6 rerank store
(96-byte rows at 128-d), scattered over the whole store, then reads ~30 float rows and 10 codes
of a loaded index from its files. One thread; every variant timed round-robin, best of
``--rounds``; ns per row.

    OMP_NUM_THREADS=1 python benchmarks/row_gather.py --n 1000000 --name row_gather

``--index DIR --queries Q.npy --truth T.npy [--nprobe P --candidates C]``: instead, the whole
``search(q, k=10)`` of a saved index with the library's gathers against the earlier ones (fancy
indexing in ``RowStore.take``, ``preadv`` rows in ``FileRows.take``), swapped in turn in one
process, round-robin; the answers must agree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from hashindex import HashIndex  # noqa: E402
from hashindex.core.errors import IndexFormatError  # noqa: E402
from hashindex.evaluation.exact import recall_at_k_vs_exact  # noqa: E402
from hashindex.serving.store import FileRows, RowStore  # noqa: E402

from benchlib.measure import machine_info, round_robin, write_record  # noqa: E402


# -- the earlier code, for comparison --------------------------------------------------------------
def fancy_take(store: RowStore, positions: np.ndarray) -> np.ndarray:
    return store.array[positions]


def preadv_take(rows: FileRows, positions: np.ndarray) -> np.ndarray:
    out = np.empty((len(positions), rows.shape[1]), dtype=rows.dtype)
    size, flat = rows.row_bytes, out.view(np.uint8).reshape(-1)
    for i, p in enumerate(np.asarray(positions, dtype=np.int64).tolist()):
        if os.preadv(rows.fileno(), [flat[i * size : (i + 1) * size]], rows.offset + p * size) != size:
            raise IndexFormatError(f"row {p} could not be read whole")
    return out.astype(np.float32, copy=False) if out.dtype.kind == "f" else out


EARLIER = {(RowStore, "take"): fancy_take, (FileRows, "take"): preadv_take}


@contextlib.contextmanager
def earlier_gathers(on: bool):
    saved = {key: getattr(*key) for key in EARLIER}
    try:
        if on:
            for (owner, name), fn in EARLIER.items():
                setattr(owner, name, fn)
        yield
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)


# -- the two measurements ----------------------------------------------------------------------------
def micro(args) -> dict:
    rng = np.random.default_rng(0)
    int6 = rng.integers(0, 256, size=(args.n, args.dim * 6 // 8), dtype=np.uint8)
    floats = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    gather = rng.integers(0, args.n, size=(args.nq, args.per_query))
    reads = rng.integers(0, args.n, size=(args.nq, args.file_rows))
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "f.npy", floats)
        mapped = np.load(Path(tmp) / "f.npy", mmap_mode="r")
        with open(Path(tmp) / "f.npy", "rb") as f:
            rows = FileRows.of(mapped, f)
        for q in reads:  # the file's pages into the page cache, as on a warm server
            rows.take(q)

        def per_query(fn, positions):
            return lambda: [fn(p) for p in positions]

        runs = {
            "int6 rows, fancy indexing": per_query(lambda p: int6[p], gather),
            "int6 rows, np.take": per_query(lambda p: np.take(int6, p, axis=0), gather),
            "float rows, fancy indexing": per_query(lambda p: floats[p], gather),
            "float rows, np.take": per_query(lambda p: np.take(floats, p, axis=0), gather),
            "float rows from the file, preadv into each row (before)": per_query(lambda p: preadv_take(rows, p), reads),
            "float rows from the file, FileRows.take": per_query(rows.take, reads),
        }
        best = round_robin(runs, args.rounds)
    table = {name: 1e9 * best[name] / (reads.size if "file" in name else gather.size) for name in runs}
    # the coarse lists' final sort: the nprobe kept of nlist centroid scores per query
    kept = rng.standard_normal((args.nq, args.nprobe or 512)).astype(np.float32)
    sorts = round_robin({kind: (lambda kind=kind: np.argsort(kept, axis=1, kind=kind)) for kind in ("stable", "quicksort")},
                        args.rounds)  # fmt: skip
    sort_us = {f"sort of {kept.shape[1]} coarse scores, {kind}": 1e6 * t / args.nq for kind, t in sorts.items()}
    print(f"{args.n:,} rows, {args.nq} queries x {args.per_query} gathered / {args.file_rows} read, one thread, "
          f"best of {args.rounds} round-robin")  # fmt: skip
    for name, ns in table.items():
        print(f"  {name:58s} {ns:8.1f} ns / row")
    for name, us in sort_us.items():
        print(f"  {name:58s} {us:8.1f} us / query")
    return {"ns_per_row": table, "us_per_query": sort_us}


def whole_search(args) -> dict:
    index = HashIndex.load(args.index)
    q, truth = np.load(args.queries), np.load(args.truth)
    kw = {} if args.candidates is None else {"candidates": args.candidates, "nprobe": args.nprobe}
    answers = {}
    for earlier in (False, True):
        with earlier_gathers(earlier):
            answers[earlier] = index.search(q, k=10, **kw).ids
    agree = float((answers[False] == answers[True]).mean())
    if agree < 0.999:
        raise SystemExit(f"the two variants disagree on {1 - agree:.2%} of the results")

    def run(earlier):
        def go():
            with earlier_gathers(earlier):
                index.search(q, k=10, **kw)
        return go

    best = round_robin({"earlier gathers": run(True), "np.take, pread + join": run(False)}, args.rounds)
    ms = {name: 1e3 * t / len(q) for name, t in best.items()}
    out = {
        "ms_per_query": ms,
        "speed_up": best["earlier gathers"] / best["np.take, pread + join"],
        "recall_at_1": recall_at_k_vs_exact(answers[False], truth, 1),
        "recall_at_10": recall_at_k_vs_exact(answers[False], truth, 10),
        "answers_agree": agree,
    }
    print(f"{args.index}: {len(index):,} items, {len(q)} queries, one thread, best of {args.rounds} round-robin")
    for name, v in ms.items():
        print(f"  {name:45s} {v:.3f} ms / query")
    print(f"  speed-up {out['speed_up']:.3f}x; recall@1 {out['recall_at_1']:.3f}, recall@10 {out['recall_at_10']:.3f}")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="rows in each store")
    p.add_argument("--nq", type=int, default=300, help="queries")
    p.add_argument("--per-query", type=int, default=423, help="rows gathered per query (the 1M default's candidates)")
    p.add_argument("--file-rows", type=int, default=30, help="float rows read per query from the file")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--index", help="a saved index: time its whole search instead (with --queries, --truth)")
    p.add_argument("--queries", help="float32 [nq, D] .npy")
    p.add_argument("--truth", help="int64 [nq, >= 10] .npy: the queries' exact top-10")
    p.add_argument("--nprobe", type=int)
    p.add_argument("--candidates", type=int, help="with --nprobe: this point instead of the index's own")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", default="row_gather")
    args = p.parse_args(argv)
    result = whole_search(args) if args.index else micro(args)
    record = {
        "command": shlex.join(["python", "benchmarks/row_gather.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info([1]),
        "config": vars(args),
        **result,
    }
    write_record(record, args.out_dir, args.name)
    return record


if __name__ == "__main__":
    main()
