"""Learned hash codes vs untrained binarization on people never seen in training (issue 6).

Protocol (one run = one seed of the identity split):

* data: an embeddings ``.npz`` (default the LFW development split, MobileFaceNet 128-d);
* identities split ~70% train / ~30% validation (:func:`hashindex.training.data.identity_split`);
  hashers are fitted / trained on the train rows only;
* gallery: every image; queries: validation images whose identity has >= 2 images; a query
  never retrieves itself;
* per method and bit width:
  (a) ``nn``: share of the gallery to rerank so that the exact float (cosine) nearest
      neighbour is among the Hamming-nearest candidates -- median, p95, p99, expected over
      the order inside tied distances (:mod:`hashindex.evaluation.target_ranks`);
  (b) ``identity``: the same for "any other image of the same person";
  (c) ``pairs``: the paper's Table 1 on validation identities (share of positive / negative
      pairs at Hamming distance = 0, <= 1, <= 2);
  (d) ``recall_at_1``: recall@1 against exact float search after exactly reranking the top
      1% and the top 0.1% of the Hamming ranking;
* spread: mean, min and max over ``--seeds``.

Methods: ``sign`` (128 bits only), ``pca``, ``itq`` (FAISS, fitted on the train split) and
``learned`` (the default recipe of :mod:`hashindex.training.recipes`), plus ablation variants
(``--methods``, see :data:`METHODS`). Every method is also reported as ``<name>+asym``: the
same codes ranked by the asymmetric score ``<z(query), sign(z(gallery))>`` (the query's
continuous projection before the sign -- for a learned head the pre-tanh output, as
``HashIndex.search(ranking="asymmetric")`` serves it -- against the gallery's bits) instead of
by Hamming distance.

    python benchmarks/quality.py                        # the table (~6 min, 1 thread): 3 seeds x 16/32/64/128 bits
    python benchmarks/quality.py --seeds 0 --bits 64 --methods itq learned --name quality_smoke

Writes ``<out-dir>/<name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hashindex.evaluation import metrics as hm  # noqa: E402
from hashindex.core.codes import binarize, pre_tanh  # noqa: E402
from hashindex.training.data import identity_split, load_embeddings  # noqa: E402
from hashindex.core.errors import InputError  # noqa: E402
from hashindex.serving.hashers import make_hasher  # noqa: E402
from hashindex.evaluation.exact import exact_search  # noqa: E402
from hashindex.evaluation.target_ranks import TargetRanks, sign_matrix, target_ranks  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared/data/lfw/lfw_mfn128_dev.npz"
QUANTILES = (0.5, 0.95, 0.99)
RERANK_SHARES = (0.01, 0.001)
RADII = (0, 1, 2)
# shares of the gallery at which the recall curves are sampled (log-spaced, 1e-4 .. 1)
CURVE_FRACTIONS = tuple(float(f) for f in np.logspace(-4, 0, 17))


# -- split and exact neighbours ---------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One seeded identity split of the data.

    Attributes:
        train: ``int64`` rows the hashers may see.
        val: ``int64`` rows of held-out identities.
        queries: ``int64`` validation rows whose identity has >= 2 images.
        nn: ``int64 [len(queries)]`` gallery row of each query's exact cosine nearest
            neighbour (itself excluded; the gallery is every row).
    """

    seed: int
    train: np.ndarray
    val: np.ndarray
    queries: np.ndarray
    nn: np.ndarray


def make_split(features: np.ndarray, labels: np.ndarray, seed: int, val_fraction: float = 0.3) -> Split:
    """Split ``features float32 [N, D]`` (L2-normalised) / ``labels [N]`` by identity."""
    train, val = identity_split(labels, val_fraction, seed)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    queries = val[counts[inverse.reshape(-1)][val] >= 2]
    nn = exact_search(features[queries], features, 1, "ip", exclude=queries)[:, 0]
    return Split(seed, train, val, queries, nn)


# -- figures of one code set ------------------------------------------------------------------
def _quantiles(values: np.ndarray) -> dict[str, float]:
    v = values[np.isfinite(values)]
    return {f"p{round(q * 100)}": float(np.quantile(v, q)) for q in QUANTILES}


