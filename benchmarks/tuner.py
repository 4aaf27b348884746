"""How long ``tune()`` takes, and whether what it measured holds on new captures.

Builds ``HashIndex(dim)`` (the library's default: residual ITQ, 192 bits at 128-d, partitions
"auto"; ``--hasher itq``: ``HashIndex(dim, "itq", bits=128)``, the index of the runs before
2026-12-04's fourth stop) on a synthetic gallery, builds the partition stage (timed apart),
times ``tune(recall=0.99, k=10)``, then searches the generator's
probes (fresh images of gallery identities, never seen by the tuner) at the chosen point, at
the untuned default (flat scan, max(50 k, 500) candidates) and with exact IndexFlatIP, timed
round-robin (best of ``--rounds``) on one thread.

    OMP_NUM_THREADS=1 python benchmarks/tuner.py --n 1000000 --probes 500 --name tuner_1M
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

from hashindex import HashIndex  # noqa: E402
from hashindex.evaluation.exact import recall_at_k_vs_exact  # noqa: E402

from benchlib.measure import machine_info, round_robin, write_record  # noqa: E402
from benchlib.sources import add_study_arguments, gallery_in_memory  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(ap)
    ap.add_argument("--recall", type=float, default=0.99)
    ap.add_argument("--recall-at-k", type=float, default=0.95)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hasher", default="default", choices=("default", "itq"),
                    help="default: HashIndex(dim); itq: HashIndex(dim, 'itq', bits=128)")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)
    g = gallery_in_memory(a.n, a.seed, a.probes, a.k)
    source, x, q, truth, exact, k = g.source, g.x, g.q, g.truth, g.exact, a.k

    index = HashIndex(x.shape[1]) if a.hasher == "default" else HashIndex(x.shape[1], "itq", bits=128)
    t = time.perf_counter()
    index.fit(source.train)
    index.add(x)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    index.search(q[:1], k, nprobe=1)  # the partition stage (k-means + lists)
    part_s = time.perf_counter() - t
    t = time.perf_counter()
    point = index.tune(recall=a.recall, k=k, recall_at_k=a.recall_at_k, progress=False)
    tune_s = time.perf_counter() - t
    print(f"build {build_s:.1f} s, partition stage {part_s:.1f} s, tune {tune_s:.1f} s: {point}", flush=True)

    runs = {
        "exact IndexFlatIP": lambda: exact.search(q, k)[1],
        "hashindex search(q, k) (tuned point)": lambda: index.search(q, k).ids,
        "hashindex flat c=500 (the untuned default)": lambda: index.search(q, k, candidates=500,
                                                                            ranking="asymmetric").ids,
    }
    ids = {name: run() for name, run in runs.items()}
    best = round_robin(runs, a.rounds)
    rows = []
    print(f"| configuration | recall@1 | recall@{k} | q/s | x exact |\n|---|---|---|---|---|")
    for name in runs:
        qps = len(q) / best[name]
        r1, rk = recall_at_k_vs_exact(ids[name], truth, 1), recall_at_k_vs_exact(ids[name], truth, k)
        rows.append({"config": name, "recall_at_1": r1, f"recall_at_{k}": rk, "qps": qps,
                     "x_exact": qps * best["exact IndexFlatIP"] / len(q)})  # fmt: skip
        print(f"| {name} | {r1:.3f} | {rk:.3f} | {qps:,.0f} | {rows[-1]['x_exact']:.1f} |")
    record = {"command": shlex.join(["python", "benchmarks/tuner.py", *argv]), "machine": machine_info((1,)),
              "n": a.n, "hasher": a.hasher, "seed": a.seed, "probes": len(q), "k": k, "rounds": a.rounds, "build_s": build_s,
              "partition_build_s": part_s, "tune_s": tune_s, "point": point.to_dict(), "rows": rows}  # fmt: skip
    write_record(record, a.out_dir, a.name or f"tuner_{a.n // 1000}k")
    return record


if __name__ == "__main__":
    main()
