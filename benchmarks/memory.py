"""Memory per item and the compact rerank store's recall cost, on a 1M face-like gallery.

    python benchmarks/memory.py build  --n 1000000 --out /tmp/mem      # float32, int8, int6 indexes, recall, build times
    python benchmarks/memory.py serve  --index /tmp/mem/int6           # fresh process: load + search, RSS vs memory_usage()

``build``: SyntheticGallery(n / 4 identities, 4 each, seed 4242) as a memory-mapped ``.npy``
(``--cache``), the default hasher (residual ITQ, 192 bits at 128-d) fitted once, then the same items added (chunked, from the
memory map) to ``HashIndex(rerank="float32")``, ``"int8"`` and ``"int6"`` (the default) with the
default partition stage (spill 2). Settings (flat asymmetric c, partitioned nprobe x c) are chosen on
probe seed 1 (the cheapest reaching recall@1 >= 0.99 with float32 rerank) and reported on probe
seed 2, for every store, with recall@1 / recall@10 against exact float search. Both indexes are
saved under ``--out``.

``serve`` runs in a fresh process (call it once per index): VmRSS before the load (after a
4k-item index of the same kind was built, searched and dropped, so that the runtime's fixed
buffers are in the baseline) and after load
+ ``--searches`` batches of the queries (default search, and ``--nprobe`` > 0: that partitioned point), then after
``malloc_trim(0)`` (glibc keeps freed search temporaries otherwise: both are printed), against the
sum of ``memory_usage()``; prints bytes per item by component and the agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hashindex import HashIndex  # noqa: E402

K = 10


def vmrss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def gallery(n: int, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items [n, 128] memory-mapped, probes seed 1, probes seed 2), unit rows, cached."""
    cache.mkdir(parents=True, exist_ok=True)
    xp, q1p, q2p = cache / f"x{n}.npy", cache / f"q1_{n}.npy", cache / f"q2_{n}.npy"
    if not xp.exists():
        from hashindex.evaluation.exact import unit_rows
        from hashindex.training.data.synthetic import SyntheticGallery

        g = SyntheticGallery(n // 4, 4, seed=4242)
        np.save(xp, unit_rows(g.materialize()[0]).astype(np.float32))
        np.save(q1p, unit_rows(g.probes(1000, seed=1)[0]).astype(np.float32))
        np.save(q2p, unit_rows(g.probes(1000, seed=2)[0]).astype(np.float32))
    return np.load(xp, mmap_mode="r"), np.load(q1p), np.load(q2p)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    heap = faiss.ResultHeap(q.shape[0], k, keep_max=True)
    for lo in range(0, x.shape[0], 1 << 18):
        d, i = faiss.knn(q, np.ascontiguousarray(x[lo : lo + (1 << 18)]), k, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, np.where(i >= 0, i + lo, -1))
    heap.finalize()
    return heap.I


def recalls(ids: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    r1 = float(np.mean(ids[:, 0] == truth[:, 0]))
    r10 = float(np.mean([len(set(a[:K]) & set(b[:K])) / K for a, b in zip(ids, truth)]))
    return r1, r10


def build(args) -> None:
    faiss.omp_set_num_threads(1)
    x, q1, q2 = gallery(args.n, args.cache)
    truth = {1: exact_topk(x, q1), 2: exact_topk(x, q2)}
    out = {"n": args.n, "builds": {}, "select_seed1": {}, "report_seed2": {}}
    hasher = None
    indexes = {}
    for kind in ("float32", "int8", "int6"):
        t0 = time.perf_counter()
        index = HashIndex(x.shape[1], hasher, rerank=kind)  # the default hasher, fitted once, shared
        index.add(x, progress=False)
        t1 = time.perf_counter()
        index.search(q1[:2], K, nprobe=1)  # builds the partition stage (k-means, assignment, lists)
        t2 = time.perf_counter()
        hasher = index.hasher
        out["builds"][kind] = {"add_s": t1 - t0, "partitions_s": t2 - t1, "memory_usage": index.memory_usage()}
        print(f"{kind}: add {t1 - t0:.0f} s (hasher fit included for the first), partitions {t2 - t1:.0f} s", flush=True)
        index.save(args.out / kind)
        indexes[kind] = index
    settings = [("flat", None, c) for c in (200, 500, 1000)] + [
        ("part", p, c) for p in (64, 128, 192, 256) for c in (200, 500)
    ]
    for seed, q, key in ((1, q1, "select_seed1"), (2, q2, "report_seed2")):
        for mode, nprobe, c in settings:
            name = f"{mode} nprobe={nprobe} c={c}" if nprobe else f"{mode} c={c}"
            row = {}
            for kind, index in indexes.items():
                kw = {"ranking": "asymmetric", "candidates": c} if nprobe is None else {"nprobe": nprobe, "candidates": c}
                t = time.perf_counter()
                res = index.search(q, K, **kw)
                dt = time.perf_counter() - t
                row[kind] = dict(zip(("recall_at_1", "recall_at_10"), recalls(res.ids, truth[seed])), qps=len(q) / dt,
                                 exact_scores=bool(res.exact_scores))
            out[key][name] = row
            print(f"seed {seed} {name}: " + ", ".join(
                f"{k} r@1 {v['recall_at_1']:.3f} r@10 {v['recall_at_10']:.3f} {v['qps']:.0f} q/s" for k, v in row.items()
            ), flush=True)
    (args.out / "build.json").write_text(json.dumps(out, indent=1))


def serve(args) -> None:
    faiss.omp_set_num_threads(1)
    q = np.load(args.queries)
    # the runtime's fixed cost (BLAS / OpenMP buffers, FAISS's first-use tables) is paid by a
    # small index of the same kind, searched and dropped before the baseline
    import ctypes
    import gc

    rng = np.random.default_rng(0)
    tiny_x = rng.standard_normal((4096, q.shape[1])).astype(np.float32)
    extra = {} if args.warm_rerank == "float32" else {"rerank": args.warm_rerank}  # main had no rerank=
    tiny = HashIndex(q.shape[1], partitions=64, **extra)
    tiny.add(tiny_x)
    tiny.search(q, K)
    tiny.search(q, K, nprobe=8, candidates=args.candidates)
    del tiny, tiny_x
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = vmrss()
    t = time.perf_counter()
    index = HashIndex.load(args.index, mmap=True)
    load_s = time.perf_counter() - t
    after_load = vmrss()
    for _ in range(args.searches):
        index.search(q, K)  # the default (flat asymmetric, or the tuned point)
        if args.nprobe:
            index.search(q, K, nprobe=args.nprobe, candidates=args.candidates)
    after = vmrss()
    # freed search / load temporaries stay in glibc's heap until trimmed: measured both ways
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = vmrss()
    usage = index.memory_usage()
    total = sum(usage.values())
    n = len(index)
    rss = trimmed - before
    report = {
        "index": str(args.index), "n": n, "load_s": load_s, "rss_delta_load": after_load - before,
        "rss_delta_untrimmed": after - before, "rss_delta": rss,
        "memory_usage": usage, "memory_usage_total": total, "agreement": total / rss if rss else None,
        "bytes_per_item": {k: v / n for k, v in usage.items()},
    }
    print(json.dumps(report, indent=1))
    print(f"resident delta {rss / n:.1f} B/item after malloc_trim ({(after - before) / n:.1f} before it), "
          f"memory_usage() total {total / n:.1f} B/item ({100 * (total / rss - 1):+.1f}%)")
    if args.save:  # keeps the operating point the first default search tuned, for later runs
        index.save(args.index)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--n", type=int, default=1_000_000)
    b.add_argument("--cache", type=Path, default=Path("/tmp/hashindex-memory-cache"))
    b.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("serve")
    s.add_argument("--index", type=Path, required=True)
    s.add_argument("--queries", type=Path, default=Path("/tmp/hashindex-memory-cache/q2_1000000.npy"))
    s.add_argument("--searches", type=int, default=2)
    s.add_argument("--nprobe", type=int, default=128)
    s.add_argument("--candidates", type=int, default=500)
    s.add_argument("--warm-rerank", default="int6", help="rerank store of the warm-up index")
    s.add_argument("--save", action="store_true", help="save the index back afterwards (with the tuned point)")
    args = ap.parse_args()
    (build if args.cmd == "build" else serve)(args)


if __name__ == "__main__":
    main()
