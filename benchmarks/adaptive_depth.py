"""Query-adaptive depth in the partition stage: lists scanned per query, and recall, against a fixed nprobe.

A query scans the lists whose centroid scores within ``slack`` of its best list's (at most
``nprobe``; ``hashindex.serving.candidates.partitions.adaptive_depth``). Built from public
pieces: a flat HashIndex gives the ITQ-128 codes and hasher, a ``PartitionStage`` (2 sqrt(N)
lists, SOAR spill 2) is trained on the gallery, and its candidates are scored against the exact
top-k (IndexFlatIP): recall@1 / recall@k after an exact rerank of c candidates equal the share
of the true top-1 / top-k among them. One thread; times are the candidate stage only,
round-robin, best of 3.

    OMP_NUM_THREADS=1 python benchmarks/adaptive_depth.py --n 200000 --name adaptive_depth_200k
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from hashindex import HashIndex  # noqa: E402
from hashindex.serving.candidates.partitions import PartitionStage, adaptive_depth, nlist_for  # noqa: E402

from benchlib.measure import machine_info, round_robin, write_record  # noqa: E402
from benchlib.sources import add_study_arguments, gallery_in_memory  # noqa: E402


def share_found(pos: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` found among the candidate positions ``pos``."""
    return float(np.mean([np.isin(t, p).mean() for p, t in zip(pos, truth)]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(ap)
    ap.add_argument("--candidates", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--max-nprobe", type=int, default=256, help="adaptive depth: at most this many lists")
    ap.add_argument("--slack", type=float, nargs="+", default=[0.02, 0.04, 0.06, 0.08, 0.1, 0.12])
    argv = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)
    g = gallery_in_memory(a.n, a.seed, a.probes, a.k)
    source, x, q, truth, k = g.source, g.x, g.q, g.truth, a.k

    index = HashIndex(x.shape[1], "itq", bits=128, partitions=None)
    index.fit(source.train)
    index.add(x)  # ids 0..N-1 = row positions
    z = index.hasher.project(q)
    stage = PartitionStage.train(index.bits, x, nlist_for(a.n), "cosine", spill=2)
    stage.build(index.codes, stage.assign(x))
    coarse_scores, _ = stage.coarse.search(q, a.max_nprobe)

    settings = {}
    for c in a.candidates:
        for p in a.nprobe:
            settings[f"nprobe={p} c={c}"] = dict(c=c, nprobe=p, slack=None, lists=np.full(len(q), p))
        for s in a.slack:
            depth = adaptive_depth(coarse_scores, s)
            settings[f"adaptive slack={s:g} (<= {a.max_nprobe}) c={c}"] = dict(c=c, nprobe=a.max_nprobe, slack=s,
                                                                                lists=depth)  # fmt: skip
    runs = {name: (lambda s=s: stage.knn(q, z, s["c"], s["nprobe"], slack=s["slack"])) for name, s in settings.items()}
    best = round_robin(runs, 3)
    rows = []
    print(f"| setting | lists/query mean | p50 | p90 | max | stopped before {a.max_nprobe} | recall@1 | recall@{k} | "
          "ms/query (candidates) |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name, s in settings.items():
        pos = runs[name]().positions
        lists = s["lists"]
        row = {"setting": name, "lists_mean": float(lists.mean()), "lists_p50": float(np.median(lists)),
               "lists_p90": float(np.percentile(lists, 90)), "lists_max": int(lists.max()),
               "stopped_early": float((lists < a.max_nprobe).mean()) if s["slack"] is not None else None,
               "recall_at_1": share_found(pos, truth[:, :1]), f"recall_at_{k}": share_found(pos, truth),
               "ms_per_query": best[name] / len(q) * 1e3}  # fmt: skip
        rows.append(row)
        stop = f"{row['stopped_early']:.0%}" if row["stopped_early"] is not None else "-"
        print(f"| {name} | {row['lists_mean']:.1f} | {row['lists_p50']:.0f} | {row['lists_p90']:.0f} | {row['lists_max']} | "
              f"{stop} | {row['recall_at_1']:.3f} | {row[f'recall_at_{k}']:.3f} | {row['ms_per_query']:.3f} |")  # fmt: skip
    record = {"command": shlex.join(["python", "benchmarks/adaptive_depth.py", *argv]), "machine": machine_info((1,)),
              "n": a.n, "seed": a.seed, "nlist": stage.nlist, "probes": len(q), "k": k, "rows": rows}  # fmt: skip
    write_record(record, a.out_dir, a.name or f"adaptive_depth_{a.n // 1000}k")
    return record


if __name__ == "__main__":
    main()
