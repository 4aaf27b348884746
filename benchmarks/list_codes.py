"""What the partition lists hold (issue 19): the library's sign codes against FAISS's residual
PQ and RaBitQ codes, on the same k-means lists, at equal lists probed.

Where the default search's time goes at 1M (nprobe 384 of 2,048 lists, spill 2, 500
candidates): the fast-scan of the probed lists is ~2/3 of it, so a faster search needs a code
that ranks the true top-10 among fewer lists and candidates, not a faster rerank. This study
measures candidates against recall for the codes FAISS offers beside ours:

- ``hashindex-192``: ``HashIndex(dim)`` as a user builds it (residual sign codes, 128 + 64 bits,
  24 B per list entry), searched through the public API (int6 rerank store, the best 3k
  rescored exactly);
- ``hashindex-256``: ``HashIndex(dim, bits=256)`` (128 + 128 bits, 32 B per entry);
- ``pq<M>x4fs``: FAISS ``IndexIVFPQFastScan`` over the *residual* ``x - centroid`` (M
  sub-quantizers of 4 bits: 2 dimensions each for M = D / 2, ScaNN's AH layout without its
  anisotropic loss), the same centroids and SOAR spill-2 assignment as the library's
  (:func:`train_centroids`, :func:`soar_lists`), the c best reranked exactly on float32 rows;
- ``rabitq<b>``: FAISS ``IndexIVFRaBitQFastScan`` (the residual's signs after a random
  rotation, with per-item correction factors; ``b`` bits per dimension), same centroids, one
  list per item, the c best reranked exactly.

Every row's grid point (nprobe x candidates) is timed round-robin with the others, one thread,
best of ``--rounds``. This is a study of ranking quality per list scanned on one gallery (no
setting is chosen here); the headline comparison with ScaNN is benchmarks/compare.py.

    OMP_NUM_THREADS=1 python benchmarks/list_codes.py --n 1000000 --probes 300 --name list_codes_1M
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from hashindex import HashIndex  # noqa: E402
from hashindex.serving.candidates.partitions import nlist_for, soar_lists, train_centroids  # noqa: E402

from benchlib.measure import machine_info, round_robin, write_record  # noqa: E402
from benchlib.sources import add_study_arguments, gallery_in_memory  # noqa: E402


def recalls(ids: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float]:
    r1 = float(np.mean(ids[:, 0] == truth[:, 0]))
    rk = float(np.mean([len(set(a[:k].tolist()) & set(b[:k].tolist())) / k for a, b in zip(ids, truth)]))
    return r1, rk


def exact_top(x: np.ndarray, q: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    """The exact top-k ``int64 [nq, k]`` among each query's candidates ``[nq, c]`` (-1 padded)."""
    nq, c = cand.shape
    scores = np.empty((nq, c), np.float32)
    faiss.fvec_inner_products_by_idx(faiss.swig_ptr(scores), faiss.swig_ptr(q), faiss.swig_ptr(x),
                                     faiss.swig_ptr(cand), x.shape[1], nq, c)  # fmt: skip
    scores[cand < 0] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, top, 1)


def distinct_first(ids: np.ndarray, c: int) -> np.ndarray:
    """The first ``c`` distinct ids of each row (an item found through both its lists once), -1 padded."""
    out = np.full((ids.shape[0], c), -1, np.int64)
    for i, row in enumerate(ids):
        _, first = np.unique(row, return_index=True)
        kept = row[np.sort(first)]
        kept = kept[kept >= 0][:c]
        out[i, : kept.size] = kept
    return out


