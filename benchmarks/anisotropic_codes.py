"""Would ScaNN's anisotropic quantization make better list codes? (issue 19; recall only)

list_codes.py found that on the library's lists our sign codes rank as well as FAISS's residual
PQ at equal bytes, and that what ScaNN has beyond them is its anisotropic loss and its own scan
kernel. This study measures the first: residual PQ codes (the same k-means lists and SOAR
spill-2 assignment as the library's) encoded either by FAISS (nearest codeword per
sub-quantizer) or with ScaNN's score-aware loss (Guo et al., "Accelerating large-scale inference
with anisotropic vector quantization", ICML 2020):

    loss(x, x~) = ||e||^2 + (eta - 1) <e, x / ||x||>^2,   e = x - x~,

which weighs the error along the item ``eta`` times the error orthogonal to it (ScaNN's
``anisotropic_quantization_threshold`` T = 0.2 gives eta = (D - 1) T^2 / (1 - T^2) = 5.3 at
D = 128). Each entry's codes start from FAISS's and are improved by coordinate descent over the
sub-quantizers (``--sweeps`` passes); the codebooks are FAISS's k-means ones.

Rows: ``pq<M>`` on the D-d features (M = D / 2: ScaNN's 2 dims per 4-bit block, 32 B) and on
the features embedded isometrically in ``--pad-dim`` dims (M = pad / 3: 24 B, our default's
bytes), each plain (eta 1) and anisotropic (``--eta``). The scan is FAISS's
``IndexIVFPQFastScan`` (same kernel and speed for equal M, so only recall is reported); the c
best are reranked exactly. Compare with ``results/list_codes_1M.json`` (same gallery seed):

    OMP_NUM_THREADS=2 python benchmarks/anisotropic_codes.py --n 1000000 --seed 31 --probes 300 \\
        --name anisotropic_codes_1M
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from hashindex.serving.candidates.partitions import nlist_for, soar_lists, train_centroids  # noqa: E402

from benchlib.measure import machine_info, write_record  # noqa: E402
from benchlib.sources import add_study_arguments, gallery_in_memory  # noqa: E402
from list_codes import distinct_first, exact_top, recalls  # noqa: E402


def isometry(dim: int, d: int, seed: int = 0) -> np.ndarray:
    """``float32 [dim, d]`` with orthonormal columns (identity when dim == d): inner products kept."""
    if dim == d:
        return np.eye(d, dtype=np.float32)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, d)))
    return q.astype(np.float32)


def anisotropic_codes(residual: np.ndarray, x: np.ndarray, codebooks: np.ndarray, start: np.ndarray, eta: float,
                      sweeps: int) -> np.ndarray:  # fmt: skip
    """Sub-quantizer values ``int64 [n, M]`` minimising the anisotropic loss of ``x [n, d]``'s
    reconstruction ``centroid + codebooks``, given its ``residual [n, d]`` (x - centroid), the
    ``codebooks float32 [M, 16, d / M]`` and the starting values ``start [n, M]``."""
    m, _, dsub = codebooks.shape
    codes, rows = start.copy(), np.arange(len(x))
    norms = (codebooks**2).sum(-1)  # [M, 16]
    recon = np.concatenate([codebooks[j][codes[:, j]] for j in range(m)], axis=1)
    along = ((residual - recon) * x).sum(1)  # <e, x>; x is unit
    for _ in range(sweeps):
        for j in range(m):
            r, xj = residual[:, j * dsub : (j + 1) * dsub], x[:, j * dsub : (j + 1) * dsub]
            err = norms[j] - 2 * r @ codebooks[j].T  # ||r_j - c||^2 up to a constant per row
            par = (r * xj).sum(1)[:, None] - xj @ codebooks[j].T  # <r_j - c, x_j> for each c
            rest = along - par[rows, codes[:, j]]
            best = np.argmin(err + (eta - 1) * (rest[:, None] + par) ** 2, axis=1)
            along, codes[:, j] = rest + par[rows, best], best
    return codes


def list_number_bytes(lists: np.ndarray, size: int) -> np.ndarray:
    """``uint8 [n, size]``: each list number as IVF's coarse code (little-endian bytes)."""
    return np.ascontiguousarray(lists.astype("<u8").view(np.uint8).reshape(len(lists), 8)[:, :size])


