"""How build time, memory and query time grow with the gallery: 100k -> 1M -> 10M.

One pass streams a synthetic identity gallery (hashindex.training.data.synthetic) into a HashIndex with
a float16 feature store, while an exact top-k heap for a subsample of probes is kept over the
same chunks (FAISS ResultHeap), so the gallery is generated once per size. The index is then
saved, reloaded memory-mapped, and searched in candidate-budget and multi-probe modes.

    python benchmarks/scale.py --sizes 100000 1000000 10000000 --model benchmarks/results/synthetic_1M_learned_64.onnx
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex import HashIndex, OnnxEncoder
from hashindex.evaluation.exact import ExactTopK
from hashindex.training.data.synthetic import SyntheticGallery
from hashindex.serving.hashers import ITQHasher


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(n: int, hasher, per_identity: int, seed: int, exact_q: np.ndarray, k: int, chunk: int, dtype: str):
    """Stream the gallery into a HashIndex and an exact heap; returns (index, exact ids, timings)."""
    gallery = SyntheticGallery(-(-n // per_identity), per_identity, seed=seed)
    index = HashIndex(128, hasher, feature_dtype=dtype)
    exact = ExactTopK(exact_q, k, metric="ip")
    gen_s = add_s = exact_s = 0.0
    done = 0
    t = time.perf_counter()
    for x, _ in gallery.iter_chunks(chunk):
        x = unit(x[: n - done])
        gen_s += time.perf_counter() - t
        t = time.perf_counter()
        index.add(x)
        add_s += time.perf_counter() - t
        t = time.perf_counter()
        exact.add(x)
        exact_s += time.perf_counter() - t
        done += len(x)
        t = time.perf_counter()
        if done >= n:
            break
    return index, exact.ids(), {"generate_s": gen_s, "encode_and_add_s": add_s, "exact_s": exact_s}


def search_rows(index: HashIndex, probes: np.ndarray, exact_ids: np.ndarray, k: int, budgets: list[int]):
    rows = []
    modes = [(f"c={c}", {"candidates": c}) for c in budgets] + [("multi-probe", {})]
    for name, kw in modes:
        index.search(probes[:10], k=k, **kw)
        t = time.perf_counter()
        res = index.search(probes, k=k, **kw)
        qps = len(probes) / (time.perf_counter() - t)
        ne = len(exact_ids)
        r1 = float(np.mean(res.ids[:ne, 0] == exact_ids[:, 0]))
        r10 = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(res.ids[:ne], exact_ids)]))
        lat = []
        for q in probes[:100]:
            t = time.perf_counter()
            index.search(q[None], k=k, **kw)
            lat.append(time.perf_counter() - t)
        rows.append({"mode": name, "recall_at_1": r1, "recall_at_10": r10, "qps": qps,
                     "candidates_mean": float(res.n_candidates.mean()),
                     "latency_ms_p50": 1e3 * float(np.percentile(lat, 50)),
                     "latency_ms_p99": 1e3 * float(np.percentile(lat, 99))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--model", help="learned ONNX hash model (features input); default: ITQ-64 fitted on training identities")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--exact-probes", type=int, default=200)
    ap.add_argument("--budgets", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--per-identity", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=200_000)
    ap.add_argument("--feature-dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/scale.json")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)

    if args.model:
        hasher_desc = f"ONNX model {args.model}"
    else:
        train, _ = SyntheticGallery(20_000, args.per_identity, seed=args.seed + 100).materialize()
        itq = ITQHasher(128, args.bits).fit(unit(train))
        hasher_desc = f"ITQ-{args.bits} fitted on 80k items of other identities"
    records = []
    for n in args.sizes:
        hasher = OnnxEncoder(args.model, threads=args.threads) if args.model else itq
        gallery = SyntheticGallery(-(-n // args.per_identity), args.per_identity, seed=args.seed)
        probes = unit(gallery.probes(args.probes, seed=args.seed + 1)[0])
        rss0 = rss_mib()
        t = time.perf_counter()
        index, exact_ids, timing = build(n, hasher, args.per_identity, args.seed, probes[: args.exact_probes],
                                         args.k, args.chunk, args.feature_dtype)
        wall = time.perf_counter() - t
        mem = index.memory_usage()
        tmp = Path(tempfile.mkdtemp(prefix="hashindex-scale-"))
        try:
            t = time.perf_counter()
            index.save(tmp / "index")
            save_s = time.perf_counter() - t
            disk = sum(p.stat().st_size for p in (tmp / "index").iterdir())
            del index
            t = time.perf_counter()
            loaded = HashIndex.load(tmp / "index", mmap=True)
            load_s = time.perf_counter() - t
            rows = search_rows(loaded, probes, exact_ids, args.k, args.budgets)
            del loaded
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rec = {"n": n, "build_wall_s": wall, **timing, "save_s": save_s, "load_mmap_s": load_s,
               "index_bytes_in_memory": mem, "bytes_per_item": {k: v / n for k, v in mem.items()},
               "disk_bytes": disk, "rss_growth_mib": rss_mib() - rss0, "peak_rss_mib": peak_rss_mib(), "search": rows}
        records.append(rec)
        print(f"n={n:,}: build {wall:.1f}s (generate {timing['generate_s']:.1f}, encode+add {timing['encode_and_add_s']:.1f}, "
              f"exact heap {timing['exact_s']:.1f}), save {save_s:.1f}s, load(mmap) {load_s:.1f}s, "
              f"disk {disk / 2**20:,.0f} MiB, peak RSS {peak_rss_mib():,.0f} MiB", flush=True)
        for r in rows:
            print(f"   {r['mode']:<12s} R@1 {r['recall_at_1']:.3f} R@10 {r['recall_at_10']:.3f} "
                  f"cand {r['candidates_mean']:9.0f}  {r['qps']:9,.0f} q/s  p50 {r['latency_ms_p50']:.2f} ms  "
                  f"p99 {r['latency_ms_p99']:.2f} ms", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"command": "python benchmarks/scale.py " + " ".join(__import__("sys").argv[1:]),
                   "hasher": hasher_desc, "machine": {"cpu": platform.processor(), "threads": args.threads},
                   "feature_dtype": args.feature_dtype, "records": records}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
