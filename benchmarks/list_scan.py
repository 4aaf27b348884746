"""The partition stage's list scan: our kernel (hashindex/serving/candidates/fastscan.c) on the
stage's six-bit lists (AVX-512 VBMI) and on FAISS's lists, against FAISS's
``search_preassigned`` on FAISS's lists, the same codes, in one process.

Three measurements, each timed round-robin (best of ``--rounds``), one thread:

1. ``search(q, k=10)`` with no arguments, with each scan (``six-bit`` where this CPU builds
   six-bit lists; ``ours``: our kernel on FAISS's lists; ``faiss``: ``fastscan.disabled()``),
   with recall@1 and recall@10 against the exact top 10;
2. the same at the nprobe it serves with other candidate counts (``--candidates``): FAISS's scan
   collects ~1.7x the candidates when items sit in two lists (ours, told each entry's other
   list, collects the candidates themselves), and its collection grows with them;
3. our scan's tables rounded to ``0 .. top`` for each ``--table-top`` (``fastscan.TABLE_TOP``;
   255 is FAISS's rounding): recall@1, recall@10 and time of the served search.

On a saved index with its probes and their exact top 10 (``benchmarks/ten_million.py gen`` /
``build`` make these at 10M):

    OMP_NUM_THREADS=1 python benchmarks/list_scan.py --index DIR --queries Q.npy --truth T.npy --name list_scan_10M

or on a gallery it generates and indexes itself (the PLDA generator of benchlib, ``--seed``):

    OMP_NUM_THREADS=1 python benchmarks/list_scan.py --n 1000000 --seed 12 --name list_scan_1M
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from hashindex import HashIndex  # noqa: E402
from hashindex.evaluation.exact import recall_at_k_vs_exact  # noqa: E402
from hashindex.serving.candidates import fastscan  # noqa: E402

from benchlib.measure import machine_info, round_robin, write_record  # noqa: E402
from benchlib.sources import gallery_in_memory  # noqa: E402


def _scanners(index: HashIndex, load, q: np.ndarray) -> dict:
    """name -> (an index, a context in which its searches use that scan): the index as served
    (six-bit lists where this CPU builds them), and, on such a CPU, a second copy (``load()``)
    whose lists were built under an AVX-512BW cap, so FAISS's lists of the same codes, scanned by
    our kernel and, under ``fastscan.disabled()``, by FAISS's."""
    if fastscan.isa() < fastscan.AVX512_VBMI:
        return {"ours": (index, contextlib.nullcontext), "faiss": (index, fastscan.disabled)}
    with fastscan.isa_cap(fastscan.AVX512):
        faiss_lists = load()
        faiss_lists.search(q[:1], k=10, nprobe=1, candidates=10)  # builds FAISS's lists
    return {
        "six-bit": (index, contextlib.nullcontext),
        "ours": (faiss_lists, contextlib.nullcontext),
        "faiss": (faiss_lists, fastscan.disabled),
    }


@contextlib.contextmanager
def _table_top(top: int):
    default, fastscan.TABLE_TOP = fastscan.TABLE_TOP, top
    try:
        yield
    finally:
        fastscan.TABLE_TOP = default


def _variants(q: np.ndarray, truth: np.ndarray, within: dict, rounds: int, **point) -> dict:
    """``index.search(q, k=10, **point)`` inside ``context()`` for each ``within[name] = (index,
    context)``, timed round-robin: per name, its answers (ids), ms per query, recall@1 and
    recall@10."""
    def run(name):
        index, context = within[name]

        def go():
            with context():
                return index.search(q, k=10, **point).ids
        return go

    answers = {name: run(name)() for name in within}
    best = round_robin({name: run(name) for name in within}, rounds)
    return {
        name: {
            "ids": answers[name],
            "ms_per_query": 1e3 * best[name] / len(q),
            "recall_at_1": recall_at_k_vs_exact(answers[name], truth, 1),
            "recall_at_10": recall_at_k_vs_exact(answers[name], truth, 10),
        }
        for name in within
    }


def whole_search(q: np.ndarray, truth: np.ndarray, rounds: int, label: str, scanners: dict, **point) -> dict:
    """``search(q, k=10, **point)`` with each scan (:func:`_scanners`), round-robin; speed-ups over
    FAISS's scan."""
    v = _variants(q, truth, scanners, rounds, **point)
    out = {
        "point": point,
        **{key: {name: v[name][key] for name in v} for key in ("ms_per_query", "recall_at_1", "recall_at_10")},
        "speed_up": {name: v["faiss"]["ms_per_query"] / v[name]["ms_per_query"] for name in v},
        "same_top10": {name: float((v[name]["ids"] == v["faiss"]["ids"]).mean()) for name in v},
    }
    parts = [f"{name} {v[name]['ms_per_query']:.3f} ms ({out['speed_up'][name]:.2f}x, R@1 {v[name]['recall_at_1']:.3f}, "
             f"R@10 {v[name]['recall_at_10']:.3f})" for name in v]  # fmt: skip
    print(f"  {label:28s} " + "; ".join(parts))
    return out


