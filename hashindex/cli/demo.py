"""``hashindex demo``: the whole pipeline on an embedded default, with no downloads.

synthetic identity gallery (or a real .npz) -> hasher (a hash head trained on identities
disjoint from the gallery, exported to ONNX and run by onnxruntime; or an untrained baseline)
-> HashIndex -> the default search, radius, budget and multi-probe search with exact reranking
-> a table of recall against exact float search, candidates per query, queries per second,
bytes per item; then the default index's default search against exact search (on BLAS) on a
larger gallery (200k items), where the code scan starts to pay.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from hashindex.cli.common import non_negative_int, out_dir, positive_int
from hashindex.core.errors import InputError
from hashindex.core.io import atomic_write_json
from hashindex.evaluation.exact import unit_rows
from hashindex.serving.faiss_settings import blas_products
from hashindex.serving.hashers import HASHER_KINDS
from hashindex.serving.index import HashIndex


DEMO_RECIPE = "learned"
DEMO_EPOCHS = 8  # keeps the demo short (its run time: benchmarks/README.md)
SCALE_QUERIES = 300  # exact search over 200k items is the slow part of the speed-up section (~2-6 s)


@dataclass
class DemoConfig:
    identities: int = 5_000
    per_identity: int = 10
    queries: int = 1_000
    bits: int = 64
    epochs: int | None = None
    hasher: str = "learned"  # "learned" | "itq" | "pca" | "sign"
    data: str | None = None
    out: str = "demo_out"
    seed: int = 0
    train_identities: int = 2_000
    k: int = 10
    radii: tuple[int, ...] | None = None  # default: bits/4, 5 bits/16, 3 bits/8 (16, 20, 24 at 64 bits)
    budgets: tuple[int, ...] = (100, 1_000)
    # the speed-up section: 50,000 identities x 4 = 200k items in HashIndex(dim), the library's
    # default index (residual ITQ codes, no training), against exact search on BLAS (~4 ms per 1M
    # items per query, one thread): ~2x at 200k, where the tuner keeps the flat scan; the gap
    # grows with the gallery (~4x at 1M, ~8x at 10M; benchmarks/README.md).
    scale_identities: int = 50_000


@dataclass
class DemoData:
    train_features: np.ndarray  # identities disjoint from the gallery's
    train_labels: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray
    queries: np.ndarray
    query_labels: np.ndarray
    source: str = ""


@dataclass
class Row:
    mode: str
    recall_at_1: float
    recall_at_10: float
    same_identity_at_1: float
    candidates_mean: float
    candidates_median: float
    qps: float

    def format(self) -> str:
        return (
            f"{self.mode:<18s} {self.recall_at_1:8.3f} {self.recall_at_10:9.3f} {self.same_identity_at_1:9.3f} "
            f"{self.candidates_mean:11.1f} {self.candidates_median:9.0f} {self.qps:11,.0f}"
        )


@dataclass
class DemoReport:
    config: dict
    source: str
    gallery_size: int
    bits: int
    hasher: str
    build_seconds: dict = field(default_factory=dict)
    bytes_per_item: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    scale: dict = field(default_factory=dict)  # the default search vs exact on the larger gallery


def synthetic_data(cfg: DemoConfig) -> DemoData:
    from hashindex.training.data.synthetic import SyntheticGallery

    train = SyntheticGallery(cfg.train_identities, cfg.per_identity, seed=cfg.seed + 1)
    gallery = SyntheticGallery(cfg.identities, cfg.per_identity, seed=cfg.seed)
    tx, ty = train.materialize()
    gx, gy = gallery.materialize()
    qx, qy = gallery.probes(cfg.queries, seed=cfg.seed + 2)
    return DemoData(tx, ty, gx, gy, qx, qy, source=f"synthetic ({cfg.identities:,} identities x {cfg.per_identity})")


def npz_data(cfg: DemoConfig) -> DemoData:
    """Identity-disjoint split of a real .npz: train on 70% of identities; the rest is searched.

    Queries are one image per held-out identity with 2+ images; the gallery holds every other
    held-out image, so each query's identity is present and the query itself is not.
    """
    from hashindex.training.data.embeddings import load_embeddings
    from hashindex.training.data.split import identity_split

    data = load_embeddings(cfg.data)
    if data.labels is None:
        raise InputError(f"{cfg.data}: the demo needs 'labels' to split identities")
    train_idx, val_idx = identity_split(data.labels, val_fraction=0.3, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    val_labels = data.labels[val_idx]
    uniq, counts = np.unique(val_labels, return_counts=True)
    query_idx = []
    for label in rng.permutation(uniq[counts >= 2])[: cfg.queries]:
        query_idx.append(rng.choice(val_idx[val_labels == label]))
    query_idx = np.sort(np.asarray(query_idx, dtype=np.int64))
    gallery_idx = np.setdiff1d(val_idx, query_idx)
    x, y = data.features, data.labels
    return DemoData(
        x[train_idx], y[train_idx], x[gallery_idx], y[gallery_idx], x[query_idx], y[query_idx], source=str(cfg.data)
    )


def make_hasher(cfg: DemoConfig, data: DemoData, out: Path):
    """The index's hasher and a short description of it."""
    dim = data.gallery.shape[1]
    if cfg.hasher != "learned":
        from hashindex.serving.hashers import make_hasher as make_linear

        hasher = make_linear(cfg.hasher, dim, cfg.bits if cfg.hasher != "sign" else dim)
        hasher.fit(data.train_features)
        return hasher, f"{cfg.hasher} (untrained baseline)"
    return _learned_encoder(cfg, data, out)


