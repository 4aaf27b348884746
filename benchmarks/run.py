"""Recall / speed / memory of every search method on one gallery, in one process.

Methods (``--methods``), all on the same gallery, probes and thread count:

* ``exact``: FAISS IndexFlatIP (brute force float search);
* ``hnsw``: FAISS IndexHNSWFlat (M=32), efSearch sweep;
* ``ivf``: FAISS IndexIVFFlat (nlist ~ 4 sqrt(N)), nprobe sweep;
* anchors (opt-in, FAISS index_factory + exact float refine, swept through faiss.ParameterSpace):
  ``ivfpq`` = ``IVF{nlist},PQ{dim/4}x4fs,RFlat`` (nprobe x k_factor), ``rabitq`` = ``RaBitQfs,RFlat``
  (k_factor), ``ivfrabitq`` = ``IVF{nlist},RaBitQfs,RFlat`` (nprobe x k_factor). The PQ codes are
  4 bits per 4 dimensions and RaBitQ 1 bit per dimension: 128 bits at D=128, like ITQ-128;
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

Writes ``<out-dir>/<name>.json`` (machine, exact command, configuration, every measurement) and the
plots of benchmarks/plot.py (recall@1 vs queries per second, recall@1 vs candidates), and prints
benchmarks/summarize.py's tables: per recall target the fastest setting of each method and the
best hashindex setting as a ratio to each other method.

    python benchmarks/run.py --n 1000000 --bits 128 --methods exact hnsw ivfpq rabitq ivfrabitq itq \
        --partitions auto --threads 1 2 --name anchors_1M
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import inspect
import itertools
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from hashindex import HashIndex
from hashindex.training.data import identity_split, load_embeddings
from hashindex.training.data.synthetic import SyntheticGallery
from hashindex.core.errors import InputError
from hashindex.serving.hashers import ITQHasher, PCASignHasher, SignHasher
from hashindex.evaluation.exact import ExactTopK, recall_at_k_vs_exact
from hashindex.evaluation.exact import drop_excluded as drop_self  # each probe's own id moved last

REPO = Path(__file__).resolve().parents[1]
METHODS = ("exact", "hnsw", "ivf", "ivfpq", "rabitq", "ivfrabitq", "sign", "pca", "itq", "model")
DEFAULT_METHODS = ("exact", "hnsw", "ivf", "sign", "pca", "itq", "model")  # the anchors are opt-in
BACKENDS = ("flat", "hash", "multihash")
RESULT_FORMAT = 1


# =========================================================================== configuration
@dataclass(frozen=True)
class BenchConfig:
    """Everything a run depends on (recorded verbatim in the JSON)."""

    name: str = ""
    n: int = 100_000  # gallery items (synthetic mode)
    dim: int = 128
    per_identity: int | str = 4  # images per gallery identity: an int or "heavy" (Zipf)
    seed: int = 0
    data: str | None = None  # embeddings .npz (LFW development split) instead of synthetic data
    val_fraction: float = 0.3  # --data: share of identities held out for gallery and probes
    probes: int = 1000
    exact_probes: int | None = None  # probes with exact ground truth (recall); None: all
    train_items: int | None = None  # synthetic training set size; None: max(20000, 40 nlist)
    methods: tuple[str, ...] = DEFAULT_METHODS
    model: str | None = None
    train_recipe: str | None = None  # train this hashindex.training.recipes recipe on the training side, use it as --model
    bits: tuple[int, ...] = (64,)
    k: int = 10
    threads: tuple[int, ...] = (1,)  # every setting is measured at each count
    batch: int = 1000
    repeat: int = 3  # throughput: best of this many passes over the probes
    latency_queries: int = 200
    feature_dtype: str = "float32"
    chunk: int = 100_000
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: tuple[int, ...] = (16, 32, 64, 128, 256)
    nlist: int | None = None  # None: 4 sqrt(N)
    nprobe: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    anchor_nlist: int | None = None  # ivfpq / ivfrabitq lists; None: 1024 per 1M items, power of two
    anchor_nprobe: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    k_factor: tuple[int, ...] = (1, 2, 5, 10, 20, 50)  # refine anchors: items reranked = k * k_factor
    partitions: str | None = None  # HashIndex(partitions=...) for a partitioned hash method; None: none
    part_nprobe: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)
    spill: tuple[int, ...] = (1,)  # partitioned hash methods: one per partition_spill value
    part_candidates: tuple[int, ...] = (20, 50, 100, 200, 500)
    recall_targets: tuple[float, ...] = (0.95, 0.99)  # summary targets, and search(recall=) / tune(recall=)
    oversample: tuple[int, ...] = (1, 2, 3, 5, 10)  # sign: candidates = k * oversample
    candidates: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
    radii: tuple[int, ...] = (0, 1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 36, 40)
    backends: tuple[str, ...] = BACKENDS
    accel_radii: tuple[int, ...] = (0, 1, 2, 3)  # radii tried on the hash / multihash backends
    max_candidates: int = 20_000  # a radius sweep stops before a radius averaging more than this
    asymmetric: bool = True  # pca / itq / model: also the candidate sweep with ranking="asymmetric"
    out_dir: str = "benchmarks/results"
    plots: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise InputError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
        bad = set(self.backends) - set(BACKENDS)
        if bad:
            raise InputError(f"unknown backends {sorted(bad)}; choose from {', '.join(BACKENDS)}")
        for name in ("n", "dim", "probes", "k", "batch", "repeat", "chunk", "hnsw_m", "max_candidates"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.threads or min(self.threads) <= 0:
            raise InputError(f"threads must be positive counts, got {self.threads}")
        if self.latency_queries < 0:
            raise InputError(f"latency_queries must be >= 0, got {self.latency_queries}")

    def ivf_nlist(self, n_items: int) -> int:
        return self.nlist or max(1, int(round(4 * math.sqrt(n_items))))

    def anchor_lists(self, n_items: int) -> int:
        """IVF lists of the anchors: 1024 at 1M (the issue's anchor), ~N/1000 as a power of two."""
        return self.anchor_nlist or int(2 ** max(4, round(math.log2(max(n_items, 1) / 1000))))


# =========================================================================== data sources
def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (inner product == cosine for every method), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass
class Probes:
    """Queries: ``features float32 [nq, D]``, identity ``labels int64 [nq]`` and ``self_ids int64 [nq]``,
    the gallery id of the probe itself (excluded from its results), or None when probes are not
    in the gallery."""

    features: np.ndarray
    labels: np.ndarray
    self_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


class Source(Protocol):
    """Where a benchmark's vectors come from. Gallery ids are positions ``0 .. n_items-1``."""

    n_items: int
    dim: int
    gallery_labels: np.ndarray  # int64 [n_items]
    train: np.ndarray  # float32 [T, D], identities disjoint from the gallery's
    probes: Probes

    def chunks(self, chunk_size: int) -> Iterator[np.ndarray]:
        """The gallery in order, as unit-norm float32 ``[c, D]`` chunks."""
        ...

    def describe(self) -> dict: ...


class SyntheticSource:
    """A synthetic gallery of ``n`` items and a disjoint training set, from one generator.

    One :class:`SyntheticGallery` (one seed, hence one random lift when ``dim > 128``) holds
    both: identities ``0 .. T_ids-1`` are the training set, the following identities the
    gallery (its first ``n`` items). Probes are fresh images of gallery identities only.
    """

    def __init__(self, n: int, dim: int, per_identity: int | str, seed: int, train_items: int, n_probes: int):
        self.n_items, self.dim, self.seed = n, dim, seed
        guess = math.ceil((n + train_items) / 4) + 16
        while True:
            gen = SyntheticGallery(guess, per_identity, dim=dim, seed=seed)
            bounds = np.concatenate([[0], np.cumsum(gen.identity_counts)])
            self.n_train_ids = int(np.searchsorted(bounds, train_items, side="left"))
            self.start = int(bounds[self.n_train_ids])  # first gallery item
            if bounds[-1] >= self.start + n:
                break
            guess *= 2
        # the generator must end with the gallery's last identity, so probes never come from beyond it
        n_ids = int(np.searchsorted(bounds, self.start + n, side="left"))
        self.gen = SyntheticGallery(n_ids, per_identity, dim=dim, seed=seed)
        counts = self.gen.identity_counts
        self.gallery_labels = np.repeat(np.arange(n_ids, dtype=np.int64), counts)[self.start : self.start + n]
        self.train = unit_rows(self._items(0, self.start))
        self.train_labels = np.repeat(np.arange(self.n_train_ids, dtype=np.int64), counts[: self.n_train_ids])
        self.probes = self._probes(n_probes)

    def _items(self, lo: int, hi: int, chunk_size: int = 100_000) -> np.ndarray:
        if hi <= lo:
            return np.empty((0, self.dim), np.float32)
        return np.concatenate(list(self._stream(lo, hi, chunk_size)))

    def _stream(self, lo: int, hi: int, chunk_size: int) -> Iterator[np.ndarray]:
        pos = 0
        for x, _ in self.gen.iter_chunks(chunk_size):
            a, b = max(lo - pos, 0), min(hi - pos, x.shape[0])
            if b > a:
                yield x[a:b]
            pos += x.shape[0]
            if pos >= hi:
                return

    def chunks(self, chunk_size: int) -> Iterator[np.ndarray]:
        for x in self._stream(self.start, self.start + self.n_items, chunk_size):
            yield unit_rows(x)

    def _probes(self, n: int) -> Probes:
        # the generator draws probe identities uniformly over all of its identities: draw
        # extra and keep gallery identities, deterministically in (seed, n)
        n_ids = self.gen.n_identities
        draw = math.ceil(n * n_ids / max(n_ids - self.n_train_ids, 1) * 1.2) + 64
        while True:
            x, y = self.gen.probes(draw, seed=self.seed + 1)
            keep = np.flatnonzero(y >= self.n_train_ids)[:n]
            if keep.size == n:
                return Probes(unit_rows(x[keep]), y[keep], None)
            draw *= 2

    def describe(self) -> dict:
        counts = self.gen.identity_counts
        return {
            "kind": "synthetic",
            "generator": "hashindex.training.data.synthetic.SyntheticGallery (PLDA fitted to LFW MobileFaceNet-128)",
            "n_items": self.n_items,
            "n_identities": int(np.unique(self.gallery_labels).size),
            "per_identity": str(self.gen.images_per_identity),
            "dim": self.dim,
            "seed": self.seed,
            "train_items": int(self.train.shape[0]),
            "train_identities": self.n_train_ids,
            "train_identity_mean_count": float(counts[: self.n_train_ids].mean()) if self.n_train_ids else 0.0,
            "probes": len(self.probes),
        }


class NpzSource:
    """An embeddings file split by identity: hashers train on one side, gallery + probes on the other.

    Probes are gallery items whose identity has another gallery image; a probe never matches
    itself (``self_ids``).
    """

    def __init__(self, path: str, val_fraction: float, seed: int, n_probes: int):
        data = load_embeddings(path)
        if data.labels is None:
            raise InputError(f"{path}: has no labels; identity-disjoint evaluation needs them")
        self.path, self.seed, self.val_fraction = path, seed, val_fraction
        train_idx, val_idx = identity_split(data.labels, val_fraction=val_fraction, seed=seed)
        self.train = unit_rows(data.features[train_idx])
        self.train_labels = data.labels[train_idx]
        self._gallery = unit_rows(data.features[val_idx])
        self.gallery_labels = data.labels[val_idx]
        self.n_items, self.dim = self._gallery.shape
        _, inverse, counts = np.unique(self.gallery_labels, return_inverse=True, return_counts=True)
        eligible = np.flatnonzero(counts[inverse] >= 2)
        chosen = np.sort(np.random.default_rng(seed).permutation(eligible)[:n_probes])
        self.probes = Probes(self._gallery[chosen], self.gallery_labels[chosen], chosen.astype(np.int64))
        self.n_train_ids = int(np.unique(data.labels[train_idx]).size)

    def chunks(self, chunk_size: int) -> Iterator[np.ndarray]:
        for s in range(0, self.n_items, chunk_size):
            yield self._gallery[s : s + chunk_size]

    def describe(self) -> dict:
        return {
            "kind": "npz",
            "path": str(self.path),
            "split": f"hashindex.training.data.identity_split(val_fraction={self.val_fraction}, seed={self.seed})",
            "n_items": self.n_items,
            "n_identities": int(np.unique(self.gallery_labels).size),
            "dim": self.dim,
            "train_items": int(self.train.shape[0]),
            "train_identities": self.n_train_ids,
            "probes": len(self.probes),
            "probes_exclude_self": True,
        }


def make_source(cfg: BenchConfig) -> SyntheticSource | NpzSource:
    if cfg.data:
        return NpzSource(cfg.data, cfg.val_fraction, cfg.seed, cfg.probes)
    train_items = cfg.train_items or max(20_000, 40 * cfg.ivf_nlist(cfg.n))
    return SyntheticSource(cfg.n, cfg.dim, cfg.per_identity, cfg.seed, train_items, cfg.probes)


# =========================================================================== ground truth
def exact_neighbours(chunks: Iterator[np.ndarray], probes: Probes, k: int) -> np.ndarray:
    """Exact inner-product top-k ``int64 [nq, k]`` over a streamed gallery (never held whole)."""
    top = ExactTopK(probes.features, k + (probes.self_ids is not None), metric="ip")
    for x in chunks:
        top.add(x)
    return top.ids(k, probes.self_ids)


# =========================================================================== methods
@dataclass(frozen=True)
class Point:
    """One setting of a method: a point on the curve ``curve``."""

    curve: str
    label: str
    params: dict = field(default_factory=dict)


class Method(Protocol):
    """A search method under test: trained, filled chunk by chunk, then searched per setting."""

    name: str
    family: str
    candidates_kind: str  # what n_candidates counts
    max_probes: int | None  # search only this many probes (exact baseline at large N)

    def train(self, x: np.ndarray) -> None: ...
    def add(self, x: np.ndarray) -> None: ...
    def points(self) -> list[Point]: ...
    def prepare(self, point: Point) -> dict:
        """Get ready to search at ``point``; returns one-off costs (e.g. a backend's build)."""
        ...
    def search(self, q: np.ndarray, k: int, point: Point) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [nq, k], candidates float [nq])``."""
        ...
    def scanned(self, q: np.ndarray, k: int, point: Point) -> np.ndarray:
        """Codes or vectors scored per query, ``float [nq]`` (NaN: unknown); not timed."""
        ...
    def memory(self) -> dict[str, int]:
        """``{"index": bytes of the search structure, "features": bytes of full-precision vectors}``."""
        ...
    def describe(self) -> dict: ...


class ExactMethod:
    """FAISS IndexFlatIP: every probe against every item."""

    family = "exact"
    candidates_kind = "distance computations"

    def __init__(self, dim: int, max_probes: int | None):
        self.name = "exact"
        self.index = faiss.IndexFlatIP(dim)
        self.max_probes = max_probes

    def train(self, x: np.ndarray) -> None:
        pass

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def points(self) -> list[Point]:
        return [Point("exact (FAISS Flat)", "flat")]

    def prepare(self, point: Point) -> dict:
        return {}

    def search(self, q, k, point):
        _, ids = self.index.search(q, k)
        return ids, np.full(q.shape[0], float(self.index.ntotal))

    def scanned(self, q, k, point):
        return np.full(q.shape[0], float(self.index.ntotal))

    def memory(self) -> dict[str, int]:
        return {"index": 0, "features": self.index.ntotal * self.index.d * 4}

    def describe(self) -> dict:
        return {"faiss": "IndexFlatIP"}


class HNSWMethod:
    """FAISS IndexHNSWFlat (Malkov & Yashunin 2018), efSearch sweep."""

    family = "hnsw"
    candidates_kind = "distance computations"
    max_probes = None

    def __init__(self, dim: int, m: int, ef_construction: int, ef_search: Sequence[int]):
        self.name = f"hnsw-M{m}"
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.m, self.ef_construction, self.ef_search = m, ef_construction, tuple(ef_search)

    def train(self, x: np.ndarray) -> None:
        pass

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def points(self) -> list[Point]:
        return [Point(f"HNSW M={self.m}", f"efSearch={ef}", {"efSearch": ef}) for ef in self.ef_search]

    def prepare(self, point: Point) -> dict:
        return {}

    def search(self, q, k, point):
        params = faiss.SearchParametersHNSW(efSearch=max(point.params["efSearch"], k))
        faiss.cvar.hnsw_stats.reset()
        _, ids = self.index.search(q, k, params=params)
        return ids, np.full(q.shape[0], faiss.cvar.hnsw_stats.ndis / q.shape[0])

    def scanned(self, q, k, point):
        return self.search(q, k, point)[1]

    def memory(self) -> dict[str, int]:
        h = self.index.hnsw
        graph = h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        return {"index": int(graph), "features": self.index.ntotal * self.index.d * 4}

    def describe(self) -> dict:
        return {"faiss": "IndexHNSWFlat", "M": self.m, "efConstruction": self.ef_construction}


class IVFMethod:
    """FAISS IndexIVFFlat with a flat coarse quantizer trained on the training set; nprobe sweep."""

    family = "ivf"
    candidates_kind = "distance computations"
    max_probes = None

    def __init__(self, dim: int, nlist: int, nprobe: Sequence[int]):
        self.name = f"ivf{nlist}-flat"
        self.quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        self.nlist = nlist
        self.nprobe = tuple(p for p in nprobe if p <= nlist) or (nlist,)

    def train(self, x: np.ndarray) -> None:
        self.index.train(x)

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def points(self) -> list[Point]:
        return [Point(f"IVF-Flat nlist={self.nlist}", f"nprobe={p}", {"nprobe": p}) for p in self.nprobe]

    def prepare(self, point: Point) -> dict:
        return {}

    def search(self, q, k, point):
        faiss.cvar.indexIVF_stats.reset()
        _, ids = self.index.search(q, k, params=faiss.SearchParametersIVF(nprobe=point.params["nprobe"]))
        return ids, np.full(q.shape[0], faiss.cvar.indexIVF_stats.ndis / q.shape[0])

    def scanned(self, q, k, point):
        return self.search(q, k, point)[1]

    def memory(self) -> dict[str, int]:
        n, d = self.index.ntotal, self.index.d
        return {"index": n * 8 + self.nlist * d * 4, "features": n * d * 4}

    def describe(self) -> dict:
        return {"faiss": "IndexIVFFlat", "nlist": self.nlist, "quantizer": "IndexFlatIP"}


class FactoryMethod:
    """A FAISS ``index_factory`` anchor with an exact float refine stage (``...,RFlat``): every
    combination of ``grid`` (``faiss.ParameterSpace`` names, e.g. ``nprobe``, ``k_factor_rf``)."""

    candidates_kind = "items reranked"
    max_probes = None

    def __init__(self, family: str, key: str, dim: int, metric: int, grid: dict[str, Sequence[int]]):
        self.family, self.name, self.key, self.metric = family, key, key, metric
        self.index = faiss.index_factory(dim, key, metric)
        self.base = faiss.downcast_index(faiss.downcast_index(self.index).base_index)
        self.ivf = faiss.try_extract_index_ivf(self.base)
        self.grid = {name: tuple(values) for name, values in grid.items()}
        self.space = faiss.ParameterSpace()

    def train(self, x: np.ndarray) -> None:
        self.index.train(x)

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def points(self) -> list[Point]:
        names = list(self.grid)
        return [Point(self.key, " ".join(f"{n}={v}" for n, v in zip(names, values)), dict(zip(names, values)))
                for values in itertools.product(*self.grid.values())]  # fmt: skip

    def prepare(self, point: Point) -> dict:
        self.space.set_index_parameters(self.index, ",".join(f"{n}={v}" for n, v in point.params.items()))
        return {}

    def search(self, q, k, point):
        _, ids = self.index.search(q, k)
        return ids, np.full(q.shape[0], float(k * point.params.get("k_factor_rf", 1)))

    def scanned(self, q, k, point):
        if self.ivf is None:
            return np.full(q.shape[0], float(self.index.ntotal))
        _, lists = self.ivf.quantizer.search(q, self.ivf.nprobe)
        sizes = np.array([self.ivf.invlists.list_size(i) for i in range(self.ivf.nlist)], dtype=np.float64)
        return sizes[lists].sum(axis=1)

    def memory(self) -> dict[str, int]:
        n = self.index.ntotal
        index = n * self.base.sa_code_size()
        if self.ivf is not None:  # ids and centroids
            index += n * 8 + self.ivf.nlist * self.ivf.d * 4
        return {"index": int(index), "features": n * self.index.d * 4}

    def describe(self) -> dict:
        return {"faiss": self.key, "metric": "L2" if self.metric == faiss.METRIC_L2 else "inner product",
                "base": type(self.base).__name__, "grid": self.grid}  # fmt: skip


class HashMethod:
    """hashindex.HashIndex: binary codes for the Hamming stage, exact rerank on stored features.

    Modes: ``default`` (``search(q, k)`` with no options: whatever the library does by
    default), ``candidates`` (the c Hamming-nearest), ``asymmetric`` (the c best by the query's
    projection against the codes, a flat fast-scan) and ``radius`` (Hamming <= r, per backend).
    With ``partitions`` the index is built with ``HashIndex(..., partitions=partitions)`` and the
    modes are the default search, the ``nprobe x candidates`` sweep (asymmetric ranking), and
    ``search(q, k, recall=r)`` / ``tune(recall=r)`` then ``search(q, k)`` where the library has them.
    """

    family = "hash"
    candidates_kind = "items reranked"
    max_probes = None

    def __init__(
        self,
        name: str,
        dim: int,
        hasher,
        fit: bool,
        feature_dtype: str,
        candidates: Sequence[int],
        radii: Sequence[int] = (),
        backends: Sequence[str] = (),
        accel_radii: Sequence[int] = (),
        default: bool = False,
        asymmetric: Sequence[int] = (),
        partitions: str | int | None = None,
        spill: int = 1,
        part_nprobe: Sequence[int] = (),
        recall_targets: Sequence[float] = (),
    ):
        self.name, self.fit = name, fit
        self.asymmetric = tuple(asymmetric)  # candidate budgets ranked asymmetrically
        extra = {}
        if "partitions" in inspect.signature(HashIndex).parameters:  # a flat method asks for none
            extra["partitions"] = partitions
        if spill != 1:
            extra["partition_spill"] = spill
        self.index = HashIndex(dim, hasher, metric="cosine", backend="flat", feature_dtype=feature_dtype, **extra)
        self.partitions, self.spill = partitions, spill
        self.part_nprobe, self.recall_targets = tuple(part_nprobe), tuple(recall_targets)
        self.candidates, self.radii = tuple(candidates), tuple(radii)
        self.backends, self.accel_radii, self.default = tuple(backends), tuple(accel_radii), default
        self._built: set[str] = {"flat"}

    def train(self, x: np.ndarray) -> None:
        if self.fit:
            self.index.fit(x)

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def _nlist(self) -> int | None:
        """Lists of the partition stage (built or to be built); None without one."""
        plan = getattr(self.index, "_partition_plan", None)  # no public accessor yet
        return plan()[0] if plan is not None else None

    def points(self) -> list[Point]:
        pts = [Point(f"{self.name} default", "search(q, k)", {})] if self.default else []
        if self.partitions is not None:
            nlist = self._nlist()
            nprobe = [p for p in self.part_nprobe if nlist is not None and p <= nlist]
            asym = {"ranking": "asymmetric"}
            pts += [Point(f"{self.name} nprobe={p}", f"nprobe={p} c={c}", {"nprobe": p, "candidates": c, **asym})
                    for p in nprobe for c in self.asymmetric]  # fmt: skip
            if "recall" in inspect.signature(self.index.search).parameters:  # tune(recall=r), then search(recall=r)
                pts += [Point(f"{self.name} recall=", f"recall={r}", {"recall": r}) for r in self.recall_targets]
                if self.default:  # the default search again, now that the index has tuned points
                    pts.append(Point(f"{self.name} default", "search(q, k) tuned", {}))
            return pts
        ham = {"ranking": "hamming"}
        pts += [Point(f"{self.name} top-c", f"c={c}", {"candidates": c, **ham}) for c in self.candidates]
        pts += [Point(f"{self.name} asym top-c", f"c={c} asym", {"candidates": c, "ranking": "asymmetric"})
                for c in self.asymmetric]
        for backend in self.backends:
            radii = self.radii if backend == "flat" else [r for r in self.radii if r in self.accel_radii]
            curve = f"{self.name} radius {backend}"
            pts += [Point(curve, f"r={r} {backend}", {"radius": r, "backend": backend}) for r in radii]
        if self.default:  # Hamming ranking with neither radius nor candidates: multi-probe
            pts.append(Point(f"{self.name} multi-probe", "multi-probe", ham))
        return pts

    def prepare(self, point: Point) -> dict:
        if "recall" in point.params and hasattr(self.index, "tune"):
            t = time.perf_counter()
            self.index.tune(recall=point.params["recall"], k=10, progress=False)
            return {"tune_s": time.perf_counter() - t}
        if "nprobe" in point.params and "partitions" not in self._built:
            t = time.perf_counter()  # the partition stage is trained and filled on first use
            self.index.search(self.index.get_features(self.index.ids[:1]), 1, nprobe=1)
            self._built.add("partitions")
            return {"partition_build_s": time.perf_counter() - t}
        backend = point.params.get("backend", "flat")
        self.index.backend = backend
        if backend in self._built:
            return {}
        # the accelerator index is built lazily by the first range query on it
        t = time.perf_counter()
        self.index.range_search(self.index.codes[:1], 0)
        self._built.add(backend)
        return {"backend_build_s": time.perf_counter() - t}

    SEARCH_ARGS = ("radius", "candidates", "ranking", "nprobe", "recall")

    def _search(self, q, k, point):
        return self.index.search(q, k, **{a: v for a, v in point.params.items() if a in self.SEARCH_ARGS})

    def search(self, q, k, point):
        res = self._search(q, k, point)
        return res.ids, res.n_candidates.astype(np.float64)

    def scanned(self, q, k, point):
        """The result's ``n_scanned`` where the library reports it; otherwise every code for a flat
        scan (Hamming top-c, asymmetric, radius on the flat backend), the candidates on the hash
        tables, unknown (NaN) for partitioned modes."""
        res = self._search(q, k, point)
        if getattr(res, "n_scanned", None) is not None:
            return np.asarray(res.n_scanned, dtype=np.float64)
        if "radius" in point.params and point.params.get("backend", "flat") != "flat":
            return res.n_candidates.astype(np.float64)
        stage = getattr(self.index, "_part", None)  # no public accessor yet: the probed lists' sizes
        if "nprobe" in point.params and stage is not None and stage.has_lists:
            _, lists = stage.coarse.search(np.ascontiguousarray(q, dtype=np.float32), point.params["nprobe"])
            return stage.list_sizes()[lists].sum(axis=1).astype(np.float64)
        if self.partitions is not None:
            return np.full(q.shape[0], np.nan)  # the library picks the setting (flat or partitioned)
        return np.full(q.shape[0], float(len(self.index)))  # a flat scan of every code

    def memory(self) -> dict[str, int]:
        usage = self.index.memory_usage()  # codes, ids (and partition lists where the library has them)
        return {"index": sum(v for key, v in usage.items() if key != "features"), "features": usage["features"]}

    def describe(self) -> dict:
        h = self.index.hasher
        return {
            "hashindex": "HashIndex",
            "hasher": getattr(h, "kind", type(h).__name__),
            "bits": self.index.bits,
            "feature_dtype": self.index.feature_dtype,
            "partitions": self.partitions,
            "partition_spill": self.spill,
            "partition_lists": self._nlist() if self.partitions is not None else None,
            "model": str(getattr(h, "path", "")) or None,
            "model_sha256": getattr(h, "sha256", None),
        }


def make_methods(cfg: BenchConfig, dim: int, n_items: int, n_probes: int) -> tuple[list, list[dict]]:
    """Method constructors in run order, and the methods skipped with the reason."""
    makers, skipped = [], []
    exact_probes = min(cfg.exact_probes or n_probes, n_probes)
    hash_kw = dict(feature_dtype=cfg.feature_dtype, candidates=cfg.candidates, radii=cfg.radii,
                   backends=cfg.backends, accel_radii=cfg.accel_radii, default=True,
                   asymmetric=cfg.candidates if cfg.asymmetric else ())  # fmt: skip
    part_kw = dict(feature_dtype=cfg.feature_dtype, candidates=(), default=True, asymmetric=cfg.part_candidates,
                   partitions=cfg.partitions, part_nprobe=cfg.part_nprobe, recall_targets=cfg.recall_targets)  # fmt: skip
    has_partitions = "partitions" in inspect.signature(HashIndex).parameters
    anchor_nlist = cfg.anchor_lists(n_items)
    anchor_nprobe = tuple(p for p in cfg.anchor_nprobe if p <= anchor_nlist) or (anchor_nlist,)
    anchors = {  # family: (index_factory key, metric, ParameterSpace grid)
        "ivfpq": (f"IVF{anchor_nlist},PQ{dim // 4}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT,
                  {"nprobe": anchor_nprobe, "k_factor_rf": cfg.k_factor}),
        # RaBitQ in L2 (same ranking on unit vectors): faiss 1.15.1's IVF-RaBitQ loses recall with
        # METRIC_INNER_PRODUCT even when every list is probed
        "rabitq": ("RaBitQfs,RFlat", faiss.METRIC_L2, {"k_factor_rf": cfg.k_factor}),
        "ivfrabitq": (f"IVF{anchor_nlist},RaBitQfs,RFlat", faiss.METRIC_L2,
                      {"nprobe": anchor_nprobe, "k_factor_rf": cfg.k_factor}),
    }  # fmt: skip
    for family in cfg.methods:
        if family == "exact":
            makers.append(lambda: ExactMethod(dim, exact_probes))
        elif family == "hnsw":
            makers.append(lambda: HNSWMethod(dim, cfg.hnsw_m, cfg.ef_construction, cfg.ef_search))
        elif family == "ivf":
            makers.append(lambda: IVFMethod(dim, cfg.ivf_nlist(n_items), cfg.nprobe))
        elif family in anchors:
            if family == "ivfpq" and dim % 4:
                skipped.append({"method": family, "reason": f"PQ{dim}/4 needs a dimension divisible by 4, got {dim}"})
                continue
            key, metric, grid = anchors[family]
            makers.append(lambda a=(family, key, dim, metric, grid): FactoryMethod(*a))
        elif family == "sign":
            cands = tuple(cfg.k * o for o in cfg.oversample)
            makers.append(lambda: HashMethod(f"sign-{dim}", dim, SignHasher(dim), True, cfg.feature_dtype, cands))
        elif family in ("pca", "itq"):
            make = PCASignHasher if family == "pca" else ITQHasher
            for bits in cfg.bits:
                if bits > dim or bits % 8:
                    skipped.append({"method": f"{family}-{bits}", "reason": f"bits must be a multiple of 8 <= dim {dim}"})
                    continue
                makers.append(lambda make=make, family=family, bits=bits: HashMethod(
                    f"{family}-{bits}", dim, make(dim, bits), True, **hash_kw))  # fmt: skip
                if cfg.partitions is not None and not has_partitions:
                    skipped.append({"method": f"{family}-{bits}-part",
                                    "reason": "HashIndex has no partitions= argument in this checkout"})
                elif cfg.partitions is not None:
                    for spill in cfg.spill:
                        makers.append(lambda make=make, family=family, bits=bits, spill=spill: HashMethod(
                            f"{family}-{bits}-part" + (f"-spill{spill}" if spill > 1 else ""), dim, make(dim, bits),
                            True, spill=spill, **part_kw))  # fmt: skip
        elif family == "model":
            if not cfg.model:
                skipped.append({"method": "model", "reason": "no --model PATH.onnx given"})
                continue
            from hashindex.serving.encoder import OnnxEncoder  # onnxruntime only when a model is benchmarked

            enc = OnnxEncoder(cfg.model, providers="cpu", threads=max(cfg.threads))
            if enc.kind != "features" or enc.dim != dim:
                skipped.append({"method": "model", "reason": f"{cfg.model} takes {enc.kind} {enc.input_shape}, "
                                f"the benchmark has features of dimension {dim}"})  # fmt: skip
                continue
            makers.append(lambda enc=enc: HashMethod(f"model-{enc.bits}", dim, enc, False, **hash_kw))
    return makers, skipped


# =========================================================================== measurement
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
    current, peak = rss_mib()
    return {"train_s": train_s, "add_s": add_s, "total_s": train_s + add_s,
            "rss_after_build_mib": current, "peak_rss_mib": peak}  # fmt: skip


# =========================================================================== run record
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
        "threads": threads[0] if len(threads) == 1 else list(threads),
        "git_commit": commit,
    }


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


# =========================================================================== command line
def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    d = BenchConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))  # fmt: skip
    ap.add_argument("--name", default="", help="result name (default: synthetic_<N> or the data file's stem)")
    ap.add_argument("--n", type=int, default=d.n, help="synthetic gallery items")
    ap.add_argument("--dim", type=int, default=d.dim)
    ap.add_argument("--per-identity", default=str(d.per_identity), help='images per identity: an int or "heavy"')
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--data", default=None, help="embeddings .npz with labels (e.g. the LFW dev split)")
    ap.add_argument("--val-fraction", type=float, default=d.val_fraction, help="--data: identities held out")
    ap.add_argument("--probes", type=int, default=d.probes)
    ap.add_argument("--exact-probes", type=int, default=None, help="probes with ground truth (default: all)")
    ap.add_argument("--train-items", type=int, default=None, help="synthetic training items (default: max(20000, 40 nlist))")
    ap.add_argument("--methods", nargs="+", default=list(d.methods), choices=METHODS)
    ap.add_argument("--model", default=None, help="learned hash model (ONNX, features input)")
    ap.add_argument("--train-recipe", default=None,
                    help="train this recipe (e.g. 'learned') on the training identities, export it and use it as --model")
    ap.add_argument("--bits", type=int, nargs="+", default=list(d.bits), help="PCA / ITQ code lengths")
    ap.add_argument("--k", type=int, default=d.k)
    ap.add_argument("--threads", type=int, nargs="+", default=list(d.threads),
                    help="FAISS / BLAS threads; several counts: each setting measured at each")
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--repeat", type=int, default=d.repeat, help="throughput: best of this many passes")
    ap.add_argument("--latency-queries", type=int, default=d.latency_queries)
    ap.add_argument("--feature-dtype", default=d.feature_dtype, choices=("float32", "float16"))
    ap.add_argument("--chunk", type=int, default=d.chunk)
    ap.add_argument("--hnsw-m", type=int, default=d.hnsw_m)
    ap.add_argument("--ef-construction", type=int, default=d.ef_construction)
    ap.add_argument("--ef-search", type=int, nargs="+", default=list(d.ef_search))
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 sqrt(N))")
    ap.add_argument("--nprobe", type=int, nargs="+", default=list(d.nprobe))
    ap.add_argument("--anchor-nlist", type=int, default=None, help="ivfpq / ivfrabitq lists (default ~N/1000, 2^k)")
    ap.add_argument("--anchor-nprobe", type=int, nargs="+", default=list(d.anchor_nprobe))
    ap.add_argument("--k-factor", type=int, nargs="+", default=list(d.k_factor), help="refine anchors: k_factor_rf")
    ap.add_argument("--partitions", default=None,
                    help="also a HashIndex(..., partitions=P) per code length (an int: lists; else passed as given)")
    ap.add_argument("--part-nprobe", type=int, nargs="+", default=list(d.part_nprobe))
    ap.add_argument("--spill", type=int, nargs="+", default=list(d.spill),
                    help="--partitions: one method per partition_spill value (lists each item is put in)")
    ap.add_argument("--part-candidates", type=int, nargs="+", default=list(d.part_candidates))
    ap.add_argument("--recall-targets", type=float, nargs="+", default=list(d.recall_targets))
    ap.add_argument("--oversample", type=int, nargs="+", default=list(d.oversample))
    ap.add_argument("--candidates", type=int, nargs="+", default=list(d.candidates))
    ap.add_argument("--radii", type=int, nargs="+", default=list(d.radii))
    ap.add_argument("--backends", nargs="+", default=list(d.backends), choices=BACKENDS)
    ap.add_argument("--accel-radii", type=int, nargs="+", default=list(d.accel_radii))
    ap.add_argument("--max-candidates", type=int, default=d.max_candidates)
    ap.add_argument("--out-dir", default=d.out_dir)
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--no-asymmetric", action="store_true", help="skip the asymmetric-ranking candidate sweep")
    a = ap.parse_args(argv)
    per = a.per_identity if a.per_identity == "heavy" else int(a.per_identity)
    return BenchConfig(
        name=a.name, n=a.n, dim=a.dim, per_identity=per, seed=a.seed, data=a.data, val_fraction=a.val_fraction,
        probes=a.probes, exact_probes=a.exact_probes, train_items=a.train_items, methods=tuple(a.methods),
        model=a.model, train_recipe=a.train_recipe, bits=tuple(a.bits), k=a.k, threads=tuple(a.threads), batch=a.batch,
        repeat=a.repeat,
        latency_queries=a.latency_queries, feature_dtype=a.feature_dtype, chunk=a.chunk, hnsw_m=a.hnsw_m,
        ef_construction=a.ef_construction, ef_search=tuple(a.ef_search), nlist=a.nlist, nprobe=tuple(a.nprobe),
        anchor_nlist=a.anchor_nlist, anchor_nprobe=tuple(a.anchor_nprobe), k_factor=tuple(a.k_factor),
        partitions=None if a.partitions is None else (int(a.partitions) if a.partitions.isdigit() else a.partitions),
        part_nprobe=tuple(a.part_nprobe), spill=tuple(a.spill), part_candidates=tuple(a.part_candidates),
        recall_targets=tuple(a.recall_targets),
        oversample=tuple(a.oversample), candidates=tuple(a.candidates), radii=tuple(a.radii),
        backends=tuple(a.backends), accel_radii=tuple(a.accel_radii), max_candidates=a.max_candidates,
        out_dir=a.out_dir, plots=not a.no_plots, asymmetric=not a.no_asymmetric,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(parse_args(argv), argv)


if __name__ == "__main__":
    main()
