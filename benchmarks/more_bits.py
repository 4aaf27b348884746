"""More bits where they pay (issue 19 item 4): 128-bit ITQ codes against 256-bit codes for 128-d
features, all scored asymmetrically (``<z, 2b - 1>``) by the library's flat fast-scan, then
reranked exactly.

Configurations (every one a hasher that ``HashIndex`` holds through its public API: a
:class:`~hashindex.LinearHasher`, or an object with ``bits``, ``encode`` and ``project``):

- ``itq128``: today's codes, ``HashIndex(dim, "itq", bits=128, partitions=None)`` (16 bytes).
- ``itq128-ipq``: the same bits, the query projected without the training mean (``W x``, not
  ``W (x - mean)``): for inner-product ranking the query-side centring adds an item-dependent
  term ``<W mean, 2b - 1>`` to every score (16 bytes).
- ``itq2x256``: ITQ 128 plus a second 128-bit code of the same centred, PCA-rotated features
  under another rotation (random orthogonal start, refined by ITQ iterations), concatenated: a
  ``LinearHasher`` of 256 bits at 128-d (32 bytes).
- ``resid<b1>+<b2>[+...]``: stacked residual sign codes (the library's :class:`~hashindex.ResidualHasher`, since
  this study the default of ``HashIndex(dim)``): stage 1 the
  ITQ code of ``b1`` bits, stage i the ITQ code of what the stages before it leave (``x - m``
  minus their scaled reconstructions), refined jointly; scored by the query against the sum of
  the stages' reconstructions (``resid64+64`` 16 bytes, ``resid128+64`` 24, ``resid128+128``
  32, ``resid128x3`` 48; ``-ipq``: the query uncentred). Its ``encode`` is not linear, its
  ``project`` is, so the library's asymmetric scan scores it unchanged.

For each configuration, on the selection gallery (``--select-seed``): the candidate-ranking
recall curve (the share of each probe's exact top-1 / top-k among its top-c asymmetric scores,
numpy float scoring; after an exact rerank of c candidates that is recall@1 / recall@k), the
smallest c meeting both targets, checked (and raised 15% at a time if needed) with the library's
own search. On the report gallery (``--seed``): recall@1 / recall@k of ``search(q, k,
candidates=c, ranking="asymmetric")`` at that c, its time and the scan alone (``candidates=k``),
timed round-robin with exact IndexFlatIP, best of ``--rounds``, one thread.

    OMP_NUM_THREADS=1 python benchmarks/more_bits.py --n 200000 --probes 500 --name more_bits_200k
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

from hashindex import HashIndex, ITQHasher, LinearHasher  # noqa: E402
from hashindex.evaluation.exact import recall_at_k_vs_exact  # noqa: E402

from benchlib.measure import machine_info, round_robin, write_record  # noqa: E402
from benchlib.sources import add_study_arguments, gallery_in_memory  # noqa: E402

GRID = np.unique(np.round(np.geomspace(20, 20_000, 61)).astype(int))


def itq_rotation(v: np.ndarray, seed: int, iters: int = 50) -> np.ndarray:
    """ITQ (Gong & Lazebnik): the orthogonal ``Q [d, d]`` minimising ``||sign(v Q^T) - v Q^T||``,
    from a random orthogonal start of ``seed``."""
    d = v.shape[1]
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    for _ in range(iters):
        b = np.sign(v @ q.T)
        u, _, wt = np.linalg.svd(b.T @ v)  # maximise tr(Q^T B^T V): Q = U W^T
        q = u @ wt
    return q.astype(np.float32)


def residual(stages: list[int], train: np.ndarray, centre_query: bool = True):
    """The library's stacked residual ITQ code (:class:`~hashindex.ResidualHasher`, here with
    explicit ``stages``), its query centred as the library does, or not (``-ipq``)."""
    h = LinearHasher("residual", sum(stages), train.shape[1], stages=tuple(stages)).fit(train)
    return h if centre_query else UncentredQuery(h)


class UncentredQuery:
    """A linear hasher's bits, the query projected as ``W x`` (no centring bias)."""

    kind = "itq-ipq"

    def __init__(self, hasher: LinearHasher):
        self.hasher, self.bits = hasher, hasher.bits

    def encode(self, features: np.ndarray) -> np.ndarray:
        return self.hasher.encode(features)

    def project(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, np.float32) @ self.hasher.weight.T).astype(np.float32)


