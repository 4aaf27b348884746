"""Every benchmark option, written once: a dataclass field is its default, type, flag and help.

``--some-name`` is the field ``some_name``; tuples take several values (``nargs="+"``); a boolean
field that defaults to true is switched off with ``--no-<name>``. :func:`parse_args` builds the
parser from the fields, so an option cannot be added in one place and forgotten in another.
"""

from __future__ import annotations

import argparse
import math
import typing
from dataclasses import dataclass, field, fields
from collections.abc import Sequence

from hashindex.core.errors import InputError

METHODS = ("exact", "hnsw", "ivf", "ivfpq", "rabitq", "ivfrabitq", "scann", "sign", "pca", "itq", "model")
DEFAULT_METHODS = ("exact", "hnsw", "ivf", "sign", "pca", "itq", "model")  # the anchors are opt-in
BACKENDS = ("flat", "hash", "multihash")


def opt(default, help: str = "", *, choices=None, parse=None, metavar=None):
    """A config field with its command-line help (``parse``: str -> value, for union types)."""
    return field(default=default, metadata={"help": help, "choices": choices, "parse": parse, "metavar": metavar})


def _int_or_heavy(s: str) -> int | str:
    return s if s == "heavy" else int(s)


def _partitions(s: str) -> int | str:
    return int(s) if s.isdigit() else s


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run depends on (recorded verbatim in the JSON)."""

    name: str = opt("", "result name (default: synthetic_<N> or the data file's stem)")
    n: int = opt(100_000, "synthetic gallery items")
    dim: int = opt(128, "feature dimension (synthetic)")
    per_identity: int | str = opt(4, 'images per gallery identity: an int or "heavy" (Zipf)', parse=_int_or_heavy)
    seed: int = opt(0, "gallery seed (synthetic generator; identity split of --data)")
    data: str | None = opt(None, "embeddings .npz with labels (e.g. the LFW dev split) instead of synthetic data")
    val_fraction: float = opt(0.3, "--data: share of identities held out for gallery and probes")
    probes: int = opt(1000, "queries")
    exact_probes: int | None = opt(None, "probes with exact ground truth (default: all)")
    train_items: int | None = opt(None, "synthetic training items (default: max(20000, 40 nlist))")
    methods: tuple[str, ...] = opt(DEFAULT_METHODS, "methods to run", choices=METHODS)
    model: str | None = opt(None, "learned hash model (ONNX, features input)")
    train_recipe: str | None = opt(None, "train this hashindex.training.recipes recipe on the training side, use it as --model")
    bits: tuple[int, ...] = opt((64,), "PCA / ITQ code lengths")
    k: int = opt(10, "results per query (recall@k)")
    threads: tuple[int, ...] = opt((1,), "FAISS / BLAS threads; several counts: each setting measured at each")
    batch: int = opt(1000, "queries per search call (throughput)")
    repeat: int = opt(3, "throughput: best of this many passes over the probes")
    latency_queries: int = opt(200, "single-query latency: this many probes one at a time")
    feature_dtype: str = opt("float32", "hashindex feature store", choices=("float32", "float16"))
    chunk: int = opt(100_000, "gallery rows per add() call")
    hnsw_m: int = opt(32, "HNSW M")
    ef_construction: int = opt(40, "HNSW efConstruction")
    ef_search: tuple[int, ...] = opt((16, 32, 64, 128, 256), "HNSW efSearch sweep")
    nlist: int | None = opt(None, "IVF-Flat lists (default 4 sqrt(N))")
    nprobe: tuple[int, ...] = opt((1, 2, 4, 8, 16, 32, 64, 128, 256), "IVF-Flat nprobe sweep")
    anchor_nlist: int | None = opt(None, "ivfpq / ivfrabitq lists (default ~N/1000, a power of two: 1024 at 1M)")
    anchor_nprobe: tuple[int, ...] = opt((16, 32, 64, 128, 256, 512), "ivfpq / ivfrabitq nprobe sweep")
    k_factor: tuple[int, ...] = opt((1, 2, 5, 10, 20, 50), "refine anchors: k_factor_rf (items reranked = k x this)")
    scann_leaves: int | None = opt(None, "ScaNN tree leaves (default 2 sqrt(N))")
    scann_search: tuple[int, ...] = opt((10, 20, 50, 100, 200, 400), "ScaNN leaves_to_search sweep")
    scann_reorder: tuple[int, ...] = opt((20, 50, 100, 200, 500), "ScaNN reorder (exact float rerank) sweep")
    scann_dims_per_block: int = opt(2, "ScaNN asymmetric hashing: dimensions per 4-bit block (2: 256 bits at 128-d)")
    scann_soar: float = opt(1.5, "ScaNN SOAR spilling lambda (0: no spilling)")
    partitions: int | str | None = opt(
        None, "also a HashIndex(..., partitions=P) per code length (an int: lists; else passed as given)",
        parse=_partitions,
    )  # fmt: skip
    part_nprobe: tuple[int, ...] = opt((8, 16, 32, 64, 128, 256, 512), "--partitions: nprobe sweep")
    spill: tuple[int, ...] = opt((1,), "--partitions: one method per partition_spill value (lists each item is put in)")
    part_candidates: tuple[int, ...] = opt((20, 50, 100, 200, 500), "--partitions: candidates sweep")
    recall_targets: tuple[float, ...] = opt((0.95, 0.99), "summary targets, and search(recall=) / tune(recall=)")
    oversample: tuple[int, ...] = opt((1, 2, 3, 5, 10), "sign: candidates = k x oversample")
    candidates: tuple[int, ...] = opt((10, 20, 50, 100, 200, 500, 1000, 2000, 5000), "hash methods: candidates sweep")
    radii: tuple[int, ...] = opt(
        (0, 1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 36, 40), "hash methods: radius sweep"
    )
    backends: tuple[str, ...] = opt(BACKENDS, "Hamming backends for the radius sweep", choices=BACKENDS)
    accel_radii: tuple[int, ...] = opt((0, 1, 2, 3), "radii tried on the hash / multihash backends")
    max_candidates: int = opt(20_000, "a radius sweep stops before a radius averaging more than this")
    asymmetric: bool = opt(True, "pca / itq / model: also the candidate sweep with ranking='asymmetric'")
    out_dir: str = opt("benchmarks/results", "where the JSON and plots go")
    plots: bool = opt(True, "write the PNG plots")

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

    def scann_lists(self, n_items: int) -> int:
        """ScaNN leaves: 2 sqrt(N) (2000 at 1M, as in issue 19's measurement)."""
        return self.scann_leaves or max(16, int(round(2 * math.sqrt(n_items))))


def _scalar_type(hint) -> type:
    """``int`` for ``int``, ``int | None``, ``tuple[int, ...]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(hint) is tuple or len(args) == 1:
        return _scalar_type(args[0]) if args else str
    return hint if isinstance(hint, type) else str


def add_arguments(ap: argparse.ArgumentParser, cls=BenchConfig, skip: Sequence[str] = ()) -> None:
    """One flag per field of the dataclass ``cls`` (except ``skip``)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag, meta, hint = "--" + f.name.replace("_", "-"), f.metadata, hints[f.name]
        if hint is bool:
            if f.default:
                ap.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false", help=meta.get("help"))
            else:
                ap.add_argument(flag, action="store_true", help=meta.get("help"))
            continue
        kind = meta.get("parse") or _scalar_type(hint)
        kw = dict(default=f.default, help=meta.get("help"), type=kind, choices=meta.get("choices"))
        if typing.get_origin(hint) is tuple:
            kw.update(nargs="+", default=list(f.default))
        ap.add_argument(flag, **kw)


def from_namespace(ns: argparse.Namespace, cls=BenchConfig, **override):
    """``cls`` from parsed arguments (tuples as tuples)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if hasattr(ns, f.name):
            v = getattr(ns, f.name)
            values[f.name] = tuple(v) if typing.get_origin(hints[f.name]) is tuple else v
    values.update(override)
    return cls(**values)


def parse_args(argv: Sequence[str] | None = None, doc: str = "") -> BenchConfig:
    lines = (doc or BenchConfig.__doc__ or "").splitlines() or [""]
    ap = argparse.ArgumentParser(description=lines[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(lines[1:]))  # fmt: skip
    add_arguments(ap)
    return from_namespace(ap.parse_args(argv))
