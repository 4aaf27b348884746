"""Queries per second of the Hamming stage: Flat vs Hash vs MultiHash, radius 0..3.

Gallery: a synthetic identity gallery (hashindex.training.data.synthetic) encoded with an ITQ hasher,
so codes have the clustered structure of real face codes. Every backend answers the same
queries in one process; the candidate sets are checked equal to the flat (exact) backend's.

    python benchmarks/backends.py --n 1000000 --bits 32 64 --out benchmarks/results/backends_1M.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex.serving.candidates.binary import FlatCandidates, HashCandidates, MultiHashCandidates
from hashindex.training.data.synthetic import SyntheticGallery
from hashindex.serving.hashers import ITQHasher


def make_codes(n: int, nq: int, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gallery = SyntheticGallery(max(n // 10, 1), 10, seed=seed)
    train = SyntheticGallery(2_000, 10, seed=seed + 1).materialize()[0]
    hasher = ITQHasher(train.shape[1], bits).fit(train)
    codes = np.concatenate([hasher.encode(x) for x, _ in gallery.iter_chunks(200_000)])[:n]
    queries = hasher.encode(gallery.probes(nq, seed=seed + 2)[0])
    return codes, queries


def time_range(gen, queries: np.ndarray, radius: int, repeat: int) -> tuple[float, np.ndarray]:
    gen.range(queries[:10], radius)  # warm-up
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        lims, pos, _ = gen.range(queries, radius)
        best = min(best, time.perf_counter() - t)
    return len(queries) / best, lims


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--radii", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    rows = []
    print(f"machine: {platform.processor() or platform.machine()}, faiss threads {faiss.omp_get_max_threads()}")
    print(f"{'bits':>4s} {'radius':>6s} {'backend':>10s} {'params':>16s} {'q/s':>10s} {'vs flat':>8s} {'cand/q':>9s} {'build s':>8s}")
    for bits in args.bits:
        codes, queries = make_codes(args.n, args.queries, bits, args.seed)
        gens = []
        for name, make in [
            ("flat", lambda: FlatCandidates(bits)),
            ("hash", lambda: HashCandidates(bits, HashCandidates.default_hash_bits(bits, len(codes)))),
            ("multihash", lambda: MultiHashCandidates(bits, *MultiHashCandidates.default_params(bits, len(codes)))),
        ]:
            t = time.perf_counter()
            gen = make()
            gen.rebuild(codes)
            gens.append((name, gen, time.perf_counter() - t))
        for r in args.radii:
            flat_qps, flat_lims = None, None
            for name, gen, build in gens:
                qps, lims = time_range(gen, queries, r, args.repeat)
                if flat_lims is None:
                    flat_qps, flat_lims = qps, lims
                assert np.array_equal(np.diff(lims), np.diff(flat_lims)), f"{name} r={r}: candidate counts differ from flat"
                params = {"flat": "-", "hash": f"b={getattr(gen, 'hash_bits', '')}",
                          "multihash": f"nhash={getattr(gen, 'nhash', '')} b={getattr(gen, 'hash_bits', '')}"}[name]
                row = {"bits": bits, "radius": r, "backend": name, "params": params, "qps": qps,
                       "speedup_vs_flat": qps / flat_qps, "candidates_per_query": float(np.diff(lims).mean()),
                       "build_seconds": build, "n": len(codes)}
                rows.append(row)
                print(f"{bits:4d} {r:6d} {name:>10s} {params:>16s} {qps:10,.0f} {qps / flat_qps:8.2f} "
                      f"{row['candidates_per_query']:9.1f} {build:8.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"n": args.n, "queries": args.queries, "rows": rows}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
