"""``hashindex export``: a trained head, an untrained hasher, or a fused backbone + head, to ONNX."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hashindex.cli.common import fit_baseline, load_rows, out_file, positive_int
from hashindex.core.errors import InputError
from hashindex.core.io import atomic_write_bytes
from hashindex.serving.hashers import HASHER_KINDS
from hashindex.serving.index import DEFAULT_BITS


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """``hashindex export``: a trained head, an untrained hasher, or a fused backbone + head."""
    p = subparsers.add_parser(
        "export",
        help="export a hash model to ONNX (codes packed in the graph)",
        description="Export a trained model directory (--head DIR), an untrained hasher fitted on "
        "--data (--hasher itq|pca|sign, on L2-normalised features), or, with --backbone, a fused "
        "image model: backbone -> L2-normalised features -> hash head, in one graph.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--head", help="model directory from `hashindex train` (--data or --images), or a head .onnx "
                     "(with --backbone)")
    src.add_argument("--hasher", choices=HASHER_KINDS, help="an untrained hasher, fitted on --data")
    p.add_argument("--data", help=".npz to fit --hasher on (and recorded as training data)")
    p.add_argument("--bits", type=positive_int, default=DEFAULT_BITS)
    p.add_argument("--backbone", help="feature-extractor ONNX (e.g. ../shared/data/lfw/MobileFaceNet.onnx)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.set_defaults(func=run_export)
    return p


add_parsers = add_export_parser


def _export_features_model(args: argparse.Namespace, path: Path) -> None:
    from hashindex.export import onnx as onnx_export

    if args.hasher:
        if not args.data:
            raise InputError("--hasher needs --data to fit on")
        from hashindex.core.onnx_contract import TrainingInfo

        hasher = fit_baseline(args.hasher, load_rows(args.data).features, args.bits)
        onnx_export.export_linear_hasher(hasher, path, TrainingInfo(loss=args.hasher, data=str(args.data)))
    elif str(args.head).endswith(".onnx"):
        atomic_write_bytes(path, Path(args.head).read_bytes())
    else:
        onnx_export.export_model_dir(args.head, path, data=args.data)


def run_export(args: argparse.Namespace) -> int:
    from hashindex.export import onnx as onnx_export

    out = out_file(args.out)
    from hashindex.cli.image_commands import is_image_model_dir

    if args.head and is_image_model_dir(args.head):
        from hashindex.export.images import export_image_model_dir

        if args.backbone:
            raise InputError(f"{args.head} is an image model: it records its own teacher; drop --backbone")
        meta = export_image_model_dir(args.head, out, data=args.data)
        print(f"wrote {out}: {meta.bits} bits, input {meta.input.name} {list(meta.input.shape)}, "
              f"features from {meta.backbone.name if meta.backbone else 'the model'}")
        return 0
    if args.backbone:
        with tempfile.TemporaryDirectory() as tmp:
            head = Path(tmp) / "head.onnx"
            _export_features_model(args, head)
            meta = onnx_export.fuse_backbone_and_head(args.backbone, head, out)
    else:
        _export_features_model(args, out)
        meta = onnx_export.read_metadata(out)
    print(f"wrote {out}: {meta.bits} bits, input {meta.input.name} {list(meta.input.shape)}")
    return 0
