"""Interleaved check of the 1M headline points: every configuration timed round-robin, best of 3,
in one process on one thread, so that load from other work hits them all alike.

    OMP_NUM_THREADS=1 python benchmarks/interleaved_1m.py [--out benchmarks/results/interleaved_1m.json]

Gallery: SyntheticGallery(250_000, 4, seed=4242) (1M face-like 128-d items), 1,000 probes
(seed 1), k=10, recall@1 against exact IndexFlatIP. Configurations: exact; FAISS's fastest anchor
IVF1024,PQ32x4fs,RFlat at its recall 0.95 / 0.99 points; hashindex ITQ-128 flat asymmetric
(the untuned default), partitions with one list per item and with spilling (the default,
partition_spill=2), at explicit nprobe / candidates.
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
from hashindex.evaluation.exact import unit_rows  # noqa: E402
from hashindex.training.data.synthetic import SyntheticGallery  # noqa: E402

K, ROUNDS = 10, 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "interleaved_1m.json")
    ap.add_argument("--identities", type=int, default=250_000, help="x 4 items (>= 25,000 for a partition stage)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    gallery = SyntheticGallery(args.identities, 4, seed=4242)
    x = unit_rows(gallery.materialize()[0])
    q = unit_rows(gallery.probes(1000, seed=1)[0])
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    truth = exact.search(q, K)[1][:, 0]

    train = x[np.sort(np.random.default_rng(0).choice(len(x), 100_000, replace=False))]
    anchor = faiss.index_factory(x.shape[1], "IVF1024,PQ32x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
    anchor.train(train)
    anchor.add(x)
    space = faiss.ParameterSpace()

    indexes = {}
    for spill in (1, 2):
        t = time.perf_counter()
        index = HashIndex(x.shape[1], "itq", bits=128, backend="flat", partitions="auto", partition_spill=spill)
        index.fit(train)
        index.add(x)
        index.search(q[:2], K, nprobe=1)  # builds the partition stage
        print(f"partition_spill={spill}: built in {time.perf_counter() - t:.0f} s", flush=True)
        indexes[spill] = index

    nlist = indexes[1].partition_lists  # 2048 at 1M: nprobe below as shares of it (1/32 .. 3/8)

    def lists(share: float) -> int:
        return max(1, round(share * nlist))

    def anchor_at(nprobe: int, k_factor: int):
        def run():
            space.set_index_parameters(anchor, f"nprobe={nprobe},k_factor_rf={k_factor}")
            return anchor.search(q, K)[1]
        return run

    def hashed(spill: int, **kw):
        return lambda: indexes[spill].search(q, K, **kw).ids

    configs = {
        "exact IndexFlatIP": lambda: exact.search(q, K)[1],
        "anchor nprobe=128 k_factor=20": anchor_at(128, 20),
        "anchor nprobe=512 k_factor=50": anchor_at(512, 50),
        "hashindex flat asymmetric c=500 (untuned default)": hashed(1, ranking="asymmetric", candidates=500),
        f"hashindex partitions nprobe={lists(1 / 8)} c=50": hashed(1, nprobe=lists(1 / 8), candidates=50),
        f"hashindex partitions nprobe={lists(3 / 8)} c=500": hashed(1, nprobe=lists(3 / 8), candidates=500),
        f"hashindex spill2 nprobe={lists(1 / 32)} c=50": hashed(2, nprobe=lists(1 / 32), candidates=50),
        f"hashindex spill2 nprobe={lists(1 / 16)} c=50": hashed(2, nprobe=lists(1 / 16), candidates=50),
        f"hashindex spill2 nprobe={lists(3 / 32)} c=500": hashed(2, nprobe=lists(3 / 32), candidates=500),
        f"hashindex spill2 nprobe={lists(1 / 8)} c=500": hashed(2, nprobe=lists(1 / 8), candidates=500),
    }
    best = dict.fromkeys(configs, np.inf)
    recall = {}
    for _ in range(ROUNDS):
        for name, run in configs.items():
            t = time.perf_counter()
            ids = run()
            best[name] = min(best[name], time.perf_counter() - t)
            recall[name] = float(np.mean(ids[:, 0] == truth))
    exact_qps = len(q) / best["exact IndexFlatIP"]
    rows = []
    print("| configuration | recall@1 | q/s | x exact |\n|---|---|---|---|")
    for name in configs:
        qps = len(q) / best[name]
        rows.append({"config": name, "recall_at_1": recall[name], "qps": qps, "x_exact": qps / exact_qps})
        print(f"| {name} | {recall[name]:.3f} | {qps:,.0f} | {qps / exact_qps:.1f} |")
    args.out.write_text(json.dumps({"threads": 1, "rounds": ROUNDS, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