def make_hashers(train: np.ndarray, dim: int) -> dict:
    """Every configuration's hasher, fitted on the training identities (disjoint from galleries)."""
    itq = ITQHasher(dim, 128).fit(train)
    w1, b1 = itq.weight, itq.bias
    u = train @ w1.T + b1
    q2 = itq_rotation(u, seed=2)
    x2 = LinearHasher("itq2x", 256, dim, np.vstack([w1, q2 @ w1]).astype(np.float32),
                      np.concatenate([b1, q2 @ b1]).astype(np.float32))  # fmt: skip
    return {
        "itq128": itq,
        "itq128-ipq": UncentredQuery(itq),
        "itq2x256": x2,
        "resid64+64": residual([64, 64], train),
        "resid128+64": residual([128, 64], train),
        "resid128+128": residual([128, 128], train),
        "resid128+128-ipq": residual([128, 128], train, centre_query=False),
        "resid128x3": residual([128, 128, 128], train),
    }


def true_ranks(hasher, x: np.ndarray, q: np.ndarray, truth: np.ndarray, batch: int = 50) -> np.ndarray:
    """``int64 [nq, k]``: the rank (0 = first) of each exact top-k item among all items by the
    asymmetric score ``<project(q), 2 encode(x) - 1>`` (float, ties counted against the item)."""
    signs = np.unpackbits(hasher.encode(x), axis=1, bitorder="little").astype(np.float32) * 2 - 1
    z = hasher.project(q)
    ranks = np.empty(truth.shape, np.int64)
    for s in range(0, len(q), batch):
        sc = z[s : s + batch] @ signs.T
        mine = np.take_along_axis(sc, truth[s : s + batch], axis=1)
        ranks[s : s + batch] = (sc[:, None, :] >= mine[:, :, None]).sum(axis=2) - 1
    return ranks


def curve(ranks: np.ndarray) -> dict:
    """Recall@1 and recall@k after an exact rerank of c candidates, for c in GRID."""
    return {"c": GRID.tolist(), "recall_at_1": [float((ranks[:, 0] < c).mean()) for c in GRID],
            "recall_at_k": [float((ranks < c).mean()) for c in GRID]}  # fmt: skip


def needed(ranks: np.ndarray, r1: float, rk: float) -> int:
    """Smallest c (any integer) with candidate recall@1 >= r1 and recall@k >= rk."""
    n1 = np.sort(ranks[:, 0])[int(np.ceil(r1 * len(ranks))) - 1] + 1
    nk = np.sort(ranks.ravel())[int(np.ceil(rk * ranks.size)) - 1] + 1
    return int(max(n1, nk))


def build(hasher, x: np.ndarray) -> HashIndex:
    index = HashIndex(x.shape[1], hasher, partitions=None)
    index.add(x)
    return index