def code_figures(
    gallery_h: np.ndarray,
    labels: np.ndarray,
    split: Split,
    query_h: np.ndarray | None = None,
) -> dict:
    """Figures (a)-(d) of one code set.

    Args:
        gallery_h: ``float [N, K]`` continuous codes of every row; bit = ``h > 0``.
        labels: ``[N]`` identities.
        split: the split (queries, their exact NNs, validation rows).
        query_h: ``float [Nq, K]`` asymmetric query vectors (ranking by ``<q, sign(h_g)>``);
            None ranks by Hamming distance (``q = sign(h_q)``).
    """
    g = sign_matrix(gallery_h)
    q = g[split.queries] if query_h is None else np.asarray(query_h, dtype=np.float32)
    nq, nb = q.shape[0], g.shape[0]

    def scorer(a: int, b: int) -> np.ndarray:
        return q[a:b] @ g.T

    def nn_target(a: int, b: int, s: np.ndarray) -> np.ndarray:
        t = np.zeros(s.shape, bool)
        t[np.arange(b - a), split.nn[a:b]] = True
        return t

    def same_person(a: int, b: int, s: np.ndarray) -> np.ndarray:
        return labels[split.queries[a:b], None] == labels[None, :]

    nn: TargetRanks = target_ranks(scorer, nq, nb, nn_target, split.queries)
    ident = target_ranks(scorer, nq, nb, same_person, split.queries)
    out = {
        "nn": _quantiles(nn.fraction_needed()),
        "identity": _quantiles(ident.fraction_needed()),
        "recall_at_1": {
            f"rerank_{share:g}": float(nn.hit_probability(np.ceil(share * nn.gallery).astype(np.int64)).mean())
            for share in RERANK_SHARES
        },
        # recall of (a) and (b) against the share reranked: the curves behind the quantiles
        "curve": {
            "nn": [float(nn.hit_probability(np.ceil(f * nn.gallery).astype(np.int64)).mean()) for f in CURVE_FRACTIONS],
            "identity": [float(ident.hit_probability(np.ceil(f * ident.gallery).astype(np.int64)).mean())
                         for f in CURVE_FRACTIONS],
        },
    }
    if query_h is None:
        table = hm.pair_hamming_table(binarize(gallery_h[split.val]), labels[split.val], RADII)
        out["pairs"] = {
            f"r{r}": {"positive": table.positive_within(r), "negative": table.negative_within(r)} for r in RADII
        }
    return out


# -- methods ------------------------------------------------------------------------------------
Encoder = Callable[[np.ndarray], np.ndarray]  # features [N, D] -> continuous codes [N, K]


def _baseline(kind: str) -> Callable:
    def fit(x: np.ndarray, y: np.ndarray, bits: int, seed: int) -> Encoder | None:
        if kind == "sign" and bits != x.shape[1]:
            return None  # one bit per dimension: only at K = D
        return make_hasher(kind, x.shape[1], bits).fit(x).project

    return fit


def _learned(recipe: str) -> Callable:
    def fit(x: np.ndarray, y: np.ndarray, bits: int, seed: int) -> Encoder:
        from hashindex.training.loop import predict
        from hashindex.training.recipes import fit_recipe

        model = fit_recipe(recipe, x, y, bits=bits, seed=seed).model
        # the pre-tanh output, as served (OnnxEncoder.project): same bits, better asymmetric ranking
        return lambda f: pre_tanh(predict(model, f))

    return fit


def _method_table() -> dict[str, Callable]:
    from hashindex.training.recipes import RECIPES

    table = {"sign": _baseline("sign"), "pca": _baseline("pca"), "itq": _baseline("itq")}
    table.update({name: _learned(name) for name in RECIPES})
    return table


BASELINES = ("sign", "pca", "itq")
DEFAULT_METHODS = ("sign", "pca", "itq", "learned")


def run_method(name: str, features, labels, split: Split, bits: int) -> list[dict]:
    """Fit ``name`` on the train rows; figures of its Hamming ranking (row ``name``) and of
    its asymmetric ranking (row ``name+asym``). Empty when the method has no such width."""
    table = _method_table()
    if name not in table:
        raise InputError(f"unknown method {name!r}; choose from {sorted(table)}")
    t0 = time.perf_counter()
    enc = table[name](features[split.train], labels[split.train], bits, split.seed)
    if enc is None:
        return []
    fit_s = time.perf_counter() - t0
    h = enc(features)
    return [
        {"method": name, "bits": bits, "seed": split.seed, "fit_s": fit_s, **code_figures(h, labels, split)},
        {"method": name + "+asym", "bits": bits, "seed": split.seed, "fit_s": fit_s,
         **code_figures(h, labels, split, h[split.queries])},
    ]


