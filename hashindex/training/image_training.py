"""End-to-end training of :class:`ImageHashNet` on an image folder (needs torch).

``train_images(root, config, options, out_dir)`` trains the ResNet-18 + FC + tanh network on
``root/<identity>/<image>`` with the embedding trainer's parts: a loss from
:func:`~hashindex.training.losses.make_loss` (optionally inside
:class:`~hashindex.training.losses.distill.DistilledLoss` with a teacher's features as the
similarity target), P x K batches (:class:`~hashindex.training.data.PKSampler`), the dataset's
augmentation (:class:`~hashindex.training.data.images.Augment`), the checkpoint format of
:func:`hashindex.training.checkpoints.save_model_dir`, and the optimiser, schedule and model
selection of :mod:`hashindex.training.optim`.

Never worse than the start, judged on new people. The *start* is what a run has before any
gradient step: with a teacher, the teacher's features binarised by ITQ (what
``hashindex export --hasher itq --backbone TEACHER`` ships); without one, the network with its
hash layer set to ITQ over its initial backbone features. The judged-training driver
(:mod:`hashindex.training.judge`, shared with the embedding recipes; :class:`ImageRun` is its
trainer) cuts the identities into ``options.folds`` folds; for each fold a model is trained on the others (its epoch chosen on
a validation split *of those* identities, the start competing as epoch 0) and compared with
the start fitted on the same identities, on the held-out fold's people, which nothing was fit
or tuned on. Only when training beats the start in every fold is the model trained on all
identities shipped; otherwise the start is shipped, and ``metrics.json`` and the run's output
say so. Criterion: ``p95_candidates`` against the teacher's features (the features a fused
model reranks with) when there is a teacher, else ``map_at_r`` (identity retrieval).

Run state lives in ``<out>.partial/`` (per-epoch ``resume.pt``, finished folds in
``folds.json``) and becomes ``<out>/`` when the run ends; ``resume=True`` continues an
interrupted run. Every input (folder, images, weights file, teacher) is checked before that
directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hashindex.core.codes import binarize
from hashindex.core.errors import HashIndexError, IndexFormatError, InputError
from hashindex.core.io import json_safe
from hashindex.core.preprocess import FACE_PREPROCESSING, ImagePreprocessing
from hashindex.training.checkpoints import save_model_dir
from hashindex.training.config import TrainConfig, check_count, check_number
from hashindex.training.data import PKSampler, identity_folds, identity_split, sampled_identities, training_rows
from hashindex.training.data.images import IMAGE_EXTENSIONS, Augment, ImageFolderDataset
from hashindex.training.judge import Fitted, itq_hasher, itq_start, judge_and_ship
from hashindex.training.loop import predict, resolve_device
from hashindex.training.models import HashHead, ImageHashNet
from hashindex.training.models.image_net import check_backbone_weights
from hashindex.training.optim import Selection, epoch_line, make_optimizer, make_scheduler, selection_metrics

RESUME_FILE, FOLDS_FILE = "resume.pt", "folds.json"
RESUME_FORMAT = 1


@dataclass
class ImageOptions:
    """What an image run needs beyond :class:`TrainConfig`.

    Attributes:
        width: backbone width (64 = torchvision's ResNet-18; only 64 loads its weight files).
        work_size: side the network resizes images to inside the graph (None: the input size).
        weights: backbone ``state_dict`` file (``torch.load(weights_only=True)``), or None.
        freeze_epochs: the backbone is frozen (weights and BatchNorm statistics) for this many
            first epochs: only the hash layer learns.
        teacher: ONNX image model ``[N, 3, H, W] -> [N, D]`` whose features are the
            distillation target and the reranking features of the exported model.
        distill_weight, distill_tau: the distillation term (with a teacher).
        crop_scale, hflip: training augmentation (:class:`Augment`).
        folds: identity folds for the never-worse-than-the-start judgement (< 2: not judged).
        workers: DataLoader worker processes (0: decode in the training process).
        eval_batch_size: images per forward pass when encoding.
        init_images: at most this many training images fit the ITQ start of the hash layer.
    """

    width: int = 64
    work_size: int | None = None
    weights: str | None = None
    freeze_epochs: int = 0
    teacher: str | None = None
    distill_weight: float = 1.0
    distill_tau: float = 0.05
    crop_scale: tuple[float, float] = (0.85, 1.0)
    hflip: float = 0.5
    folds: int = 3
    workers: int = 0
    eval_batch_size: int = 128
    init_images: int = 2048

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        Augment(self.crop_scale, self.hflip)  # validates
        for name in ("freeze_epochs", "folds", "workers"):
            setattr(self, name, check_count(getattr(self, name), name, 0))
        for name in ("eval_batch_size", "init_images"):
            setattr(self, name, check_count(getattr(self, name), name, 1))
        self.distill_weight = check_number(self.distill_weight, "distill_weight", 0.0)
        self.distill_tau = check_number(self.distill_tau, "distill_tau", 0.0, strict=True)

    def to_dict(self) -> dict:
        return json_safe(asdict(self))  # tuples as JSON lists

    @classmethod
    def from_dict(cls, d: dict) -> "ImageOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ImageTrainResult:
    """Outcome of :func:`train_images`.

    Attributes:
        model: the shipped model (eval mode, CPU): an :class:`ImageHashNet`, or with a teacher
            and ``shipped == "start"`` the ITQ :class:`HashHead` over the teacher's features.
        shipped: "learned" or "start".
        folds: per held-out fold: ``learned`` and ``start`` metrics, identities, images.
        history: per-epoch records of the final training run (empty when the start ships).
        out_dir: the model directory, when written.
        note: one line saying what was shipped and why.
        config: the configuration used (``p`` lowered with ``auto_p``).
    """

    model: nn.Module
    shipped: str
    folds: list[dict]
    history: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    note: str = ""
    config: TrainConfig | None = None


# -- input checks ------------------------------------------------------------------------------
def check_image_folder(root: str | os.PathLike, p: int = 2, min_images: int = 2) -> tuple[list[str], np.ndarray, list[str]]:
    """Scan ``root/<identity>/<image>`` and check every file before training starts.

    Hidden files (``.name``) are ignored; any other file that is not a decodable image raises
    :class:`InputError` naming it. P x K batches need at least ``max(p, 2)`` identities with
    ``min_images`` (>= 2) images.

    Returns ``(paths, int64 labels, identity names)``.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such image folder")
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(names):
        for f in sorted((root / name).iterdir()):
            if f.name.startswith(".") or f.is_dir():
                continue
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                raise InputError(f"{f}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
            try:
                with Image.open(f) as im:
                    im.verify()
            except Exception as e:  # PIL raises many types for foreign / truncated bytes
                raise InputError(f"{f}: unreadable image ({type(e).__name__}: {e})") from e
            paths.append(str(f))
            labels.append(label)
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(names)) if labels.size else np.zeros(0, np.int64)
    need = max(int(p), 2)
    enough = int((counts >= max(min_images, 2)).sum())
    if enough < need:
        raise InputError(
            f"{root}: P x K batches need at least {need} identities (sub-folders) with >= {max(min_images, 2)} images "
            f"each; found {enough} ({len(names)} identities, {len(paths)} images)"
        )
    return paths, labels, names


# -- encoding ---------------------------------------------------------------------------------
class _Indexed(torch.utils.data.Dataset):
    """``(image, label, row)``: the row finds the image's teacher features."""

    def __init__(self, base: ImageFolderDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x, y, i


def _loader(ds: ImageFolderDataset, batch_size: int, workers: int, sampler=None):
    kw = dict(num_workers=workers, persistent_workers=False)
    if sampler is not None:
        return torch.utils.data.DataLoader(_Indexed(ds), batch_sampler=sampler, **kw)
    return torch.utils.data.DataLoader(_Indexed(ds), batch_size=batch_size, shuffle=False, **kw)


@torch.no_grad()
def encode_images(model: nn.Module, ds: ImageFolderDataset, batch_size: int = 128, device="cpu",
                  workers: int = 0, features: bool = False) -> np.ndarray:
    """``model(images)`` (or ``model.backbone_features`` with ``features=True``) for every image
    of ``ds`` in eval mode: ``float32 [N, ...]``."""
    was = model.training
    model.eval()
    out = []
    for x, _, _ in _loader(ds, batch_size, workers):
        x = x.to(device)
        out.append((model.backbone_features(x) if features else model(x)).float().cpu().numpy())
    model.train(was)
    return np.concatenate(out)


# -- the start ---------------------------------------------------------------------------------
def itq_init(model: ImageHashNet, ds: ImageFolderDataset, options: ImageOptions, seed: int, device) -> None:
    """Set the hash layer to ITQ over the network's current backbone features (pre-tanh mean
    ``|z|`` = 1, as the embedding recipes start), fitted on up to ``options.init_images`` images."""
    rng = np.random.default_rng([seed, 3])
    take = np.sort(rng.permutation(len(ds))[: options.init_images])
    f = encode_images(model, ds.subset(take), options.eval_batch_size, device, options.workers, features=True)
    hasher = itq_hasher(f, model.bits)
    z = hasher.project(f)
    scale = 1.0 / max(float(np.abs(z).mean()), 1e-12)
    with torch.no_grad():
        model.hash_fc.weight.copy_(torch.as_tensor(hasher.weight * scale, dtype=torch.float32))
        model.hash_fc.bias.copy_(torch.as_tensor(hasher.bias * scale, dtype=torch.float32))


teacher_start = itq_start
"""ITQ over the teacher's features as a linear :class:`HashHead` (:func:`~hashindex.training.judge.itq_start`)."""


# -- one training run --------------------------------------------------------------------------
@dataclass
class ImageRun:
    """The data and settings of one :func:`train_images` call, as the judged-training driver's
    :class:`~hashindex.training.judge.Trainer`: :meth:`fit` trains a network on some rows
    (:meth:`train`), :meth:`start` is the start fitted on some rows, :meth:`score` measures a
    model on some rows by :attr:`criterion`."""

    paths: list[str]
    labels: np.ndarray
    names: list[str]
    config: TrainConfig
    options: ImageOptions
    preprocess: ImagePreprocessing
    teacher_features: np.ndarray | None
    device: torch.device
    work: Path | None
    progress: bool

    @property
    def criterion(self) -> str:
        return "p95_candidates" if self.teacher_features is not None else "map_at_r"

    def dataset(self, rows: np.ndarray, augment: bool) -> ImageFolderDataset:
        aug = Augment(self.options.crop_scale, self.options.hflip) if augment else None
        return ImageFolderDataset([self.paths[i] for i in rows], self.labels[rows], self.names, self.preprocess, aug)

    def metrics(self, h: np.ndarray, rows: np.ndarray) -> dict:
        """Selection metrics of continuous codes ``h`` of ``rows``."""
        if self.teacher_features is not None:
            return selection_metrics(binarize(h), self.teacher_features[rows], self.labels[rows])
        from hashindex.evaluation.ranking import map_at_r

        return {"map_at_r": map_at_r(binarize(h), self.labels[rows])}

    def new_model(self) -> ImageHashNet:
        o = self.options
        work = None if o.work_size is None else (int(o.work_size), int(o.work_size))
        return ImageHashNet.create(self.config.bits, preprocess=self.preprocess, width=o.width, work_size=work,
                                   pretrained_path=o.weights)

    def train(self, rows: np.ndarray, stage: str) -> tuple[ImageHashNet, dict, list[dict], dict]:
        """Train on ``rows`` (a validation split of their identities picks the epoch; epoch 0, the
        ITQ start of the hash layer, competes). Returns (best model, its validation metrics,
        history, the epoch-0 state)."""
        return _fit(self, rows, stage)

    def fit(self, rows: np.ndarray, stage: str) -> Fitted:
        model, val, history, start_state = self.train(rows, stage)
        start = None
        if self.teacher_features is None:  # the start is this network before its first step
            start = copy.deepcopy(model)
            start.load_state_dict(start_state)
        return Fitted(model, start, {"selected_epoch": val["best_epoch"]}, history)

    def start(self, rows: np.ndarray) -> nn.Module:
        """ITQ over the teacher's features of ``rows``, else a fresh network whose hash layer is
        ITQ over its initial backbone features of ``rows``."""
        if self.teacher_features is not None:
            return itq_start(self.teacher_features[rows], self.config.bits)
        torch.manual_seed(self.config.seed)
        model = self.new_model()
        itq_init(model, self.dataset(rows, augment=False), self.options, self.config.seed, "cpu")
        return model.eval()

    def score(self, model: nn.Module, rows: np.ndarray) -> dict:
        """:meth:`metrics` of ``model``'s codes for ``rows`` (a head reads the teacher's features)."""
        if isinstance(model, HashHead):  # a start over the teacher's features
            return self.metrics(predict(model, self.teacher_features[rows]), rows)
        o = self.options
        return self.metrics(encode_images(model, self.dataset(rows, augment=False), o.eval_batch_size, "cpu", o.workers), rows)


_Run = ImageRun  # the name benchmarks/image_training.py uses


def _save_resume(path: Path, stage: str, epoch: int, model, opt, sched, keep: Selection, history) -> None:
    payload = {
        "format": RESUME_FORMAT, "stage": stage, "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(), "scheduler": None if sched is None else sched.state_dict(),
        "best_state": keep.state, "best": json.dumps(keep.best), "best_epoch": keep.epoch, "stale": keep.stale,
        "history": json.dumps(history), "rng": torch.get_rng_state(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_resume(path: Path, stage: str) -> dict | None:
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise IndexFormatError(f"{path}: not a loadable resume checkpoint ({e})") from e
    if payload.get("format") != RESUME_FORMAT or payload.get("stage") != stage:
        return None
    return payload


def _fit(run: ImageRun, rows: np.ndarray, stage: str) -> tuple[ImageHashNet, dict, list[dict], dict]:
    """:meth:`ImageRun.train`."""
    cfg, o = run.config, run.options
    if cfg.val_fraction > 0:
        tr, va = identity_split(run.labels[rows], cfg.val_fraction, cfg.seed)
        train_rows, val_rows = rows[tr], rows[va]
    else:
        train_rows, val_rows = rows, None
    keep, y = training_rows(run.labels[train_rows], cfg.min_samples)
    train_rows = train_rows[keep]
    sampler = PKSampler(y, cfg.p, cfg.k, seed=cfg.seed, small=cfg.small, min_samples=1)
    train_ds = run.dataset(train_rows, augment=True)
    train_ds.labels = y  # contiguous class ids for class-centre losses
    val_ds = None if val_rows is None else run.dataset(val_rows, augment=False)

    torch.manual_seed(cfg.seed)
    model = run.new_model().to(run.device)
    itq_init(model, run.dataset(train_rows, augment=False), o, cfg.seed, run.device)
    start_state = copy.deepcopy(model.state_dict())
    from hashindex.training.losses import make_loss
    from hashindex.training.losses.distill import DistilledLoss

    loss = make_loss(cfg.loss, bits=cfg.bits, num_classes=int(y.max()) + 1, **cfg.loss_params)
    teacher = None
    if run.teacher_features is not None and o.distill_weight > 0:
        loss = DistilledLoss(loss, o.distill_weight, o.distill_tau)
        teacher = torch.from_numpy(run.teacher_features[train_rows]).to(run.device)
    loss = loss.to(run.device)
    opt = make_optimizer(list(model.parameters()) + list(loss.parameters()), cfg)
    sched = make_scheduler(opt, cfg)

    def validate() -> dict:
        if val_ds is None:
            return {}
        return run.metrics(encode_images(model, val_ds, o.eval_batch_size, run.device, o.workers), val_rows)

    resume_path = None if run.work is None else run.work / RESUME_FILE
    state = None if resume_path is None else _load_resume(resume_path, stage)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state["scheduler"] is not None:
            sched.load_state_dict(state["scheduler"])
        keep = Selection(run.criterion, cfg.patience, val_ds is not None, json.loads(state["best"]), state["best_state"],
                         int(state["best_epoch"]), int(state["stale"]))
        history, first = json.loads(state["history"]), int(state["epoch"]) + 1
        torch.set_rng_state(state["rng"])
        _report(run, f"[{stage}] resumed after epoch {first - 1}")
    else:
        best = validate()
        history = [{"epoch": 0, "loss": None, **best}]
        keep = Selection(run.criterion, cfg.patience, val_ds is not None, best, copy.deepcopy(model.state_dict()))
        first = 1
        _report(run, f"[{stage}] " + epoch_line(history[-1]))
    for epoch in range(first, cfg.epochs + 1):
        t0 = time.perf_counter()
        frozen = epoch <= o.freeze_epochs
        model.train()
        loss.train()
        for prm in model.backbone.parameters():
            prm.requires_grad_(not frozen)
        if frozen:
            model.backbone.eval()  # BatchNorm statistics frozen too
        sampler.set_epoch(epoch - 1)
        total, n = 0.0, 0
        for x, yb, idx in tqdm(_loader(train_ds, 0, o.workers, sampler), desc=f"{stage} epoch {epoch}",
                               leave=False, disable=not run.progress):
            x, yb = x.to(run.device), yb.to(run.device)
            h = model(x)
            value = loss(h, yb, teacher[idx.to(run.device)]) if teacher is not None else loss(h, yb)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            total, n = total + float(value.detach()), n + 1
        if sched is not None:
            sched.step()
        metrics = validate()
        history.append({"epoch": epoch, "loss": total / max(n, 1), "frozen": frozen,
                        "seconds": time.perf_counter() - t0, **metrics})
        _report(run, f"[{stage}] " + epoch_line(history[-1]))
        keep.update(metrics, epoch, model)  # the loop's rule: epoch 0 (the start) competes
        if resume_path is not None:
            _save_resume(resume_path, stage, epoch, model, opt, sched, keep, history)
        if keep.should_stop:
            _report(run, f"[{stage}] early stop: no improvement in {run.criterion} for {keep.stale} epochs")
            break
    model.load_state_dict(keep.state)
    model = model.cpu().eval()
    if resume_path is not None:
        resume_path.unlink(missing_ok=True)
    return model, {"best_epoch": keep.epoch, **keep.best}, history, start_state


def _report(run: ImageRun, text: str) -> None:
    if run.progress:
        tqdm.write(text)


# -- entry point -------------------------------------------------------------------------------
def train_images(
    root: str | os.PathLike,
    config: TrainConfig,
    options: ImageOptions | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    resume: bool = False,
    preprocess: ImagePreprocessing = FACE_PREPROCESSING,
    teacher_features: np.ndarray | None = None,
    auto_p: bool = False,
) -> ImageTrainResult:
    """Train an :class:`ImageHashNet` on ``root/<identity>/<image>`` (module docstring).

    Args:
        root: the image folder.
        config: loss, bits, P x K, optimiser, epochs, seed, device, ``val_fraction`` (the
            epoch-selection split inside each training set), ``patience``.
        options: image-specific settings (:class:`ImageOptions`).
        out_dir: the model directory to write (``model.pt``, ``config.json``, ``metrics.json``).
        progress: tqdm bars and one line per epoch.
        resume: continue the interrupted run in ``<out_dir>.partial``.
        preprocess: the images' input contract (the teacher's, when there is one).
        teacher_features: the teacher's L2-normalised features of the folder's images in scan
            order, when already computed (skips running the teacher).
        auto_p: lower ``config.p`` to the identities the smallest training run has (each fold's
            and the final one, after the validation split) instead of refusing it (``hashindex
            train --images`` without ``--p``).
    """
    options = options or ImageOptions()
    paths, labels, names = check_image_folder(root, 2 if auto_p else config.p, config.min_samples)
    config = _fit_p(config, labels, options.folds, auto_p, progress)
    device = resolve_device(config.device)
    if options.weights is not None:  # a mismatch fails here, before anything is written
        check_backbone_weights(options.weights, options.width)
    if options.teacher is not None:
        from hashindex.training.teacher import OnnxTeacher

        teacher = OnnxTeacher(options.teacher, preprocess)
        if teacher_features is None:
            teacher_features = teacher.features(paths, progress=progress)
    if teacher_features is not None:
        teacher_features = np.ascontiguousarray(teacher_features, dtype=np.float32)
        if teacher_features.shape[0] != len(paths):
            raise InputError(f"teacher features have {teacher_features.shape[0]} rows, {root} has {len(paths)} images")
        if options.teacher is None:
            raise InputError("teacher_features need options.teacher (the model the exported graph runs)")
    out = None if out_dir is None else Path(out_dir)
    work = None if out is None else out.with_name(out.name + ".partial")
    if work is not None:
        if work.exists() and not resume:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
    run = ImageRun(paths, labels, names, config, options, preprocess, teacher_features, device, work, progress)
    start_name = "the start (ITQ over the " + ("teacher's features)" if teacher_features is not None else "initial backbone)")

    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        done, save_folds = _fold_store(run)
        judged = judge_and_ship(run, labels, options.folds, config.seed, "training", start_name, progress,
                                lambda text: _report(run, text), done, save_folds)
    except HashIndexError:
        # bad input found late: resuming cannot fix it, so leave no partial directory behind;
        # interruptions and crashes keep theirs for --resume
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    model, shipped, note = judged.model, judged.shipped, judged.note
    folds = [_json(f) for f in judged.folds]
    history = [] if judged.fitted is None else judged.fitted.result

    result = ImageTrainResult(model, shipped, folds, history, None, note, config)
    if out is not None:
        summary = {
            "shipped": shipped, "note": note, "criterion": run.criterion, "folds": folds, "history": history,
            "images": {"root": str(root), "count": len(paths), "identities": len(names)},
            "image_options": options.to_dict(), "teacher": options.teacher,
            "preprocess": preprocess.to_dict(),
        }
        save_model_dir(work, model, config, summary)
        for name in (RESUME_FILE, FOLDS_FILE):
            (work / name).unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
        result.out_dir = out
    return result


def _fit_p(config: TrainConfig, labels: np.ndarray, folds: int, auto_p: bool, progress: bool) -> TrainConfig:
    """``config``, its ``p`` lowered to what every training run's identities allow (``auto_p``),
    or :class:`InputError` naming the largest ``p`` that works, before anything trains."""
    have = sampled_identities(labels, folds, config.val_fraction, config.min_samples, config.seed)
    if config.p <= have:
        return config
    where = (f"{np.unique(labels).size} identities, {folds if folds >= 2 else 'no'} held-out folds, "
             f"val_fraction {config.val_fraction:g}")
    if auto_p and have >= 2:
        if progress:
            tqdm.write(f"P x K: p={have} identities per batch (the smallest training run has {have}: {where})")
        return replace(config, p=have)
    lower = f"lower p (--p {have}), or " if have >= 2 else ""
    raise InputError(f"p={config.p} identities per batch, but the smallest training run has {have} identities with >= "
                     f"{config.min_samples} images ({where}); {lower}use fewer folds (--folds) or a smaller val_fraction "
                     "(--val-fraction)")


def _fold_store(run: ImageRun):
    """The folds an interrupted run finished (``folds.json``) and a callback saving new ones."""
    path = None if run.work is None else run.work / FOLDS_FILE
    if path is None:
        return [], None
    done = json.loads(path.read_text()) if path.exists() else []

    def save(records: list[dict]) -> None:
        path.write_text(json.dumps(_json(records), indent=1))

    return done, save


def _json(x: Any) -> Any:
    """Plain JSON types (numpy scalars -> Python, NaN / inf -> None)."""
    return json.loads(json.dumps(json_safe(x)))


__all__ = ["ImageOptions", "ImageRun", "ImageTrainResult", "check_image_folder", "encode_images", "identity_folds",
           "itq_init", "teacher_start", "train_images"]
