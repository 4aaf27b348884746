"""The methods under test, each built once and searched at every point of its grid.

A method is trained, filled chunk by chunk, then asked for its :class:`Point` s; ``prepare``
readies one (returning one-off costs, e.g. a lazily built structure) and ``search`` returns the
top-k ids and the candidates compared per query. Only public hashindex API is used.
"""

from __future__ import annotations

import importlib.util
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import faiss
import numpy as np

from hashindex import HashIndex
from hashindex.serving.hashers import ITQHasher, PCASignHasher, SignHasher

from benchlib.config import BenchConfig


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


class ScannMethod:
    """Google ScaNN (``scann`` on PyPI, the ``bench`` extra): a k-means tree with SOAR spilling,
    anisotropic (AH) 4-bit codes scored with LUT16, then an exact float reorder; a sweep of
    ``leaves_to_search`` x ``reorder`` (``pre_reorder_num_neighbors``). ScaNN builds from the whole
    gallery at once, so :meth:`add` collects the chunks and :meth:`finish` builds (timed as build).
    ``search_batched`` runs on the calling thread only."""

    family = "scann"
    candidates_kind = "items reranked"
    max_probes = None

    def __init__(self, dim: int, leaves: int, leaves_to_search: Sequence[int], reorder: Sequence[int],
                 dims_per_block: int, soar_lambda: float, threads: int):  # fmt: skip
        import scann  # lazily: an optional benchmark dependency (make_methods checks it is there)

        self._scann = scann
        self.dim, self.leaves, self.dims_per_block, self.soar_lambda = dim, leaves, dims_per_block, soar_lambda
        self.leaves_to_search = tuple(v for v in leaves_to_search if v <= leaves) or (leaves,)
        self.reorder, self.threads = tuple(reorder), threads
        self.name = f"scann-{leaves}" + ("-soar" if soar_lambda else "")
        self._chunks: list[np.ndarray] = []
        self.searcher = None
        self.n = 0

    def train(self, x: np.ndarray) -> None:
        pass  # ScaNN trains its tree and codebooks on (a sample of) the gallery itself

    def add(self, x: np.ndarray) -> None:
        self._chunks.append(np.asarray(x, dtype=np.float32))

    def finish(self) -> None:
        x = np.concatenate(self._chunks)
        self._chunks.clear()
        self.n = x.shape[0]
        tree = dict(num_leaves=self.leaves, num_leaves_to_search=self.leaves_to_search[0],
                    training_sample_size=min(self.n, 250_000), spherical=True)  # fmt: skip
        if self.soar_lambda:
            tree["soar_lambda"] = self.soar_lambda
        builder = self._scann.scann_ops_pybind.builder(x, 10, "dot_product").set_n_training_threads(self.threads)
        self.searcher = (builder.tree(**tree).score_ah(self.dims_per_block, anisotropic_quantization_threshold=0.2)
                         .reorder(max(self.reorder)).build())  # fmt: skip

    def points(self) -> list[Point]:
        return [Point(self.name, f"leaves={lv} reorder={r}", {"leaves": lv, "reorder": r})
                for lv in self.leaves_to_search for r in self.reorder]  # fmt: skip

    def prepare(self, point: Point) -> dict:
        return {}

    def search(self, q, k, point):
        ids, _ = self.searcher.search_batched(np.ascontiguousarray(q, dtype=np.float32), final_num_neighbors=k,
                                              pre_reorder_num_neighbors=max(point.params["reorder"], k),
                                              leaves_to_search=point.params["leaves"])  # fmt: skip
        return np.asarray(ids, dtype=np.int64), np.full(q.shape[0], float(max(point.params["reorder"], k)))

    def scanned(self, q, k, point):
        return np.full(q.shape[0], self.n * point.params["leaves"] / self.leaves * (2 if self.soar_lambda else 1))

    def memory(self) -> dict[str, int]:
        codes = self.n * self.dim // self.dims_per_block // 2 * (2 if self.soar_lambda else 1)
        return {"index": int(codes + self.n * 4 + self.leaves * self.dim * 4), "features": self.n * self.dim * 4}

    def describe(self) -> dict:
        return {"scann": getattr(self._scann, "__version__", "?"), "num_leaves": self.leaves, "spherical": True,
                "soar_lambda": self.soar_lambda or None, "score_ah_dims_per_block": self.dims_per_block,
                "anisotropic_quantization_threshold": 0.2, "reorder": "float32",
                "scanned": "estimated: gallery x leaves_to_search / leaves (x2 with SOAR)"}  # fmt: skip


def scann_available() -> bool:
    return importlib.util.find_spec("scann") is not None


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
        self.index = HashIndex(dim, hasher, metric="cosine", backend="flat", feature_dtype=feature_dtype,
                               partitions=partitions, partition_spill=spill)  # fmt: skip
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
        return self.index.partition_lists

    def points(self) -> list[Point]:
        pts = [Point(f"{self.name} default", "search(q, k)", {})] if self.default else []
        if self.partitions is not None:
            nlist = self._nlist()
            nprobe = [p for p in self.part_nprobe if nlist is not None and p <= nlist]
            asym = {"ranking": "asymmetric"}
            pts += [Point(f"{self.name} nprobe={p}", f"nprobe={p} c={c}", {"nprobe": p, "candidates": c, **asym})
                    for p in nprobe for c in self.asymmetric]  # fmt: skip
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
        if "recall" in point.params:
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

    def served_point(self, k: int) -> dict:
        """The operating point a no-argument ``search(q, k)`` serves once its first search has
        measured it (empty before, or for an index without one)."""
        p = self.index.operating_point(k=k)
        if p is None:
            return {}
        return {"served_nprobe": p.nprobe, "served_candidates": p.candidates, "served_nlist": p.nlist}

    SEARCH_ARGS = ("radius", "candidates", "ranking", "nprobe", "recall")

    def _search(self, q, k, point):
        return self.index.search(q, k, **{a: v for a, v in point.params.items() if a in self.SEARCH_ARGS})

    def search(self, q, k, point):
        res = self._search(q, k, point)
        return res.ids, res.n_candidates.astype(np.float64)

    def scanned(self, q, k, point):
        """The result's ``n_scanned`` where the library reports it (``SearchResult.n_scanned``, the
        search pipeline's public count); until then every code for a flat scan (Hamming top-c,
        asymmetric, radius on the flat backend), the candidates on the hash tables, unknown (NaN)
        for partitioned modes: nothing here reads the index's private state."""
        res = self._search(q, k, point)
        if getattr(res, "n_scanned", None) is not None:
            return np.asarray(res.n_scanned, dtype=np.float64)
        if "radius" in point.params and point.params.get("backend", "flat") != "flat":
            return res.n_candidates.astype(np.float64)
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
        elif family == "scann":
            if not scann_available():
                skipped.append({"method": "scann", "reason": "the scann package is not installed (pip install -e '.[bench]')"})
                continue
            makers.append(lambda: ScannMethod(dim, cfg.scann_lists(n_items), cfg.scann_search, cfg.scann_reorder,
                                              cfg.scann_dims_per_block, cfg.scann_soar, max(cfg.threads)))  # fmt: skip
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
                if cfg.partitions is not None:
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