def search_fn(index: HashIndex, q: np.ndarray, k: int, c: int):
    return lambda: index.search(q, k, candidates=c, ranking="asymmetric").ids


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(ap)
    ap.set_defaults(seed=12)
    ap.add_argument("--select-seed", type=int, default=11)
    ap.add_argument("--recall", type=float, default=0.99)
    ap.add_argument("--recall-at-k", type=float, default=0.95)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", nargs="*", default=None, help="subset of configurations (default: all)")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)
    k, t0 = a.k, time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    # -- selection gallery: curves and the c each configuration needs ---------------------------
    g = gallery_in_memory(a.n, a.select_seed, a.probes, k)
    hashers = make_hashers(g.source.train, g.x.shape[1])
    if a.configs:
        hashers = {n: h for n, h in hashers.items() if n in a.configs}
    log(f"selection gallery seed {a.select_seed}: {g.x.shape[0]} items, {len(g.q)} probes")
    select = {}
    for name, h in hashers.items():
        ranks = true_ranks(h, g.x, g.q, g.truth)
        c = needed(ranks, a.recall, a.recall_at_k)
        index = build(h, g.x)
        checks = []
        while True:  # the library's fast-scan (8-bit tables) must meet the targets at c too
            ids = search_fn(index, g.q, k, c)()
            r1, rk = recall_at_k_vs_exact(ids, g.truth, 1), recall_at_k_vs_exact(ids, g.truth, k)
            checks.append({"c": c, "recall_at_1": r1, f"recall_at_{k}": rk})
            if (r1 >= a.recall and rk >= a.recall_at_k) or c >= a.n or len(checks) >= 8:
                break
            c = int(np.ceil(c * 1.15))
        select[name] = {"c_float_scoring": needed(ranks, a.recall, a.recall_at_k), "c": c, "checks": checks,
                        "curve": curve(ranks)}  # fmt: skip
        log(f"{name}: c needed (float scoring) {select[name]['c_float_scoring']}, library check {checks}")
        del index

    # -- report gallery: recall and time at the chosen c -----------------------------------------
    g = gallery_in_memory(a.n, a.seed, a.probes, k)
    hashers = make_hashers(g.source.train, g.x.shape[1])
    if a.configs:
        hashers = {n: h for n, h in hashers.items() if n in a.configs}
    log(f"report gallery seed {a.seed}: {g.x.shape[0]} items, {len(g.q)} probes")
    q, truth = g.q, g.truth
    indexes, curves, runs = {}, {}, {"exact IndexFlatIP": lambda: g.exact.search(q, k)[1]}
    for name, h in hashers.items():
        indexes[name] = build(h, g.x)
        ranks = true_ranks(h, g.x, q, truth)
        curves[name] = {"curve": curve(ranks), "c_float_scoring": needed(ranks, a.recall, a.recall_at_k)}
        runs[name] = search_fn(indexes[name], q, k, select[name]["c"])
        runs[name + " scan"] = search_fn(indexes[name], q, k, k)
    ids = {name: run() for name, run in runs.items()}
    best = round_robin(runs, a.rounds)
    ex = best["exact IndexFlatIP"]
    rows = []
    print(f"| config | bytes/item scanned | c (seed {a.select_seed}) | recall@1 | recall@{k} | scan ms/q | search ms/q "
          f"| q/s | x exact | c needed on seed {a.seed} |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name, h in hashers.items():
        r1, rk = recall_at_k_vs_exact(ids[name], truth, 1), recall_at_k_vs_exact(ids[name], truth, k)
        row = {"config": name, "bits": h.bits, "bytes_per_item": h.bits // 8, "c": select[name]["c"],
               "c_float_scoring_select": select[name]["c_float_scoring"],
               "c_float_scoring_report": curves[name]["c_float_scoring"],
               "recall_at_1": r1, f"recall_at_{k}": rk, "met": bool(r1 >= a.recall and rk >= a.recall_at_k),
               "scan_ms_per_query": best[name + " scan"] / len(q) * 1e3,
               "search_ms_per_query": best[name] / len(q) * 1e3, "qps": len(q) / best[name],
               "x_exact": ex / best[name]}  # fmt: skip
        rows.append(row)
        print(f"| {name} | {row['bytes_per_item']} | {row['c']:,} | {r1:.3f} | {rk:.3f} | {row['scan_ms_per_query']:.2f} "
              f"| {row['search_ms_per_query']:.2f} | {row['qps']:,.0f} | {row['x_exact']:.1f} "
              f"| {row['c_float_scoring_report']:,} |")  # fmt: skip
    print(f"exact IndexFlatIP: {len(q) / ex:,.0f} q/s")
    record = {"command": shlex.join(["python", "benchmarks/more_bits.py", *argv]), "machine": machine_info((1,)),
              "n": a.n, "select_seed": a.select_seed, "seed": a.seed, "probes": len(q), "k": k,
              "targets": {"recall_at_1": a.recall, f"recall_at_{k}": a.recall_at_k}, "rounds": a.rounds,
              "exact_qps": len(q) / ex, "rows": rows,
              "selection": select, "report_curves": curves}  # fmt: skip
    write_record(record, a.out_dir, a.name or f"more_bits_{a.n // 1000}k")
    return record


if __name__ == "__main__":
    main()