def residual_pq_lists(x, centroids, assign, dim, m, eta, sweeps, train_rows, chunk=65536) -> faiss.Index:
    """IVF-PQ fast-scan over the residuals in ``dim`` dims, entries encoded with ``eta``."""
    d, nlist = x.shape[1], centroids.shape[0]
    emb = isometry(dim, d)
    coarse = faiss.IndexFlatIP(dim)
    cent = np.ascontiguousarray(centroids @ emb.T)
    coarse.add(cent)
    ivf = faiss.IndexIVFPQ(coarse, dim, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
    rows = np.sort(np.random.default_rng(0).choice(len(x), min(len(x), train_rows), replace=False))
    ivf.train(np.ascontiguousarray(x[rows] @ emb.T))
    pq = ivf.pq
    books = faiss.vector_to_array(pq.centroids).reshape(m, 16, dim // m)
    for lo in range(0, len(x), chunk):
        xe = np.ascontiguousarray(x[lo : lo + chunk] @ emb.T)
        ids = np.arange(lo, lo + len(xe), dtype=np.int64)
        for j in range(assign.shape[1]):
            lists = assign[lo : lo + chunk, j]
            residual = np.ascontiguousarray(xe - cent[lists])
            packed = pq.compute_codes(residual)
            if eta != 1:
                start = np.empty((len(xe), m), np.int64)
                start[:, 0::2], start[:, 1::2] = packed & 15, packed >> 4
                codes = anisotropic_codes(residual, xe, books, start, eta, sweeps)
                packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
            # FAISS's own add of encoded entries: each code prefixed by its list number
            prefixed = np.concatenate([list_number_bytes(lists, ivf.coarse_code_size()), packed], axis=1)
            ivf.add_sa_codes(prefixed, ids)
    fast = faiss.IndexIVFPQFastScan(ivf)
    fast.referenced_objects = [coarse]  # the fast-scan index points at it without owning it
    return fast, emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(ap)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[256, 320, 384])
    ap.add_argument("--candidates", type=int, nargs="+", default=[200, 300, 500])
    ap.add_argument("--eta", type=float, nargs="+", default=[4.0, 5.3])
    ap.add_argument("--pad-dim", type=int, default=144, help="dims for the 24-byte rows (a multiple of 3 and >= D)")
    ap.add_argument("--sweeps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = ap.parse_args()
    name = a.name or f"anisotropic_codes_{a.n // 1000}k"
    record: dict = {"command": shlex.join(sys.argv), "machine": machine_info((a.threads,)), "n": a.n,
                    "seed": a.seed, "probes": a.probes, "k": a.k, "rows": []}  # fmt: skip
    faiss.omp_set_num_threads(a.threads)
    g = gallery_in_memory(a.n, a.seed, a.probes, a.k)
    x, q, truth = g.x, np.ascontiguousarray(g.q, dtype=np.float32), g.truth
    nlist = nlist_for(a.n)
    centroids = train_centroids(x, nlist, spherical=True)
    coarse = faiss.IndexFlatIP(x.shape[1])
    coarse.add(centroids)
    assign = soar_lists(coarse, centroids, x, 2)
    d = x.shape[1]
    layouts = [(d, d // 2), (a.pad_dim, a.pad_dim // 3)]
    print("| code | B / entry | eta | " + " | ".join(f"nprobe {p}, c {c}" for p in a.nprobe for c in a.candidates)
          + " |\n|---|---|---|" + "---|" * (len(a.nprobe) * len(a.candidates)), flush=True)  # fmt: skip
    for dim, m in layouts:
        for eta in [1.0, *a.eta]:
            t = time.time()
            index, emb = residual_pq_lists(x, centroids, assign, dim, m, eta, a.sweeps, 64 * nlist)
            built = time.time() - t
            qe = np.ascontiguousarray(q @ emb.T)
            cells = []
            for nprobe in a.nprobe:
                for c in a.candidates:
                    index.nprobe = nprobe
                    found = index.search(qe, 2 * c)[1]
                    r1, rk = recalls(exact_top(x, q, distinct_first(found, c), a.k), truth, a.k)
                    record["rows"].append({"code": f"pq{m}", "dim": dim, "entry_bytes": m // 2, "eta": eta,
                                           "nprobe": nprobe, "candidates": c, "recall@1": r1,
                                           f"recall@{a.k}": rk, "build_s": built})  # fmt: skip
                    cells.append(f"{r1:.3f} / {rk:.3f}")
            print(f"| pq{m} ({dim}-d) | {m // 2} | {eta:g} | " + " | ".join(cells) + " |", flush=True)
    write_record(record, a.out_dir, name)


if __name__ == "__main__":
    main()