def table_tops(index: HashIndex, q: np.ndarray, truth: np.ndarray, tops: list[int], rounds: int) -> dict:
    """The served search with our scan's tables rounded to each ``0 .. top``, round-robin."""
    v = _variants(q, truth, {top: (index, lambda top=top: _table_top(top)) for top in tops}, rounds)
    out = {top: {key: v[top][key] for key in ("ms_per_query", "recall_at_1", "recall_at_10")} for top in tops}
    for top, r in out.items():
        print(f"  tables 0 .. {top:3d} ({255 // top} lookups a byte): {r['ms_per_query']:.3f} ms / query, "
              f"recall@1 {r['recall_at_1']:.3f}, recall@10 {r['recall_at_10']:.4f}")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", help="a saved index (with --queries, --truth)")
    p.add_argument("--queries", help="float32 [nq, D] .npy")
    p.add_argument("--truth", help="int64 [nq, >= 10] .npy: the queries' exact top-10 ids")
    p.add_argument("--n", type=int, default=1_000_000, help="without --index: gallery size to generate")
    p.add_argument("--seed", type=int, default=12, help="without --index: the generator's seed")
    p.add_argument("--probes", type=int, default=300, help="without --index: probes to generate")
    p.add_argument("--candidates", type=int, nargs="+", default=[100, 500, 1000, 2000],
                   help="candidate counts to time at the served nprobe")  # fmt: skip
    p.add_argument("--table-top", type=int, nargs="+", default=[255, 127, 63, 31, 15],
                   help="table roundings to compare (sums of 255 // top lookups share a byte)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", default="list_scan")
    args = p.parse_args(argv)
    if not fastscan.available():
        raise SystemExit("the fast-scan kernel is not built here (pip install -e . with a C compiler, x86-64 AVX2)")
    scratch = tempfile.TemporaryDirectory()
    if args.index:
        index, q, truth = HashIndex.load(args.index), np.load(args.queries), np.load(args.truth)
        source, saved = {"index": args.index}, args.index
    else:
        g = gallery_in_memory(args.n, args.seed, args.probes, 10)
        t0 = time.perf_counter()
        index = HashIndex(g.x.shape[1])
        index.add(g.x)
        q, truth = g.q, g.truth
        source = {"generated": {"n": args.n, "seed": args.seed}, "add_s": time.perf_counter() - t0}
        saved = None
    index.search(q[:5], k=10)  # builds the lists and tunes, if the index has not yet
    if saved is None:  # the copy with FAISS's lists loads what was tuned here
        saved = str(Path(scratch.name) / "index")
        index.save(saved)
    point = index.operating_point(k=10)
    if point is None or point.nprobe is None:
        raise SystemExit("the index serves no partitioned point: nothing to compare")
    nprobe, nlist = point.nprobe, index.partition_info().lists
    kernel = {fastscan.AVX512_VBMI: "AVX-512 VBMI", fastscan.AVX512: "AVX-512BW", fastscan.AVX2: "AVX2"}[fastscan.isa()]
    print(f"{len(index):,} items, {len(q)} queries, {nlist} lists, nprobe {nprobe}, {point.candidates} candidates; "
          f"kernel {kernel}; one thread, best of {args.rounds} round-robin")  # fmt: skip
    scanners = _scanners(index, lambda: HashIndex.load(saved), q)
    served = {"nprobe": nprobe, "candidates": point.candidates}  # the copy may hold no point: tell both
    record = {
        "command": shlex.join(["python", "benchmarks/list_scan.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info([1]),
        "config": vars(args),
        "source": source,
        "nprobe": nprobe,
        "candidates": point.candidates,
        "nlist": nlist,
        "isa": fastscan.isa(),
        "search": whole_search(q, truth, args.rounds, "search(q, k=10)", scanners, **served),
        "by_candidates": {
            c: whole_search(q, truth, args.rounds, f"nprobe {nprobe}, {c} candidates", scanners, nprobe=nprobe,
                            candidates=c)  # fmt: skip
            for c in args.candidates
        },
        # six-bit lists take tables whose four lookups add in a byte: 0 .. 63 at most
        "by_table_top": table_tops(index, q, truth, [t for t in args.table_top if t <= 63 or "six-bit" not in scanners],
                                   args.rounds),  # fmt: skip
    }
    write_record(record, args.out_dir, args.name)
    scratch.cleanup()
    return record


if __name__ == "__main__":
    main()
