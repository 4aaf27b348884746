"""Recall / speed / memory of every search method on one gallery, in one process.

Methods (``--methods``), all on the same gallery, probes and thread count:

* ``exact``: FAISS IndexFlatIP (brute force float search);
* ``hnsw``: FAISS IndexHNSWFlat (M=32), efSearch sweep;
* ``ivf``: FAISS IndexIVFFlat (nlist ~ 4 sqrt(N)), nprobe sweep;
* anchors (opt-in, FAISS index_factory + exact float refine, swept through faiss.ParameterSpace):
  ``ivfpq`` = ``IVF{nlist},PQ{dim/4}x4fs,RFlat`` (nprobe x k_factor), ``rabitq`` = ``RaBitQfs,RFlat``
  (k_factor), ``ivfrabitq`` = ``IVF{nlist},RaBitQfs,RFlat`` (nprobe x k_factor). The PQ codes are
  4 bits per 4 dimensions and RaBitQ 1 bit per dimension: 128 bits at D=128, like ITQ-128;
* ``scann`` (opt-in, needs the ``bench`` extra; skipped with a note when absent): Google ScaNN,
  tree (2 sqrt(N) leaves) + SOAR spilling + anisotropic 4-bit AH codes + float reorder,
  leaves_to_search x reorder;
* ``sign``: sign-binarised features + rerank with an oversampled candidate list (k x 1..10), which
  is how Qdrant, Weaviate, OpenSearch and Elasticsearch use binary quantization with rescoring;
* ``pca`` / ``itq``: PCA-sign and ITQ codes (``--bits``) + rerank: candidate-budget sweep, the same
  sweep ranked asymmetrically (``ranking="asymmetric"``; ``--no-asymmetric`` skips it), Hamming
  radius sweep (flat / hash / multihash backends) and the index's default multi-probe mode;
* ``model``: a learned ONNX hash model (``--model PATH.onnx``, through OnnxEncoder) + rerank, with
  the same modes as ITQ. Skipped, with a note, when no model is given.

Every hash method also measures ``HashIndex.search(q, k)`` with no options (the library's default
mode). ``--partitions P`` adds, per code length, a second HashIndex built with
``HashIndex(..., partitions=P)``: its default search, an ``nprobe x candidates`` sweep, and, where
the library has them, ``search(q, k, recall=r)`` and ``tune(recall=r)`` then ``search(q, k)`` for
each ``--recall-targets`` r. It is skipped, with a note, while HashIndex has no ``partitions=``.

``--threads 1 2`` measures every setting at each thread count on the same built indexes (built
with the largest count); rows carry ``threads`` and the summary is per thread count.

Every method is measured the same way: recall@1 and recall@k against the exact float top-k,
same-identity hit rate at rank 1, candidates compared per query (items reranked for hash methods
and refine anchors, full-precision distance computations for HNSW / IVF, N for exact), codes or
vectors scanned per query (``scanned_mean``; untimed second pass), queries per second at batch
``--batch`` (1000), single-query latency p50 / p99 (``--latency-queries``), build time (train +
encode + add; generating the synthetic data is not counted) and bytes per item (index structure
and full-precision feature store).

Data: a synthetic identity gallery (hashindex.training.data.synthetic) streamed in chunks into each index,
so 10M items never sit in memory twice; hashers (and IVF's coarse quantizer) are trained on a
separate set of synthetic identities. ``--data PATH.npz`` uses an embeddings file instead (the LFW
development split): hashers train on ~70% of the identities, gallery and probes come from the
rest, and a probe never counts itself as a match.

    python benchmarks/run.py --n 100000 --name synthetic_100k
    python benchmarks/run.py --data ../shared/data/lfw/lfw_mfn128_dev.npz --name lfw_dev
    python benchmarks/run.py --n 10000000 --methods exact ivf sign itq model --model m.onnx \\
        --feature-dtype float16 --exact-probes 200 --threads 16 --name synthetic_10M

The harness lives in benchmarks/benchlib (config, sources, methods, measure); this script is its
command line. For the anchors protocol (settings chosen on one gallery seed, reported on
another, timed round-robin) see benchmarks/compare.py.

Writes ``<out-dir>/<name>.json`` (machine, exact command, configuration, every measurement) and the
plots of benchmarks/plot.py (recall@1 vs queries per second, recall@1 vs candidates), and prints
benchmarks/summarize.py's tables: per recall target the fastest setting of each method and the
best hashindex setting as a ratio to each other method.

    python benchmarks/run.py --n 1000000 --bits 128 --methods exact hnsw ivfpq rabitq ivfrabitq itq \
        --partitions auto --threads 1 2 --name anchors_1M
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib: benchmarks/ is not a package

from benchlib.config import BenchConfig, parse_args as _parse_config  # noqa: E402
from benchlib.measure import Evaluation, build, drop_self, machine_info, rss_mib, sweep, thread_count  # noqa: E402,F401
from benchlib.methods import make_methods  # noqa: E402
from benchlib.sources import Probes, exact_neighbours, make_source  # noqa: E402,F401

RESULT_FORMAT = 1


def result_name(cfg: BenchConfig) -> str:
    if cfg.name:
        return cfg.name
    if cfg.data:
        return Path(cfg.data).stem
    n = cfg.n
    size = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return f"synthetic_{size}"


def train_model(cfg: BenchConfig, source) -> str:
    """Train ``cfg.train_recipe`` on the source's training identities; export it to ONNX."""
    import torch

    from hashindex.export.onnx import export_model
    from hashindex.core.onnx_contract import TrainingInfo
    from hashindex.training.recipes import fit_recipe

    torch.set_num_threads(max(cfg.threads))
    bits = cfg.bits[0]
    result = fit_recipe(cfg.train_recipe, source.train, source.train_labels, bits, seed=cfg.seed)
    path = Path(cfg.out_dir) / f"{cfg.name or 'run'}_{cfg.train_recipe}_{bits}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    export_model(result.model, path, result.model.input_spec,
                 TrainingInfo(loss=f"recipe {cfg.train_recipe}", data=json.dumps(source.describe())))
    return str(path)