# -- aggregation and printing -----------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, float):
            out[key] = v
    return out


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean / min / max over seeds of every figure, per (method, bits)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["bits"]), []).append(_flatten(r))
    out = []
    for (method, bits), flat in groups.items():
        keys = [k for k in flat[0] if k not in ("seed",)]
        stats = {k: {"mean": float(np.mean([f[k] for f in flat])), "min": float(np.min([f[k] for f in flat])),
                     "max": float(np.max([f[k] for f in flat]))} for k in keys}
        out.append({"method": method, "bits": bits, "seeds": len(flat), **stats})
    return out


def _ratio(a: float, b: float) -> float:
    """``a / b`` with 0 / 0 = 1 (equal) and a / 0 = inf."""
    return a / b if b > 0 else (1.0 if a == 0 else float("inf"))


def target_check(rows: list[dict], learned: str = "learned", baselines: tuple[str, ...] = BASELINES) -> dict:
    """Issue 6's target per bit width, judged seed by seed.

    32 / 64 bits: the learned p95 of (a) and (b) at most half the best baseline's, every seed.
    16 bits: learned positive-pair rate at radius 2 >= 1.2x that of the baseline with the
    highest one, with a negative-pair rate no higher than that baseline's.
    """
    by = {(r["method"], r["bits"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    verdict = {}
    for bits in sorted({r["bits"] for r in rows}):
        if (learned, bits, seeds[0]) not in by:
            continue
        per_seed = []
        for s in seeds:
            lr = by[(learned, bits, s)]
            base = [by[(m, bits, s)] for m in baselines if (m, bits, s) in by]
            best_nn = min(b["nn"]["p95"] for b in base)
            best_id = min(b["identity"]["p95"] for b in base)
            entry = {
                "seed": s,
                "nn_p95_ratio": lr["nn"]["p95"] / best_nn,
                "identity_p95_ratio": lr["identity"]["p95"] / best_id,
            }
            if "pairs" in lr:  # Table 1 is a property of the codes alone: not for +asym rows
                best = max((b for b in base if "pairs" in b), key=lambda b: b["pairs"]["r2"]["positive"])
                entry["r2_positive_ratio"] = _ratio(lr["pairs"]["r2"]["positive"], best["pairs"]["r2"]["positive"])
                entry["r2_negative_ratio"] = _ratio(lr["pairs"]["r2"]["negative"], best["pairs"]["r2"]["negative"])
            per_seed.append(entry)
        if bits in (32, 64):
            met = all(e["nn_p95_ratio"] <= 0.5 and e["identity_p95_ratio"] <= 0.5 for e in per_seed)
        elif bits == 16 and "r2_positive_ratio" in per_seed[0]:
            met = all(e["r2_positive_ratio"] >= 1.2 and e["r2_negative_ratio"] <= 1.0 for e in per_seed)
        else:
            met = None  # no target at this width
        verdict[str(bits)] = {"met": met, "per_seed": per_seed}
    return verdict


def plot_curves(rows: list[dict], out_dir: Path, name: str) -> list[Path]:
    """One figure per bit width: recall of the exact float NN (a) and of the same person (b)
    against the share of the gallery reranked, mean over seeds, one line per method."""
    from hashindex.evaluation.plots import plot_recall_vs_candidates

    paths = []
    for bits in sorted({r["bits"] for r in rows}):
        for target, label in (("nn", "recall of the exact float nearest neighbour"),
                              ("identity", "recall of another image of the same person")):
            curves = {}
            for method in sorted({r["method"] for r in rows if r["bits"] == bits}):
                runs = [r["curve"][target] for r in rows if r["bits"] == bits and r["method"] == method]
                curves[method] = (CURVE_FRACTIONS, np.mean(runs, axis=0))
            paths.append(plot_recall_vs_candidates(
                curves, out_dir / f"{name}_{target}_{bits}bits.png",
                title=f"LFW, unseen identities, {bits} bits (mean of {len(runs)} seeds)", ylabel=label))
    return paths


def format_table(summary: list[dict]) -> str:
    head = (f"{'method':<18}{'bits':>5}  {'NN p50':>8}{'NN p95 [min,max]':>26}{'NN p99':>8}  {'ID p50':>8}{'ID p95 [min,max]':>26}"
            f"{'ID p99':>8}  {'pos<=2':>7}{'neg<=2':>9}  {'R@1 1%':>7}{'R@1 .1%':>8}")
    lines = [head, "-" * len(head)]

    def m(r, k):
        return r.get(k, {}).get("mean", float("nan"))

    def rng(r, k):
        v = r.get(k)
        return f"{v['mean']:.4f} [{v['min']:.4f},{v['max']:.4f}]" if v else "-"

    for r in sorted(summary, key=lambda r: (r["bits"], r["method"])):
        lines.append(
            f"{r['method']:<18}{r['bits']:>5}  {m(r, 'nn.p50'):>8.4f}{rng(r, 'nn.p95'):>26}{m(r, 'nn.p99'):>8.4f}  "
            f"{m(r, 'identity.p50'):>8.4f}{rng(r, 'identity.p95'):>26}{m(r, 'identity.p99'):>8.4f}  "
            f"{m(r, 'pairs.r2.positive'):>7.4f}{m(r, 'pairs.r2.negative'):>9.5f}  "
            f"{m(r, 'recall_at_1.rerank_0.01'):>7.4f}{m(r, 'recall_at_1.rerank_0.001'):>8.4f}"
        )
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------
@dataclass
class QualityConfig:
    data: str = str(DEFAULT_DATA)
    seeds: tuple[int, ...] = (0, 1, 2)
    bits: tuple[int, ...] = (16, 32, 64, 128)
    methods: tuple[str, ...] = DEFAULT_METHODS
    val_fraction: float = 0.3
    threads: int = 1
    name: str = "quality"
    out_dir: str = str(REPO / "benchmarks/results")
    plots: bool = True
    extra: dict = field(default_factory=dict)


def run(cfg: QualityConfig, log=print) -> dict:
    import faiss

    faiss.omp_set_num_threads(cfg.threads)
    try:
        import torch

        torch.set_num_threads(cfg.threads)
    except ImportError:  # baselines only
        pass
    data = load_embeddings(cfg.data)
    x, y = data.features, data.labels
    rows = []
    t0 = time.perf_counter()
    for seed in cfg.seeds:
        split = make_split(x, y, seed, cfg.val_fraction)
        log(f"seed {seed}: {split.train.size} train rows, {split.val.size} validation rows, {split.queries.size} queries")
        for bits in cfg.bits:
            for method in cfg.methods:
                for r in run_method(method, x, y, split, bits):
                    rows.append(r)
                    log(f"  {r['method']:<22} {bits:>4} bits  NN p95 {r['nn']['p95']:.4f}  ID p95 {r['identity']['p95']:.4f}"
                        f"  ({r['fit_s']:.1f} s)")
    summary = aggregate(rows)
    result = {
        "command": "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "config": asdict(cfg),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "wall_s": time.perf_counter() - t0,
        "runs": rows,
        "summary": summary,
        "target": {
            "learned vs Hamming baselines": target_check(rows),
            "learned+asym vs Hamming baselines": target_check(rows, "learned+asym"),
            "learned+asym vs asymmetric baselines": target_check(
                rows, "learned+asym", BASELINES + tuple(b + "+asym" for b in BASELINES)),
        },
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{cfg.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    if cfg.plots:
        for path in plot_curves(rows, out, cfg.name):
            log(f"wrote {path}")
    log(format_table(summary))
    for which, verdict in result["target"].items():
        log(f"target met, {which}: " + json.dumps({b: v["met"] for b, v in verdict.items()}))
    log(f"wall {result['wall_s']:.0f} s; wrote {out / (cfg.name + '.json')}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--val-fraction", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="quality")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks/results"))
    p.add_argument("--no-plots", action="store_true", help="skip the recall-curve figures (matplotlib)")
    a = p.parse_args(argv)
    cfg = QualityConfig(a.data, tuple(a.seeds), tuple(a.bits), tuple(a.methods), a.val_fraction, a.threads, a.name,
                        a.out_dir, plots=not a.no_plots)
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
