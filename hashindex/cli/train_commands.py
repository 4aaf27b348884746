"""``hashindex train`` and ``hashindex eval``.

torch is imported inside the handlers only, so ``hashindex --help`` and the serving commands
work without it. ``eval`` also accepts the untrained hashers (``--hasher itq|pca|sign``) so
baselines and trained models go through the same report
(:mod:`hashindex.evaluation.report`).
"""

from __future__ import annotations

import argparse

import numpy as np

from hashindex.cli.image_commands import add_image_train_options, image_eval_codes, run_image_train
from hashindex.cli.common import (
    fit_baseline,
    int_list,
    load_rows,
    loss_param,
    non_negative_int,
    out_dir,
    positive_int,
    radius_list,
)
from hashindex.core.errors import InputError
from hashindex.evaluation.exact import unit_rows
from hashindex.serving.hashers import HASHER_KINDS
from hashindex.serving.index import DEFAULT_BITS
from hashindex.training.config import TrainConfig

DEFAULT_P = TrainConfig.p
"""Identities per P x K batch when ``--p`` is not given and the data has that many."""


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """``hashindex train (--data F.npz | --images DIR) --bits 128 [--recipe learned | --loss csq] --out DIR [options]``."""
    p = subparsers.add_parser("train", help="train a hash head on labelled embeddings, or an image network on "
                              "an image folder (needs torch)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help=".npz with 'embeddings' and 'labels'")
    src.add_argument("--images", help="image folder, one sub-folder per identity: trains ResNet-18 + FC + tanh end to end")
    p.add_argument("--val-data", help="identity-disjoint validation .npz (default: split --data by identity)")
    p.add_argument("--out", required=True, help="model directory: model.pt, config.json, metrics.json")
    p.add_argument("--bits", type=positive_int, default=DEFAULT_BITS)
    p.add_argument("--recipe", default="learned",
                   help="named recipe (hashindex.training.recipes.RECIPES; default 'learned': ITQ-initialised head, "
                   "softmax identity loss + similarity distillation, see benchmarks/QUALITY.md); ignored with --loss")
    p.add_argument("--loss", default=None,
                   help="train a fresh head on one loss instead of a recipe: softmax, csq, triplet, contrastive, "
                   "lifted, npair, facility")
    p.add_argument("--loss-param", type=loss_param, action="append", default=[], metavar="KEY=VALUE",
                   help="loss hyper-parameter (repeatable), e.g. --loss-param margin=0.5")
    p.add_argument("--hidden", type=int_list, default=(), help="hidden widths, e.g. 512,256 (default: linear head)")
    p.add_argument("--epochs", type=positive_int, default=None, help="default: the recipe's (20), or 30 with --loss")
    p.add_argument("--p", type=positive_int, default=None,
                   help=f"identities per batch (default: {DEFAULT_P}, or fewer when the smallest training run has fewer)")
    p.add_argument("--k", type=positive_int, default=4, help="samples per identity per batch")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=("cosine", "step", "none"), default="cosine")
    p.add_argument("--val-fraction", type=float, default=0.3, help="share of identities held out for validation")
    p.add_argument("--patience", type=non_negative_int, default=5, help="early-stopping patience in epochs (0: never stop)")
    p.add_argument("--select", choices=("p95_candidates", "map_at_r"), default="p95_candidates",
                   help="model-selection criterion on validation")
    p.add_argument("--folds", type=non_negative_int, default=3,
                   help="identity folds judging the recipe (or image model) against its ITQ start on held-out people: "
                   "the start ships unless training beats it in every fold (0: not judged)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars (fold judgement, epochs)")
    add_image_train_options(p)
    p.set_defaults(func=run_train)
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """``hashindex eval (--model DIR | --hasher itq|pca|sign [--bits K]) --data F.npz [--out DIR]``."""
    p = subparsers.add_parser("eval", help="Table-1 pair distances, candidate reduction, mAP@R, recall vs candidates")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="trained model directory (or its model.pt)")
    src.add_argument("--hasher", choices=HASHER_KINDS, help="an untrained baseline hasher (fitted on L2-normalised features)")
    p.add_argument("--bits", type=positive_int, default=DEFAULT_BITS, help="code length for --hasher (sign: the feature dimension)")
    p.add_argument("--fit-data", help="--hasher: fit on this .npz (default: on --data itself)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help=".npz with 'embeddings' (and 'labels' for identity metrics)")
    data.add_argument("--images", help="image folder (one sub-folder per identity) for an image model, or for "
                      "--hasher over --teacher features")
    p.add_argument("--teacher", help="with --images: ONNX face model whose features are hashed (--hasher) or define the "
                   "exact neighbours (default: the model directory's teacher, else the model's own features)")
    p.add_argument("--radii", type=radius_list, default=(0, 1, 2), help="Hamming radii for the tables")
    p.add_argument("--max-items", type=positive_int, default=None, help="evaluate on a seeded random subset of this size")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", help="directory for eval.json and PNG figures")
    p.set_defaults(func=run_eval)
    return p


def add_parsers(sub) -> None:
    add_train_parser(sub)
    add_eval_parser(sub)


# -- train ----------------------------------------------------------------------------------------
def run_train(args: argparse.Namespace) -> int:
    from hashindex.training.loop import train_hasher

    out_dir(args.out)
    if args.images:
        if args.val_data:
            raise InputError("--val-data is for --data; image training validates on --val-fraction of the folder's identities")
        return run_image_train(args)
    data = load_rows(args.data, "training")
    val = load_rows(args.val_data, "validation") if args.val_data else None
    if args.loss is None:
        return _run_recipe(args, data, val)
    config = TrainConfig(
        bits=args.bits,
        loss=args.loss,
        loss_params=dict(args.loss_param),
        hidden=args.hidden,
        epochs=args.epochs or 30,
        p=_batch_p(args, data.labels, folds=0, val_fraction=0.0 if val is not None else args.val_fraction),
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
    _print_kept(result, "")
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
    overrides["p"] = _batch_p(args, data.labels, args.folds, args.val_fraction)
    if args.folds >= 2:
        return run_recipe_judged(args, data, overrides)
    result = fit_recipe(args.recipe, data.features, data.labels, args.bits, seed=args.seed,
                        progress=not args.quiet, out_dir=args.out, **overrides)
    _print_kept(result, f"recipe {args.recipe}: ")
    return 0


def run_recipe_judged(args: argparse.Namespace, data, overrides: dict) -> int:
    """``train --data`` with a recipe and ``--folds >= 2``: :func:`hashindex.training.judge.fit_recipe_judged`."""
    from pathlib import Path

    from tqdm.auto import tqdm

    from hashindex.training.judge import fit_recipe_judged

    result = fit_recipe_judged(args.recipe, data.features, data.labels, args.bits, folds=args.folds, seed=args.seed,
                               out_dir=args.out, progress=not args.quiet, log=tqdm.write, **overrides)
    print(f"wrote {Path(args.out) / 'model.pt'} ({result.shipped})")
    return 0


def _batch_p(args: argparse.Namespace, labels, folds: int, val_fraction: float) -> int:
    """``--p``, or without it :data:`DEFAULT_P` lowered to the identities of the smallest training
    run (each held-out fold's and the final one, after the validation split)."""
    if args.p is not None or labels is None:
        return args.p or DEFAULT_P
    from hashindex.training.data import sampled_identities

    have = sampled_identities(labels, folds, val_fraction, 2, args.seed)
    return min(DEFAULT_P, have) if have >= 2 else DEFAULT_P


def _print_kept(result, prefix: str) -> None:
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
    print(f"{prefix}kept epoch {result.best_epoch} ({best or 'no validation'}); wrote {result.checkpoint_path}")


# -- eval -----------------------------------------------------------------------------------------
def _encode(args: argparse.Namespace, data) -> tuple[np.ndarray, str]:
    """Packed codes of ``data`` from a trained model or a freshly fitted baseline hasher."""
    from hashindex.core.codes import binarize

    if args.model:
        from hashindex.training.checkpoints import load_checkpoint
        from hashindex.training.loop import predict

        model, config, metrics = load_checkpoint(args.model)
        if model.kind != "hash_head":
            raise InputError(f"{args.model}: eval over embeddings needs a hash head, this is a {model.kind} "
                             "(evaluate it on an image folder with --images)")
        if model.in_dim != data.dim:
            raise InputError(f"{args.model}: model takes {model.in_dim}-d features, {args.data} has {data.dim}-d")
        name = f"learned ({config.loss})" if config is not None else "learned"
        if metrics.get("shipped") == "start":
            name = "ITQ start (training did not beat it on held-out identities)"
        return binarize(predict(model, data.features)), name
    fit = load_rows(args.fit_data, "fit").features if args.fit_data else data.features
    hasher = fit_baseline(args.hasher, fit, args.bits)
    return hasher.encode(unit_rows(data.features)), args.hasher


def run_eval(args: argparse.Namespace) -> int:
    from hashindex.evaluation.report import evaluate_codes, write_report

    report_dir = out_dir(args.out) if args.out else None
    if args.images:
        codes, features, labels, name = image_eval_codes(args)
        report = evaluate_codes(codes, features, labels, name, tuple(args.radii))
        print(report.format())
        if report_dir is not None:
            print("wrote " + ", ".join(str(p) for p in write_report(report, report_dir)))
        return 0
    data = load_rows(args.data)
    if args.max_items and args.max_items < len(data):
        rng = np.random.default_rng(args.seed)
        data = data.subset(np.sort(rng.choice(len(data), size=args.max_items, replace=False)))
    codes, name = _encode(args, data)
    report = evaluate_codes(codes, data.features, data.labels, name, tuple(args.radii))
    print(report.format())
    if report_dir is not None:
        print("wrote " + ", ".join(str(p) for p in write_report(report, report_dir)))
    return 0
