"""Measuring a method: recall against the exact top-k, throughput (best of n), latency, memory,
and the machine record. :func:`round_robin` times several (method, point) pairs in turns so that
load from other work hits them all alike.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from hashindex.evaluation.exact import drop_excluded as drop_self  # each probe's own id moved last
from hashindex.evaluation.exact import recall_at_k_vs_exact

from benchlib.methods import Method, Point
from benchlib.sources import Probes

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Evaluation:
    """The fixed side of every measurement: probes, their ground truth and the gallery labels."""

    probes: Probes
    exact_ids: np.ndarray  # int64 [n_exact, k]: exact top-k of the first n_exact probes
    gallery_labels: np.ndarray
    k: int
    batch: int
    repeat: int
    latency_queries: int
    max_candidates: int
    threads: tuple[int, ...] = (1,)  # each setting is measured at each count


@contextmanager
def thread_count(n: int):
    """FAISS (OpenMP) and BLAS limited to ``n`` threads inside the block."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return current / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: Method, point: Point, ev: Evaluation, threads: int) -> dict:
    """Search all probes at ``point`` with ``threads`` threads in batches (throughput), then one at
    a time (latency)."""
    with thread_count(threads):
        row = _measure(method, point, ev)
    row["threads"] = threads
    return row


def _measure(method: Method, point: Point, ev: Evaluation) -> dict:
    nq = min(len(ev.probes), method.max_probes or len(ev.probes))
    q = ev.probes.features[:nq]
    self_ids = None if ev.probes.self_ids is None else ev.probes.self_ids[:nq]
    kk = ev.k + (self_ids is not None)  # one more result: a probe's own image is dropped
    elapsed = math.inf
    for _ in range(ev.repeat):  # best of ``repeat``: the machine may be shared
        ids, cands, total = [], [], 0.0
        for s in range(0, nq, ev.batch):
            t = time.perf_counter()
            i, c = method.search(q[s : s + ev.batch], kk, point)
            total += time.perf_counter() - t
            ids.append(i)
            cands.append(c)
        elapsed = min(elapsed, total)
    ids = drop_self(np.concatenate(ids), self_ids, ev.k)
    cands = np.concatenate(cands)
    lat = []
    for i in range(min(ev.latency_queries, nq)):
        t = time.perf_counter()
        method.search(q[i : i + 1], kk, point)
        lat.append(time.perf_counter() - t)
    n_exact = min(nq, ev.exact_ids.shape[0])
    top1 = ids[:, 0]
    hit = (top1 >= 0) & (ev.gallery_labels[np.maximum(top1, 0)] == ev.probes.labels[:nq])
    row = {
        "curve": point.curve,
        "setting": point.label,
        "params": point.params,
        "n_probes": nq,
        "n_exact_probes": n_exact,
        "recall_at_1": recall_at_k_vs_exact(ids[:n_exact], ev.exact_ids[:n_exact], 1),
        f"recall_at_{ev.k}": recall_at_k_vs_exact(ids[:n_exact], ev.exact_ids[:n_exact], ev.k),
        "hit_at_1": float(hit.mean()),
        "candidates_mean": float(cands.mean()),
        "candidates_p50": float(np.median(cands)),
        "candidates_p99": float(np.percentile(cands, 99)),
        "empty_results": float((top1 < 0).mean()),
        "qps": nq / elapsed,
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3) if lat else None,
        "latency_ms_p99": float(np.percentile(lat, 99) * 1e3) if lat else None,
    }
    return row


def sweep(method: Method, ev: Evaluation, log) -> list[dict]:
    """Measure every point of ``method``.

    Radius points stop at the first radius whose warm-up batch averages more than
    ``ev.max_candidates`` candidates: that radius and larger ones are skipped on every backend
    (probing a hash table at a large radius costs more than any scan).
    """
    rows, radius_cap = [], math.inf
    warm_q = ev.probes.features[: min(50, len(ev.probes), method.max_probes or len(ev.probes))]
    for point in method.points():
        radius = point.params.get("radius")
        if radius is not None and radius >= radius_cap:
            continue
        extra = method.prepare(point)
        warm = method.search(warm_q, ev.k, point)  # warm-up (caches, lazily built structures)
        if radius is not None and warm[1].mean() > ev.max_candidates:
            radius_cap = radius
            log(f"  {method.name}: radius sweep stops at r={radius} "
                f"({warm[1].mean():.0f} candidates/query on the warm-up batch > {ev.max_candidates})")  # fmt: skip
            continue
        nq = min(len(ev.probes), method.max_probes or len(ev.probes))
        scanned = method.scanned(ev.probes.features[:nq], ev.k, point)
        for threads in ev.threads:
            row = measure(method, point, ev, threads)
            row.update(extra)
            row["scanned_mean"] = None if np.isnan(scanned).all() else float(np.nanmean(scanned))
            rows.append(row)
            log(format_row(method.name, row, ev.k))
    return rows


def format_row(name: str, row: dict, k: int) -> str:
    lat = f"{row['latency_ms_p50']:8.3f} {row['latency_ms_p99']:8.3f}" if row["latency_ms_p50"] is not None else " " * 17
    return (f"{name:14s} {row['setting']:16s} {row['threads']:3d} {row['recall_at_1']:6.4f} "
            f"{row[f'recall_at_{k}']:6.4f} {row['hit_at_1']:6.4f} {row['candidates_mean']:11.1f} {row['qps']:10.1f} "
            f"{lat}")  # fmt: skip


def build(method: Method, train: np.ndarray, chunks: Iterator[np.ndarray]) -> dict:
    """Train, then add the streamed gallery; only the method's own work is timed."""
    t = time.perf_counter()
    method.train(train)
    train_s = time.perf_counter() - t
    add_s = 0.0
    for x in chunks:
        t = time.perf_counter()
        method.add(x)
        add_s += time.perf_counter() - t
    finish = getattr(method, "finish", None)  # methods that build from the whole gallery at once
    if finish is not None:
        t = time.perf_counter()
        finish()
        add_s += time.perf_counter() - t
    current, peak = rss_mib()
    return {"train_s": train_s, "add_s": add_s, "total_s": train_s + add_s,
            "rss_after_build_mib": current, "peak_rss_mib": peak}  # fmt: skip


def machine_info(threads: Sequence[int]) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_blas_threshold": int(faiss.cvar.distance_compute_blas_threshold),
        "threads": threads[0] if len(threads) == 1 else list(threads),
        "git_commit": commit,
    }


def round_robin(runs: dict[str, "callable"], rounds: int) -> dict[str, float]:
    """Best wall time of each zero-argument callable over ``rounds`` turns, the callables timed in
    turn (round-robin) so that load from other work hits them all alike."""
    best = dict.fromkeys(runs, math.inf)
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def write_record(record: dict, out_dir: str, name: str) -> Path:
    """One results file ``out_dir/name.json`` (the tables in benchmarks/README.md are read from these)."""
    out = Path(out_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return out
