"""``hashindex train`` and ``hashindex eval`` (wired into :mod:`hashindex.cli`).

torch is imported inside the handlers only, so ``hashindex --help`` and the serving commands
work without it. ``eval`` also accepts the untrained hashers (``--hasher itq|pca|sign``) so
baselines and trained models go through the same report.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashindex.core.errors import InputError

EVAL_FILE = "eval.json"


# -- argument parsing ---------------------------------------------------------------------------
def _int_list(text: str) -> tuple[int, ...]:
    """"256,128" -> (256, 128); "" or "none" -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def _loss_param(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, true/false), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """``hashindex train --data F.npz --bits 64 [--recipe learned | --loss csq] --out DIR [options]``."""
    p = subparsers.add_parser("train", help="train a hash head on labelled embeddings (needs torch)")
    p.add_argument("--data", required=True, help=".npz with 'embeddings' and 'labels'")
    p.add_argument("--val-data", help="identity-disjoint validation .npz (default: split --data by identity)")
    p.add_argument("--out", required=True, help="model directory: model.pt, config.json, metrics.json")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--recipe", default="learned",
                   help="named recipe (hashindex.training.recipes.RECIPES; default 'learned': ITQ-initialised head, "
                   "softmax identity loss + similarity distillation, see benchmarks/QUALITY.md); ignored with --loss")
    p.add_argument("--loss", default=None,
                   help="train a fresh head on one loss instead of a recipe: softmax, csq, triplet, contrastive, "
                   "lifted, npair, facility")
    p.add_argument("--loss-param", type=_loss_param, action="append", default=[], metavar="KEY=VALUE",
                   help="loss hyper-parameter (repeatable), e.g. --loss-param margin=0.5")
    p.add_argument("--hidden", type=_int_list, default=(), help="hidden widths, e.g. 512,256 (default: linear head)")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's (20), or 30 with --loss")
    p.add_argument("--p", type=int, default=32, help="identities per batch")
    p.add_argument("--k", type=int, default=4, help="samples per identity per batch")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=("cosine", "step", "none"), default="cosine")
    p.add_argument("--val-fraction", type=float, default=0.3, help="share of identities held out for validation")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (0: never stop)")
    p.add_argument("--select", choices=("p95_candidates", "map_at_r"), default="p95_candidates",
                   help="model-selection criterion on validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """``hashindex eval (--model DIR | --hasher itq|pca|sign [--bits K]) --data F.npz [--out DIR]``."""
    p = subparsers.add_parser("eval", help="Table-1 pair distances, candidate reduction, mAP@R, recall vs candidates")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="trained model directory (or its model.pt)")
    src.add_argument("--hasher", choices=("itq", "pca", "sign"), help="an untrained baseline hasher")
    p.add_argument("--bits", type=int, help="code length for --hasher (sign: the feature dimension)")
    p.add_argument("--fit-data", help="--hasher: fit on this .npz (default: on --data itself)")
    p.add_argument("--data", required=True, help=".npz with 'embeddings' (and 'labels' for identity metrics)")
    p.add_argument("--radii", type=_int_list, default=(0, 1, 2), help="Hamming radii for the tables")
    p.add_argument("--max-items", type=int, default=None, help="evaluate on a seeded random subset of this size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for eval.json and PNG figures")
    p.set_defaults(func=run_eval)
    return p


# -- train ----------------------------------------------------------------------------------------
def run_train(args: argparse.Namespace) -> int:
    from hashindex.training.data import load_embeddings
    from hashindex.training.loop import TrainConfig, train_hasher

    data = load_embeddings(args.data)
    val = load_embeddings(args.val_data) if args.val_data else None
    if args.loss is None:
        return _run_recipe(args, data, val)
    config = TrainConfig(
        bits=args.bits,
        loss=args.loss,
        loss_params=dict(args.loss_param),
        hidden=args.hidden,
        epochs=args.epochs or 30,
        p=args.p,
        k=args.k,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=None if args.schedule == "none" else args.schedule,
        seed=args.seed,
        device=args.device,
        val_fraction=0.0 if val is not None else args.val_fraction,
        patience=args.patience or None,
        select=args.select,
        num_threads=args.threads,
    )
    result = train_hasher(data, config, val_data=val, out_dir=args.out, progress=not args.quiet)
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
    print(f"kept epoch {result.best_epoch} ({best or 'no validation'}); wrote {result.checkpoint_path}")
    return 0


def _run_recipe(args: argparse.Namespace, data, val) -> int:
    from hashindex.training.recipes import fit_recipe

    if data.labels is None:
        raise InputError(f"{args.data}: training needs 'labels'")
    if val is not None:
        raise InputError("--val-data is only supported with --loss; a recipe validates on --val-fraction of --data")
    overrides = dict(val_fraction=args.val_fraction, patience=args.patience or None, select=args.select,
                     device=args.device, num_threads=args.threads)
    if args.epochs:
        overrides["epochs"] = args.epochs
    result = fit_recipe(args.recipe, data.features, data.labels, args.bits, seed=args.seed,
                        progress=not args.quiet, out_dir=args.out, **overrides)
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
    print(f"recipe {args.recipe}: kept epoch {result.best_epoch} ({best or 'no validation'}); wrote {result.checkpoint_path}")
    return 0


# -- eval -----------------------------------------------------------------------------------------
@dataclass
class EvalReport:
    """Every evaluation of one code set over one data set (leave-one-out: each row queries the rest)."""

    name: str
    bits: int
    n: int
    table: Any  # metrics.PairHammingTable, None without labels
    reduction: Any  # metrics.CandidateReduction
    map_at_r: float | None
    curve: Any  # metrics.RecallCurve
    candidates_needed: dict[str, float]  # quantiles of the share reranked to reach the exact NN

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "bits": self.bits,
            "n": self.n,
            "pair_distances": None if self.table is None else self.table.to_dict(),
            "candidate_reduction": self.reduction.to_dict(),
            "map_at_r": self.map_at_r,
            "recall_vs_candidates": self.curve.to_dict(),
            "candidates_needed": self.candidates_needed,
        }

    def format(self) -> str:
        parts = [f"== {self.name}: {self.bits}-bit codes, {self.n:,} items =="]
        if self.table is not None:
            parts += ["", "Pair distances (Table 1)", self.table.format()]
        parts += ["", "Candidate reduction (Table 2)", self.reduction.format()]
        if self.map_at_r is not None:
            parts += ["", f"mAP@R (identity): {self.map_at_r:.4f}"]
        q = ", ".join(f"{k} {v:.4%}" for k, v in self.candidates_needed.items())
        parts += ["", f"share of the gallery reranked to reach the exact cosine NN: {q}"]
        parts += ["", "Recall vs candidates", self.curve.format()]
        return "\n".join(parts)


def evaluate_codes(
    codes: np.ndarray, features: np.ndarray, labels: np.ndarray | None, name: str, radii=(0, 1, 2)
) -> EvalReport:
    """Evaluate packed ``codes uint8 [N, K/8]`` against their float ``features [N, D]``."""
    from hashindex.evaluation import metrics as hm

    table = hm.pair_hamming_table(codes, labels, radii) if labels is not None else None
    reduction = hm.candidate_reduction(codes, radii=radii)
    map_r = hm.map_at_r(codes, labels) if labels is not None else None
    curve = hm.recall_vs_candidates(codes, None, features, None, query_labels=labels)
    frac = hm.candidate_fraction_needed(codes, None, features, None)
    quantiles = {f"p{int(q * 100)}": float(v) for q, v in zip((0.5, 0.95, 0.99), np.quantile(frac, [0.5, 0.95, 0.99]))}
    return EvalReport(name, 8 * codes.shape[1], codes.shape[0], table, reduction, map_r, curve, quantiles)


def _encode(args: argparse.Namespace, data) -> tuple[np.ndarray, str]:
    """Packed codes of ``data`` from a trained model or a freshly fitted baseline hasher."""
    from hashindex.core.codes import binarize

    if args.model:
        from hashindex.training.loop import load_checkpoint, predict

        model, config, _ = load_checkpoint(args.model)
        if model.kind != "hash_head":
            raise InputError(f"{args.model}: eval over embeddings needs a hash head, this is a {model.kind}")
        if model.in_dim != data.dim:
            raise InputError(f"{args.model}: model takes {model.in_dim}-d features, {args.data} has {data.dim}-d")
        name = f"learned ({config.loss})" if config is not None else "learned"
        return binarize(predict(model, data.features)), name
    from hashindex.training.data import load_embeddings
    from hashindex.serving.hashers import make_hasher

    hasher = make_hasher(args.hasher, data.dim, args.bits)
    fit = load_embeddings(args.fit_data).features if args.fit_data else data.features
    hasher.fit(fit)
    return hasher.encode(data.features), args.hasher


def run_eval(args: argparse.Namespace) -> int:
    from hashindex.training.data import load_embeddings

    data = load_embeddings(args.data)
    if args.max_items and args.max_items < len(data):
        rng = np.random.default_rng(args.seed)
        data = data.subset(np.sort(rng.choice(len(data), size=args.max_items, replace=False)))
    codes, name = _encode(args, data)
    report = evaluate_codes(codes, data.features, data.labels, name, tuple(args.radii))
    print(report.format())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / EVAL_FILE).write_text(json.dumps(json_safe(report.to_dict()), indent=2) + "\n")
        written = [out / EVAL_FILE]
        try:
            from hashindex.evaluation import plots
        except ImportError:  # matplotlib is optional
            plots = None
        if plots is not None:
            if report.table is not None:
                written.append(plots.plot_hamming_histograms(report.table, out / "pair_distances.png", title=name))
            curves = {f"{name}, exact NN": (report.curve.fractions, report.curve.nn_recall)}
            if report.curve.identity_recall is not None:
                curves[f"{name}, same identity"] = (report.curve.fractions, report.curve.identity_recall)
            written.append(plots.plot_recall_vs_candidates(curves, out / "recall_vs_candidates.png", ylabel="recall"))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def json_safe(x):
    """NaN / inf -> None, tuples -> lists, so the result dumps as strict JSON."""
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


# -- export -------------------------------------------------------------------------------------
def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """``hashindex export``: a trained head, an untrained hasher, or a fused backbone + head."""
    p = subparsers.add_parser(
        "export",
        help="export a hash model to ONNX (codes packed in the graph)",
        description="Export a trained model directory (--head DIR), an untrained hasher fitted on "
        "--data (--hasher itq|pca|sign), or, with --backbone, a fused image model: backbone -> "
        "L2-normalised features -> hash head, in one graph.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--head", help="model directory from `hashindex train`, or a head .onnx (with --backbone)")
    src.add_argument("--hasher", choices=("sign", "pca", "itq"), help="an untrained hasher, fitted on --data")
    p.add_argument("--data", help=".npz to fit --hasher on (and recorded as training data)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--backbone", help="feature-extractor ONNX (e.g. ../shared/data/lfw/MobileFaceNet.onnx)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.set_defaults(func=_run_export)
    return p


def _run_export(args: argparse.Namespace) -> int:
    import tempfile

    from hashindex.export import onnx as onnx_export

    def export_features_model(path: Path) -> None:
        if args.hasher:
            if not args.data:
                raise InputError("--hasher needs --data to fit on")
            from hashindex.training.data.embeddings import load_embeddings
            from hashindex.serving.hashers import make_hasher
            from hashindex.core.onnx_contract import TrainingInfo

            data = load_embeddings(args.data)
            x = data.features / np.linalg.norm(data.features, axis=1, keepdims=True)
            hasher = make_hasher(args.hasher, data.dim, args.bits if args.hasher != "sign" else data.dim).fit(x)
            onnx_export.export_linear_hasher(hasher, path, TrainingInfo(loss=args.hasher, data=str(args.data)))
        elif str(args.head).endswith(".onnx"):
            path.write_bytes(Path(args.head).read_bytes())
        else:
            onnx_export.export_model_dir(args.head, path, data=args.data)

    out = Path(args.out)
    if args.backbone:
        with tempfile.TemporaryDirectory() as tmp:
            head = Path(tmp) / "head.onnx"
            export_features_model(head)
            meta = onnx_export.fuse_backbone_and_head(args.backbone, head, out)
    else:
        export_features_model(out)
        meta = onnx_export.read_metadata(out)
    print(f"wrote {out}: {meta.bits} bits, input {meta.input.name} {list(meta.input.shape)}")
    return 0