def residual_pq(x: np.ndarray, coarse: faiss.Index, assign: np.ndarray, m: int, train_rows: int) -> faiss.Index:
    """IVF-PQ fast-scan over the residuals, each row added to every list of its assignment."""
    ivf = faiss.IndexIVFPQ(coarse, x.shape[1], coarse.ntotal, m, 4, faiss.METRIC_INNER_PRODUCT)
    rows = np.random.default_rng(0).choice(len(x), min(len(x), train_rows), replace=False)
    ivf.train(x[np.sort(rows)])
    ids = np.arange(len(x), dtype=np.int64)
    for j in range(assign.shape[1]):
        lists = np.ascontiguousarray(assign[:, j], dtype=np.int64)
        ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
    return faiss.IndexIVFPQFastScan(ivf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(ap)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[128, 192, 256, 384])
    ap.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 300, 500])
    ap.add_argument("--pq-m", type=int, nargs="+", default=[32, 64], help="sub-quantizers of the residual PQ rows")
    ap.add_argument("--rabitq-bits", type=int, nargs="+", default=[1], help="bits per dimension of the RaBitQ rows")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    name = a.name or f"list_codes_{a.n // 1000}k"
    record: dict = {"command": shlex.join(sys.argv), "machine": machine_info((1,)), "n": a.n, "seed": a.seed,
                    "probes": a.probes, "k": a.k}  # fmt: skip

    g = gallery_in_memory(a.n, a.seed, a.probes, a.k)
    x, q, truth = g.x, np.ascontiguousarray(g.q, dtype=np.float32), g.truth
    faiss.omp_set_num_threads(a.build_threads)
    nlist = nlist_for(a.n)
    builds: dict[str, float] = {}
    t = time.time()
    centroids = train_centroids(x, nlist, spherical=True)
    coarse = faiss.IndexFlatIP(x.shape[1])
    coarse.add(centroids)
    assign = soar_lists(coarse, centroids, x, 2)
    builds["lists (k-means + SOAR)"] = time.time() - t
    faiss_rows: dict[str, tuple[faiss.Index, int]] = {}  # name -> (index, entries per item)
    for m in a.pq_m:
        t = time.time()
        faiss_rows[f"pq{m}x4fs"] = (residual_pq(x, coarse, assign, m, 64 * nlist), 2)
        builds[f"pq{m}x4fs"] = time.time() - t
    for b in a.rabitq_bits:
        t = time.time()
        rq = faiss.IndexIVFRaBitQFastScan(coarse, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT, 32, True, b)
        rq.train(x[: 64 * nlist])
        rq.add(x)
        faiss_rows[f"rabitq{b}"] = (rq, 1)
        builds[f"rabitq{b}"] = time.time() - t
    ours: dict[str, HashIndex] = {}
    for bits in (None, 256):
        t = time.time()
        # the lists the library would choose for this size (its own k-means, the same seed)
        index = HashIndex(x.shape[1], partitions=nlist) if bits is None else HashIndex(x.shape[1], bits=bits, partitions=nlist)
        index.add(x, progress=False)
        index.search(q[:1], a.k, nprobe=1, candidates=a.k)  # builds the partition stage
        ours[f"hashindex-{index.bits}"] = index
        builds[f"hashindex-{index.bits}"] = time.time() - t
    record["build_s"] = builds
    faiss.omp_set_num_threads(1)

    rows = []
    print(f"| code | bytes / entry | nprobe | candidates | recall@1 | recall@{a.k} | q/s |\n|---|---|---|---|---|---|---|")
    for nprobe in a.nprobe:
        for c in a.candidates:
            out: dict[str, np.ndarray] = {}
            runs = {}
            for key, index in ours.items():
                runs[key] = lambda key=key, index=index: out.__setitem__(key, index.search(q, a.k, nprobe=nprobe, candidates=c).ids)
            for key, (index, spill) in faiss_rows.items():
                def run(key=key, index=index, spill=spill):
                    index.nprobe = nprobe
                    found = index.search(q, spill * c)[1]
                    out[key] = exact_top(x, q, distinct_first(found, c) if spill > 1 else found, a.k)
                runs[key] = run
            best = round_robin(runs, a.rounds)
            for key, sec in best.items():
                r1, rk = recalls(out[key], truth, a.k)
                entry = (ours[key].bits // 8 if key in ours else
                         faiss_rows[key][0].code_size if key.startswith("pq") else (x.shape[1] * int(key[6:]) + 7) // 8)  # fmt: skip
                row = {"code": key, "entry_bytes": int(entry), "nprobe": nprobe, "candidates": c, "recall@1": r1,
                       f"recall@{a.k}": rk, "qps": len(q) / sec}  # fmt: skip
                rows.append(row)
                print(f"| {key} | {entry} | {nprobe} | {c} | {r1:.3f} | {rk:.3f} | {row['qps']:.0f} |", flush=True)
    record["rows"] = rows
    write_record(record, a.out_dir, name)


if __name__ == "__main__":
    main()
