"""``hashindex calibrate``, and the identity options of ``build`` / ``search`` (labels, label
filters, group-by, an open-set threshold). Serving-side: never imports torch."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hashindex.cli.common import load_rows, non_negative_int, out_file, plot_file, positive_int
from hashindex.core.errors import InputError
from hashindex.core.io import atomic_write_json


def read_labels(path: str, key: str, n: int) -> np.ndarray:
    """``int64 [n]`` labels stored under ``key`` of the .npz at ``path`` (strings mapped to 0..C-1)."""
    if key == "labels":
        data = load_rows(path, "features")  # load_embeddings already checks and maps 'labels'
        if data.labels is None:
            raise InputError(f"{path}: no 'labels' array (--labels-key names the array holding the labels)")
        return data.labels
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if key not in arrays.files:
                raise InputError(f"{path}: no array {key!r} for --labels-key (it has {', '.join(arrays.files)})")
            labels = arrays[key]
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable .npz ({e})") from None
    if labels.ndim == 1 and (np.issubdtype(labels.dtype, np.str_) or np.issubdtype(labels.dtype, np.bytes_)):
        labels = np.unique(labels.astype(str), return_inverse=True)[1].reshape(-1)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: --labels-key {key!r} must be {n} integers or strings, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def read_id_list(path: str, flag: str) -> np.ndarray:
    """Integers from a .npy file or a text file (whitespace- or comma-separated)."""
    p = Path(path)
    try:
        if p.suffix == ".npy":
            values = np.load(p, allow_pickle=False)
        else:
            text = p.read_text().replace(",", " ").split()
            values = np.array([int(v) for v in text], dtype=np.int64)
    except ValueError as e:
        raise InputError(f"{flag} {path}: expected integers ({e})") from None
    except OverflowError:
        big = next(v for v in text if not -(2**63) <= int(v) < 2**63)
        raise InputError(f"{flag} {path}: {big} does not fit a 64-bit id (ids are 0 .. 2**63 - 2)") from None
    values = np.asarray(values)
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise InputError(f"{flag} {path}: expected a 1-D list of integers, got {values.dtype} {values.shape}")
    return values


def add_search_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("identities (an index built with --labels-key)")
    g.add_argument("--group-by", choices=["label"], help="the k best distinct labels, each with its best item")
    g.add_argument("--group-size", type=positive_int, help="items per label with --group-by (results are k * size)")
    g.add_argument("--min-score", type=float, help="open-set threshold (see hashindex calibrate): "
                   "results scoring below it (l2: farther) are dropped")  # fmt: skip
    g.add_argument("--filter-labels", metavar="FILE", help="only items with these labels (.npy or a text file of integers)")
    g.add_argument("--filter-ids", metavar="FILE", help="only items with these ids (.npy or a text file of integers)")


def search_options(args: argparse.Namespace, has_labels: bool) -> dict:
    """The identity keyword arguments of ``index.search`` from the parsed flags, checked before
    any query runs."""
    from hashindex.serving.filters import check_search_options

    kw = {
        "filter_ids": read_id_list(args.filter_ids, "--filter-ids") if args.filter_ids else None,
        "filter_labels": read_id_list(args.filter_labels, "--filter-labels") if args.filter_labels else None,
        "group_by": args.group_by,
        "group_size": args.group_size,
        "min_score": args.min_score,
    }
    check_search_options(**kw, has_labels=has_labels)
    return kw


def cmd_calibrate(args: argparse.Namespace) -> int:
    from hashindex.evaluation.calibration import calibrate

    out = out_file(args.out) if args.out else None
    plot = plot_file(args.plot) if args.plot else None  # both checked before the pairs are scored
    data = load_rows(args.data, "labelled")
    if data.labels is None:
        raise InputError(f"{args.data}: calibration needs 'labels' (one identity per row)")
    cal = calibrate(data.features, data.labels, far=args.far, metric=args.metric, max_pairs=args.max_pairs, seed=args.seed)
    p = cal.pairs
    how = "sampled" if p.sampled else "all"
    print(f"{how} pairs: {p.n_genuine:,} genuine, {p.n_impostor:,} impostor ({args.metric})")
    rule = "score >=" if args.metric != "l2" else "distance <="
    print(f"threshold {cal.threshold:.6f} (accept {rule} it): FAR {cal.far:.3g} (target {args.far:g}), TAR {cal.tar:.4f}")
    print(f"search with: hashindex search ... --min-score {cal.threshold:.6f}")
    if plot is not None:
        print(f"wrote {cal.plot(plot)}")
    if out is not None:
        report = {"threshold": cal.threshold, "far_target": args.far, "far": cal.far, "tar": cal.tar,
                  "metric": args.metric, "n_genuine": p.n_genuine, "n_impostor": p.n_impostor, "sampled": p.sampled}  # fmt: skip
        atomic_write_json(out, report)
        print(f"wrote {out}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("calibrate", help="open-set threshold for a target false-accept rate, from labelled pairs")
    p.add_argument("--data", required=True, help=".npz with 'embeddings' and 'labels'")
    p.add_argument("--far", type=float, default=1e-4, help="target false-accept rate on impostor pairs")
    p.add_argument("--metric", choices=("cosine", "ip", "l2"), default="cosine", help="the index's metric")
    p.add_argument("--max-pairs", type=positive_int, default=50_000_000, help="sample pairs beyond this many")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the pair sample")
    p.add_argument("--plot", help="write the verification curve (TAR against FAR) to this PNG (or .pdf, .svg)")
    p.add_argument("--out", help="write the threshold and rates to this JSON file")
    p.set_defaults(func=cmd_calibrate)
