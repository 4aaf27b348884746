"""Image-folder halves of ``hashindex train``, ``eval`` and ``export`` (torch imported lazily).

``hashindex train --images DIR`` trains :class:`ImageHashNet` end to end
(:func:`hashindex.training.image_training.train_images`); ``hashindex eval --images DIR``
evaluates an image model directory (or ``--hasher itq --teacher F.onnx``) on an image folder;
``hashindex export --head DIR`` recognises an image model directory and writes the fused
image model (:func:`hashindex.export.images.export_image_model_dir`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError


def add_image_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image training (--images DIR)")
    g.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: torchvision's; smaller trains faster)")
    g.add_argument("--work-size", type=int, default=None,
                   help="side the network resizes images to inside its graph (default: the input size, 112)")
    g.add_argument("--weights", help="backbone state_dict file to start from (torch.load weights_only=True)")
    g.add_argument("--freeze-epochs", type=int, default=0, help="train only the hash layer for the first N epochs")
    g.add_argument("--teacher", help="ONNX face model [N,3,112,112] -> [N,D] (e.g. MobileFaceNet.onnx): similarity "
                   "distillation target and the exported model's reranking features")
    g.add_argument("--distill-weight", type=float, default=1.0)
    g.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT.partial")


def run_image_train(args: argparse.Namespace) -> int:
    from hashindex.training.image_training import ImageOptions, train_images
    from hashindex.training.config import TrainConfig

    config = TrainConfig(
        bits=args.bits, loss=args.loss or "softmax", loss_params=dict(args.loss_param), epochs=args.epochs or 10,
        p=args.p or TrainConfig.p, k=args.k, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        schedule=None if args.schedule == "none" else args.schedule, seed=args.seed, device=args.device,
        val_fraction=args.val_fraction, patience=args.patience or None, num_threads=args.threads,
    )
    options = ImageOptions(width=args.width, work_size=args.work_size, weights=args.weights,
                           freeze_epochs=args.freeze_epochs, teacher=args.teacher,
                           distill_weight=args.distill_weight, folds=args.folds, workers=args.workers)
    result = train_images(args.images, config, options, out_dir=args.out, progress=not args.quiet, resume=args.resume,
                          auto_p=args.p is None)
    for f in result.folds:
        crit = f["criterion"]
        print(f"fold {f['fold']}: {f['identities']} held-out identities: learned {crit} {f['learned'][crit]:.4f}, "
              f"start {f['start'][crit]:.4f}")
    print(f"{result.note}; wrote {result.out_dir}")
    return 0


def __getattr__(name: str):
    if name == "run_recipe_judged":  # moved to train_commands (an embeddings feature); no import cycle
        from hashindex.cli.train_commands import run_recipe_judged

        return run_recipe_judged
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_image_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a model directory written by ``hashindex train --images``."""
    m = Path(path) / "metrics.json"
    if not m.is_file():
        return False
    try:
        return "image_options" in json.loads(m.read_text())
    except (OSError, ValueError):
        return False


def image_eval_codes(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """``(codes, reranking features, labels, name)`` of every image in ``args.images``.

    The reranking features (what "exact nearest neighbour" means) are the teacher's when there
    is one (the model directory's, or ``--teacher``), else the model's own backbone features.
    """
    import torch

    from hashindex.core.codes import binarize
    from hashindex.core.preprocess import FACE_PREPROCESSING
    from hashindex.training.image_training import check_image_folder
    from hashindex.training.teacher import OnnxTeacher

    paths, labels, _ = check_image_folder(args.images)
    if getattr(args, "max_items", None) and args.max_items < len(paths):
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.choice(len(paths), size=args.max_items, replace=False))
        paths, labels = [paths[i] for i in pick], labels[pick]
    if args.model:
        from hashindex.core.preprocess import ImagePreprocessing
        from hashindex.training.image_training import encode_images
        from hashindex.training.data.images import ImageFolderDataset
        from hashindex.training.checkpoints import load_checkpoint
        from hashindex.training.loop import predict

        model, config, metrics = load_checkpoint(args.model)
        teacher = getattr(args, "teacher", None) or metrics.get("teacher")
        pre = ImagePreprocessing.from_dict(metrics["preprocess"]) if "preprocess" in metrics else FACE_PREPROCESSING
        t = OnnxTeacher(teacher, pre).features(paths, progress=True) if teacher else None
        if model.kind == "hash_head":  # a shipped ITQ start over the teacher's features
            if t is None:
                raise InputError(f"{args.model}: a head over teacher features needs --teacher")
            return binarize(predict(model, t)), t, labels, f"ITQ start over {Path(teacher).name}"
        ds = ImageFolderDataset(paths, labels, None, model.config.preprocess)
        h = encode_images(model, ds, 128)
        if t is None:
            with torch.no_grad():
                feats = encode_images(model, ds, 128, features=True)
            t = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        name = f"image model ({config.loss if config else 'unknown'}, shipped {metrics.get('shipped', 'learned')})"
        return binarize(h), t.astype(np.float32), labels, name
    if not getattr(args, "teacher", None):
        raise InputError("--hasher with --images needs --teacher (the model whose features are hashed)")
    from hashindex.serving.hashers import make_hasher

    t = OnnxTeacher(args.teacher).features(paths, progress=True)
    hasher = make_hasher(args.hasher, t.shape[1], args.bits if args.hasher != "sign" else t.shape[1]).fit(t)
    return hasher.encode(t), t, labels, f"{Path(args.teacher).name} + {args.hasher}"


__all__ = ["add_image_train_options", "image_eval_codes", "is_image_model_dir", "run_image_train"]
