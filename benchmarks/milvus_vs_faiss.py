"""HashIndex (FAISS) vs MilvusHashIndex (milvus-lite): queries per second and recall, side by side.

The same synthetic identity gallery (hashindex.training.data.synthetic), the same ITQ codes and the same
features go into both; recall@1 / @10 is measured against exact float search (cosine, brute
force). Searches run in the default mode (per query the smallest radius giving 10 * k
candidates) and at fixed radii; MilvusHashIndex with client-side and with Milvus-side reranking.

    python benchmarks/milvus_vs_faiss.py --n 100000 --bits 64 --out benchmarks/results/milvus_vs_faiss_100k.json

Needs the milvus extra (pymilvus 2.5, milvus-lite 2.5); see docs/milvus.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex.serving.milvus import MilvusHashIndex
from hashindex.training.data.synthetic import SyntheticGallery
from hashindex.serving.hashers import ITQHasher
from hashindex.evaluation.exact import exact_search
from hashindex.serving.index import HashIndex


def recall_at(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> float:
    """Fraction of the exact top-k found among the returned top-k (recall@k as in ANN benchmarks)."""
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found_ids, true_ids)]
    return float(np.mean(hits) / k)


def timed_search(index, queries: np.ndarray, qcodes: np.ndarray, k: int, **mode) -> tuple[float, object]:
    index.search(queries[:4], k=k, query_codes=qcodes[:4], **mode)  # warm-up
    t = time.perf_counter()
    res = index.search(queries, k=k, query_codes=qcodes, **mode)
    return len(queries) / (time.perf_counter() - t), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--radii", type=int, nargs="*", default=None, help="default: bits/4 and bits/4 + bits/8")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", default=None, help="milvus-lite file (default: a temporary directory)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)

    gallery = SyntheticGallery(max(args.n // 10, 1), 10, seed=args.seed)
    features = gallery.materialize()[0][: args.n]
    queries = gallery.probes(args.queries, seed=args.seed + 2)[0]
    train = SyntheticGallery(2_000, 10, seed=args.seed + 1).materialize()[0]
    hasher = ITQHasher(features.shape[1], args.bits).fit(train)
    codes, qcodes = hasher.encode(features), hasher.encode(queries)
    truth = exact_search(queries, features, args.k, "ip")  # inputs L2-normalised; ids == positions in both indexes

    tmp = tempfile.TemporaryDirectory()
    db = args.db or str(Path(tmp.name) / "bench.db")
    t = time.perf_counter()
    faiss_index = HashIndex(features.shape[1], hasher, backend="auto")
    faiss_index.add_codes(codes, features)
    faiss_build = time.perf_counter() - t
    t = time.perf_counter()
    milvus = MilvusHashIndex(features.shape[1], hasher, uri=db, collection=f"bench{args.bits}")
    milvus.drop()
    milvus.add_codes(codes, features)
    milvus_build = time.perf_counter() - t

    print(f"machine: {platform.processor() or platform.machine()}, n={args.n}, bits={args.bits}, k={args.k}, "
          f"{args.queries} queries; build s: faiss {faiss_build:.1f}, milvus-lite {milvus_build:.1f}")  # fmt: skip
    print(f"{'mode':>10s} {'engine':>22s} {'q/s':>9s} {'cand/q':>9s} {'R@1':>6s} {'R@10':>6s}")
    # radii where the probes of this gallery start to find their identity (ITQ codes of 128-d faces)
    radii = args.radii if args.radii is not None else [args.bits // 4, args.bits // 4 + args.bits // 8]
    modes = [("default", {})] + [(f"radius={r}", {"radius": r}) for r in radii]
    engines = [("faiss HashIndex", faiss_index, None), ("milvus rerank=client", milvus, "client"),
               ("milvus rerank=milvus", milvus, "milvus")]  # fmt: skip
    rows = []
    for label, mode in modes:
        for engine, index, rerank_mode in engines:
            if rerank_mode:
                index.rerank_mode = rerank_mode
            qps, res = timed_search(index, queries, qcodes, args.k, **mode)
            row = {
                "mode": label, "engine": engine, "qps": qps,
                "candidates_per_query": float(res.n_candidates.mean()),
                "recall@1": recall_at(res.ids, truth, 1), f"recall@{args.k}": recall_at(res.ids, truth, args.k),
            }  # fmt: skip
            rows.append(row)
            print(f"{label:>10s} {engine:>22s} {qps:9.1f} {row['candidates_per_query']:9.1f} "
                  f"{row['recall@1']:6.3f} {row[f'recall@{args.k}']:6.3f}")  # fmt: skip
    milvus.rerank_mode = "client"
    milvus.drop()
    milvus.close()
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"n": args.n, "bits": args.bits, "k": args.k, "queries": args.queries,
                "build_s": {"faiss": faiss_build, "milvus_lite": milvus_build}}  # fmt: skip
        out.write_text(json.dumps({**meta, "rows": rows}, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