def _learned_encoder(cfg: DemoConfig, data: DemoData, out: Path):
    try:
        import torch  # noqa: F401
    except ImportError as e:  # the serving-only install has no torch
        raise SystemExit(
            "hashindex demo: the learned hasher needs the train extra (pip install 'hashindex[train]'); "
            "or run with --hasher itq"
        ) from e
    from hashindex.serving.encoder import OnnxEncoder
    from hashindex.export.onnx import export_model
    from hashindex.core.onnx_contract import TrainingInfo
    from hashindex.training.recipes import RECIPES, fit_recipe

    recipe = RECIPES[DEMO_RECIPE]
    result = fit_recipe(
        recipe, data.train_features, data.train_labels, cfg.bits, seed=cfg.seed, progress=True,
        out_dir=str(out / "model"), epochs=cfg.epochs or DEMO_EPOCHS, val_fraction=0.2, patience=3,
    )
    model_path = out / "model.onnx"
    training = TrainingInfo(loss=f"recipe {DEMO_RECIPE} ({recipe.loss} + distillation)", data=data.source)
    export_model(result.model, model_path, result.model.input_spec, training)
    return OnnxEncoder(model_path), f"learned head (recipe '{DEMO_RECIPE}', epoch {result.best_epoch} kept) -> ONNX (onnxruntime)"