def run(cfg: BenchConfig, argv: Sequence[str] | None = None, log=print) -> dict:
    """Run the benchmark described by ``cfg``; returns (and writes) the result record. Builds use
    the largest thread count; every setting is measured at each count."""
    with thread_count(max(cfg.threads)):
        return _run(cfg, argv, log)


def _run(cfg: BenchConfig, argv, log) -> dict:
    started = time.time()
    t = time.perf_counter()
    source = make_source(cfg)
    data_s = time.perf_counter() - t
    probes = source.probes
    n_exact = min(cfg.exact_probes or len(probes), len(probes))
    log(f"data: {json.dumps(source.describe())} ({data_s:.1f} s)")
    t = time.perf_counter()
    exact_probes = Probes(probes.features[:n_exact], probes.labels[:n_exact],
                          None if probes.self_ids is None else probes.self_ids[:n_exact])  # fmt: skip
    exact_ids = exact_neighbours(source.chunks(cfg.chunk), exact_probes, cfg.k)
    truth_s = time.perf_counter() - t
    log(f"ground truth: exact top-{cfg.k} of {n_exact} probes in {truth_s:.1f} s")
    ev = Evaluation(probes, exact_ids, source.gallery_labels, cfg.k, cfg.batch, cfg.repeat,
                    cfg.latency_queries, cfg.max_candidates, cfg.threads)  # fmt: skip

    model_train_s = None
    if cfg.train_recipe and not cfg.model:
        t = time.perf_counter()
        cfg = dataclasses.replace(cfg, model=train_model(cfg, source))
        model_train_s = time.perf_counter() - t
        log(f"trained recipe {cfg.train_recipe!r} on {len(source.train):,} training items in {model_train_s:.1f} s -> {cfg.model}")
    makers, skipped = make_methods(cfg, source.dim, source.n_items, len(probes))
    for s in skipped:
        log(f"note: skipping {s['method']}: {s['reason']}")
    log(f"{'method':14s} {'setting':16s} {'thr':>3s} {'R@1':>6s} {f'R@{cfg.k}':>6s} {'hit@1':>6s} {'cand/query':>11s} "
        f"{'q/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")  # fmt: skip
    methods = []
    for make in makers:
        method = make()
        stats = build(method, source.train, source.chunks(cfg.chunk))
        mem = method.memory()
        log(f"{method.name}: built in {stats['total_s']:.1f} s (train {stats['train_s']:.1f} s), "
            f"{mem['index'] / source.n_items:.1f} + {mem['features'] / source.n_items:.1f} bytes/item, "
            f"RSS {stats['rss_after_build_mib']:.0f} MiB")  # fmt: skip
        rows = sweep(method, ev, log)
        mem = method.memory()  # again: some structures (asymmetric scanner, partition lists) are built on first use
        methods.append({
            "name": method.name,
            "family": method.family,
            "description": method.describe(),
            "candidates_kind": method.candidates_kind,
            "build": stats,
            "memory_bytes": mem,
            "bytes_per_item": {key: v / source.n_items for key, v in mem.items()},
            "results": rows,
        })  # fmt: skip
        del method
        gc.collect()

    record = {
        "format": RESULT_FORMAT,
        "name": result_name(cfg),
        "command": shlex.join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": time.time() - started,
        "machine": machine_info(cfg.threads),
        "config": asdict(cfg),
        "data": source.describe(),
        "k": cfg.k,
        "ground_truth": {"method": "FAISS exact inner product (knn over streamed chunks)", "probes": n_exact,
                         "seconds": truth_s},  # fmt: skip
        "peak_rss_mib": rss_mib()[1],
        "model_training_seconds": model_train_s,
        "methods": methods,
        "skipped": skipped,
    }
    record["summary"] = _sibling("summarize").summarize(record, list(cfg.recall_targets))
    log(record["summary"])
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{record['name']}.json"
    path.write_text(json.dumps(record, indent=1))
    log(f"wrote {path}")
    if cfg.plots:
        for p in _sibling("plot").plot_results(record, out):
            log(f"wrote {p}")
    return record


def _sibling(name: str):
    """Import ``benchmarks/<name>.py`` (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    return _parse_config(argv, __doc__)


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(parse_args(argv), argv)


if __name__ == "__main__":
    main()
