"""Where the partition stage's build time goes: k-means, the assignment (nearest list, SOAR), list packing.

Measured on the rows of an ``.npy`` gallery (memory-mapped), per list count, so a large build can
be extrapolated from a prefix without running it: the assignment costs time per item (reported
in us per item over ``--assign-rows``), k-means per training point (``TRAIN_POINTS_PER_LIST``
per list, ``--niter`` iterations), packing about 1 s per 1M items at spill 2.

    python benchmarks/partition_build.py --npy x_1M.npy --nlist 4096 8192 --niter 10 20
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from hashindex.serving.candidates import partitions as P


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npy", required=True, help="unit-norm float32 [N, D] gallery")
    p.add_argument("--nlist", type=int, nargs="+", default=[4096])
    p.add_argument("--niter", type=int, nargs="+", default=[P.KMEANS_NITER])
    p.add_argument("--assign-rows", type=int, default=100_000)
    p.add_argument("--pack-rows", type=int, default=1_000_000)
    a = p.parse_args()
    x = np.load(a.npy, mmap_mode="r")
    print(f"{x.shape[0]:,} x {x.shape[1]}, FAISS threads {faiss.omp_get_max_threads()}", flush=True)
    for nlist in a.nlist:
        row: dict = {"nlist": nlist}
        for niter in a.niter:
            P.KMEANS_NITER = niter
            t = time.time()
            centroids = P.train_centroids(x, nlist, spherical=True)
            row[f"kmeans_{niter}_iter_s"] = time.time() - t
        stage = P.PartitionStage(128, centroids, "cosine", spill=2)
        m = min(a.assign_rows, x.shape[0])
        xs = np.ascontiguousarray(x[:m])
        t = time.time()
        P.nearest_lists(stage.coarse, xs, 1)
        row["nearest_us_per_item"] = (time.time() - t) / m * 1e6
        t = time.time()
        stage.assign(xs)
        row["soar_us_per_item"] = (time.time() - t) / m * 1e6
        n = min(a.pack_rows, x.shape[0])
        rng = np.random.default_rng(0)  # packing time depends on sizes only, not on which lists
        codes = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        t = time.time()
        stage.build(codes, rng.integers(0, nlist, (n, 2), dtype=np.int32))
        row[f"pack_{n}_s"] = time.time() - t
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