def timed_exact_search(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact cosine top-k ids (the ground truth) and the queries/s of the exact baseline.

    The baseline is what a user would run instead: FAISS ``IndexFlatIP`` over the L2-normalised
    gallery, built before the clock starts, so only its search is timed (as hashindex's is), on
    BLAS (its fastest setting; FAISS's own rule takes a per-pair loop below 128000 / D queries).
    """
    baseline = faiss.IndexFlatIP(gallery.shape[1])
    baseline.add(unit_rows(gallery))
    q = unit_rows(queries)
    with blas_products():
        t = time.perf_counter()
        _, ids = baseline.search(q, k)
        qps = len(queries) / (time.perf_counter() - t)
    return ids, qps


def _measure(index: HashIndex, data: DemoData, truth: np.ndarray, k: int, mode: str, **kw) -> Row:
    index.search(data.queries[:10], k=k, **kw)  # warm-up
    t = time.perf_counter()
    res = index.search(data.queries, k=k, **kw)
    qps = len(data.queries) / (time.perf_counter() - t)
    r1 = float(np.mean(res.ids[:, 0] == truth[:, 0]))
    r10 = float(np.mean([len(set(a[a >= 0]) & set(b)) / k for a, b in zip(res.ids, truth[:, :k])]))
    top = res.ids[:, 0]
    same = float(np.mean(np.where(top >= 0, data.gallery_labels[np.maximum(top, 0)] == data.query_labels, False)))
    n = res.n_candidates
    return Row(mode, r1, r10, same, float(n.mean()), float(np.median(n)), qps)


def run_demo(cfg: DemoConfig, verbose: bool = True) -> DemoReport:
    out = out_dir(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)

    t0 = time.perf_counter()
    data = npz_data(cfg) if cfg.data else synthetic_data(cfg)
    say(f"data: {data.source}: gallery {len(data.gallery):,}, queries {len(data.queries):,}, "
        f"hasher training set {len(data.train_features):,} (disjoint identities)")
    t1 = time.perf_counter()
    hasher, description = make_hasher(cfg, data, out)
    t2 = time.perf_counter()
    index = HashIndex(data.gallery.shape[1], hasher, metric="cosine")
    index.add(data.gallery)
    t3 = time.perf_counter()
    index.save(out / "index")
    say(f"hasher: {description}, {index.bits} bits; index saved to {out / 'index'}")

    truth, exact_qps = timed_exact_search(data.gallery, data.queries, cfg.k)

    report = DemoReport(asdict(cfg), data.source, len(index), index.bits, description)
    report.build_seconds = {"data": t1 - t0, "hasher": t2 - t1, "encode_and_add": t3 - t2}
    mem = index.memory_usage()
    report.bytes_per_item = {
        "codes": index.bits / 8,
        "features": mem["features"] / len(index),
        "exact_float32": data.gallery.shape[1] * 4,
    }
    report.rows.append(Row("exact (IndexFlatIP)", 1.0, 1.0, _same_identity(data, truth), float(len(index)), float(len(index)), exact_qps))
    # same-person codes lie a quarter to a third of the bits apart: these radii are where
    # radius search finds them (radius <= 3 finds nearly nothing at 64 bits)
    radii = cfg.radii or (index.bits // 4, 5 * index.bits // 16, 3 * index.bits // 8)
    for r in radii:
        report.rows.append(_measure(index, data, truth, cfg.k, f"radius <= {r}", radius=r))
    for c in cfg.budgets:
        report.rows.append(_measure(index, data, truth, cfg.k, f"budget {c}", candidates=c, ranking="hamming"))
    report.rows.append(_measure(index, data, truth, cfg.k, f"auto (>= {10 * cfg.k})", ranking="hamming"))
    default = _measure(index, data, truth, cfg.k, f"default ({index.default_ranking})")
    report.rows.append(default)

    say("")
    say(f"{'mode':<18s} {'recall@1':>8s} {'recall@10':>9s} {'same-id@1':>9s} {'cand. mean':>11s} {'median':>9s} {'queries/s':>11s}")
    for row in report.rows:
        say(row.format())
    say(f"\nbytes per item: {report.bytes_per_item['codes']:.0f} (code) + {report.bytes_per_item['features']:.0f} "
        f"(feature store) vs {report.bytes_per_item['exact_float32']} for float32 exact search")
    say("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.build_seconds.items()))
    say("\n" + _speedup_line(default, exact_qps, len(index)))
    if cfg.scale_identities:
        report.scale = _scale_section(cfg, say)
    atomic_write_json(out / "report.json", asdict(report))
    say(f"artefacts: {out}/ (report.json, index/{', model.onnx' if cfg.hasher == 'learned' else ''})")
    return report


def _speedup_line(row: Row, exact_qps: float, n: int) -> str:
    speedup = row.qps / exact_qps
    line = f"default search on {n:,} items: recall@1 {row.recall_at_1:.3f} at {speedup:.1f}x exact search"
    if speedup < 1.5:
        line += (f" -- it does not pay at this size: exact search (BLAS) over {n:,} items is about as fast as "
                 f"scanning their codes (the gap grows with the gallery: 11-13x exact at 1M items, benchmarks/README.md)")
    return line


def _scale_section(cfg: DemoConfig, say) -> dict:
    """The default search of the default index, ``HashIndex(dim)``, against exact search on
    ``scale_identities x 4`` synthetic items."""
    from hashindex.training.data.synthetic import SyntheticGallery

    t = time.perf_counter()
    gallery = SyntheticGallery(cfg.scale_identities, 4, seed=cfg.seed + 3)
    x, _ = gallery.materialize()
    q, _ = gallery.probes(min(cfg.queries, SCALE_QUERIES), seed=cfg.seed + 4)
    index = HashIndex(x.shape[1])
    index.add(x)
    build = time.perf_counter() - t
    truth, exact_qps = timed_exact_search(x, q, cfg.k)
    data = DemoData(x[:0], np.zeros(0), x, np.zeros(len(x), np.int64), q, np.zeros(len(q), np.int64))
    row = _measure(index, data, truth, cfg.k, "default")
    say(f"{_speedup_line(row, exact_qps, len(index))} ({index.bits}-bit {index.hasher.kind} codes, "
        f"{row.candidates_mean:.0f} candidates, "
        f"{row.qps:,.0f} vs {exact_qps:,.0f} queries/s; built in {build:.1f}s)")
    return {"items": len(index), "bits": index.bits, "exact_qps": exact_qps, "default": asdict(row)}


def _same_identity(data: DemoData, truth: np.ndarray) -> float:
    return float(np.mean(data.gallery_labels[truth[:, 0]] == data.query_labels))


# -- the command ------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    config = DemoConfig(
        identities=args.identities,
        per_identity=args.per_identity,
        queries=args.queries,
        bits=args.bits,
        epochs=args.epochs,
        data=args.data,
        out=args.out,
        hasher=args.hasher,
        seed=args.seed,
        scale_identities=args.scale_identities,
    )
    run_demo(config)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a synthetic gallery (no downloads)")
    p.add_argument("--identities", type=positive_int, default=5_000)
    p.add_argument("--per-identity", type=positive_int, default=10)
    p.add_argument("--queries", type=positive_int, default=1_000)
    p.add_argument("--bits", type=positive_int, default=64)
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--hasher", choices=("learned", *HASHER_KINDS), default="learned",
                   help="'learned' trains a hash head (needs the train extra); the others need no training")
    p.add_argument("--data", help="run on a real embeddings .npz instead (e.g. ../shared/data/lfw/lfw_mfn128_dev.npz)")
    p.add_argument("--out", default="demo_out", help="directory for the artefacts")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--scale-identities", type=non_negative_int, default=DemoConfig.scale_identities,
                   help="identities (x 4 items) of the gallery comparing the default search with exact search; 0 skips it")
    p.set_defaults(func=cmd_demo)
