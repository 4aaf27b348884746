"""Training loop for hash heads over embeddings (needs torch).

``train_hasher`` draws P x K class-balanced batches (:class:`~hashindex.training.data.PKSampler`),
optimises a loss from :func:`hashindex.training.losses.make_loss` on the head's tanh output, and after
every epoch measures the codes on identity-disjoint validation data with
:mod:`hashindex.evaluation.metrics`.

Model selection. The index shortlists Hamming neighbours and reranks them with exact float
similarity, so what a code must do is put each query's exact float nearest neighbour early in
the Hamming ranking. The default criterion is therefore ``p95_candidates``: the 95th percentile
over validation queries of the fraction of the validation gallery that must be reranked to
reach the exact cosine nearest neighbour (:func:`hashindex.evaluation.metrics.candidate_fraction_needed`,
leave-one-out, expected tie order) -- lower is better, and it bounds the rerank cost for 95% of
queries. ``map_at_r`` (Musgrave et al. 2020, identity relevance; higher is better) is the
alternative for identity retrieval. The best epoch's weights are kept; training stops early
after ``patience`` epochs without improvement.

Determinism: with ``device="cpu"`` two runs with the same config and data give identical
weights (``torch.manual_seed`` before building the model and loss; batches from a seeded numpy
Generator; no data-order randomness elsewhere).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hashindex.evaluation import metrics as hm
from hashindex.cli.train_commands import json_safe
from hashindex.core.codes import binarize
from hashindex.training.data import EmbeddingSet, PKSampler, identity_split
from hashindex.core.errors import IndexFormatError, InputError
from hashindex.training.models import HashHead, HashHeadConfig, build_model, model_spec
from hashindex.training.models.head import check_bits

CHECKPOINT_FORMAT = 1
MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.pt", "config.json", "metrics.json"
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", None)
# criterion -> +1 when higher is better, -1 when lower is better
SELECTION = {"p95_candidates": -1, "map_at_r": +1}


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in checkpoints as JSON).

    Attributes:
        bits: code length K (multiple of 8).
        loss: name for :func:`hashindex.training.losses.make_loss`.
        loss_params: keyword arguments of that loss (its hyper-parameters).
        hidden: hidden widths of the head's MLP (``()``: linear head).
        epochs: maximum number of epochs.
        p, k: identities per batch and rows per identity.
        optimizer: "adam" or "sgd" (momentum ``momentum``).
        lr, weight_decay, momentum: optimiser settings.
        schedule: per-epoch learning-rate schedule: "cosine" (to 0 at ``epochs``), "step"
            (``gamma`` every ``step_size`` epochs) or None.
        seed: seeds torch (initialisation) and the batch sampler.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        val_fraction: identities held out for validation when no ``val_data`` is given.
        patience: stop after this many epochs without improvement (None: never).
        select: model-selection criterion, "p95_candidates" or "map_at_r" (module docstring).
        num_threads: torch CPU threads during training (None: leave torch's setting).
        min_samples: identities with fewer training rows are dropped (no positive pair).
        small: P x K policy for identities with fewer than K rows: "replace" or "skip".
        eval_batch_size: rows per forward pass when encoding validation data.
        extra_rows: rows drawn uniformly from *all* training rows (single-image identities
            included) and appended to every P x K batch with label -1. Only losses that take
            features (``uses_features``, e.g. :class:`~hashindex.training.losses.distill.DistilledLoss`)
            can use them: they widen the neighbourhoods a distillation term sees beyond the
            batch's identities. 0 disables.
        extra_neighbours: when > 0, the extra rows come in groups: a uniformly drawn row and
            its ``extra_neighbours`` nearest training rows by cosine, so that a distillation
            term sees each group's true near neighbours (the ones a shortlist must rank
            correctly) instead of a sparse random sample. 0: extras are independent draws.
    """

    bits: int = 64
    loss: str = "csq"
    loss_params: dict[str, Any] = field(default_factory=dict)
    hidden: tuple[int, ...] = ()
    epochs: int = 30
    p: int = 32
    k: int = 4
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str | None = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.3
    patience: int | None = 5
    select: str = "p95_candidates"
    num_threads: int | None = None
    min_samples: int = 2
    small: str = "replace"
    eval_batch_size: int = 4096
    extra_rows: int = 0
    extra_neighbours: int = 0

    def __post_init__(self) -> None:
        check_bits(self.bits)
        self.hidden = tuple(int(h) for h in self.hidden)
        for name in ("epochs", "p", "k", "step_size", "min_samples", "eval_batch_size"):
            if int(getattr(self, name)) <= 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.select not in SELECTION:
            raise InputError(f"select must be one of {tuple(SELECTION)}, got {self.select!r}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise InputError("lr must be positive and weight_decay non-negative")
        for name in ("extra_rows", "extra_neighbours"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"{name} must be non-negative, got {getattr(self, name)!r}")
        if self.patience is not None and self.patience <= 0:
            raise InputError(f"patience must be positive or None, got {self.patience}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass
class TrainResult:
    """Outcome of :func:`train_hasher`.

    Attributes:
        model: the head with the best epoch's weights, in eval mode, on the CPU.
        config: the configuration used.
        history: one dict per epoch (epoch 0 = before training): loss, lr, validation metrics.
        best_metrics: validation metrics of the kept epoch (empty without validation data).
        best_epoch: the kept epoch.
        checkpoint_path: ``out_dir/model.pt`` when ``out_dir`` was given.
    """

    model: nn.Module
    config: TrainConfig
    history: list[dict]
    best_metrics: dict
    best_epoch: int
    checkpoint_path: Path | None = None


# -- devices, encoding, validation metrics ----------------------------------------------------
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device='cuda' but CUDA is not available")
    return torch.device(device)


@torch.no_grad()
def predict(model: nn.Module, inputs: np.ndarray, batch_size: int = 4096, device: str | torch.device = "cpu") -> np.ndarray:
    """Continuous codes ``float32 [N, K]`` of ``inputs [N, ...]`` in eval mode."""
    was_training = model.training
    model.eval()
    dev = torch.device(device)
    out = [
        model(torch.from_numpy(np.ascontiguousarray(inputs[s : s + batch_size])).to(dev)).float().cpu().numpy()
        for s in range(0, inputs.shape[0], batch_size)
    ]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.bits), np.float32)


def selection_metrics(codes: np.ndarray, features: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Validation metrics of packed ``codes uint8 [N, K/8]`` (leave-one-out over the set).

    Returns ``p50_candidates`` / ``p95_candidates`` (fraction of the set to rerank to reach each
    query's exact cosine NN), and with labels ``map_at_r``.
    """
    frac = hm.candidate_fraction_needed(codes, None, features, None, metric="cosine")
    p50, p95 = np.quantile(frac, [0.5, 0.95])
    out = {"p50_candidates": float(p50), "p95_candidates": float(p95)}
    if labels is not None:
        out["map_at_r"] = hm.map_at_r(codes, labels)
    return out


def _better(new: dict, best: dict, criterion: str) -> bool:
    a, b = new[criterion], best[criterion]
    if math.isnan(a):
        return False
    return math.isnan(b) or SELECTION[criterion] * (a - b) > 0


# -- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: TrainConfig | None, metrics: dict) -> Path:
    """``torch.save`` of the state_dict plus plain-JSON model spec, config and metrics.

    Everything in the file is tensors, str, numbers, lists and dicts, so it loads with
    ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model_spec(model),
        "train_config": None if config is None else config.to_dict(),
        "metrics": json_safe(metrics),  # plain types only
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, TrainConfig | None, dict]:
    """Inverse of :func:`save_checkpoint`; ``path`` may be the file or a model directory.

    Returns ``(model in eval mode on the CPU, training config or None, metrics)``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / torch errors all mean "not our checkpoint"
        raise IndexFormatError(f"{path}: not a loadable hashindex checkpoint ({e})") from e
    if not isinstance(payload, dict) or not {"format", "model", "state_dict"} <= set(payload):
        raise IndexFormatError(f"{path}: not a hashindex checkpoint (missing format/model/state_dict)")
    if payload["format"] > CHECKPOINT_FORMAT:
        raise IndexFormatError(
            f"{path}: checkpoint format {payload['format']} is newer than this hashindex "
            f"understands ({CHECKPOINT_FORMAT}); upgrade hashindex"
        )
    model = build_model(payload["model"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise IndexFormatError(f"{path}: weights do not match the model spec ({e})") from e
    cfg = payload.get("train_config")
    return model.eval(), (None if cfg is None else TrainConfig.from_dict(cfg)), payload.get("metrics") or {}


def save_model_dir(out_dir: str | os.PathLike, model: nn.Module, config: TrainConfig | None, metrics: dict) -> Path:
    """Write ``model.pt``, ``config.json`` (model spec + training config), ``metrics.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(out / MODEL_FILE, model, config, metrics)
    cfg = {"model": model_spec(model), "train": None if config is None else config.to_dict()}
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    (out / METRICS_FILE).write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    return ckpt


# -- training ---------------------------------------------------------------------------------
def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


def _training_rows(labels: np.ndarray, min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of identities with >= min_samples rows, and their labels remapped to 0..C-1."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    rows = np.flatnonzero(counts[inverse.reshape(-1)] >= min_samples)
    _, y = np.unique(labels[rows], return_inverse=True)
    return rows, y.reshape(-1).astype(np.int64)


def train_hasher(
    train_data: EmbeddingSet | tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    val_data: EmbeddingSet | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model: HashHead | None = None,
    loss: nn.Module | None = None,
) -> TrainResult:
    """Train a :class:`HashHead` on labelled embeddings.

    Args:
        train_data: features and labels (an EmbeddingSet or a ``(features [N, D], labels [N])``
            tuple); when ``val_data`` is None and
            ``config.val_fraction > 0`` it is first split by identity
            (:func:`identity_split` with ``config.seed``).
        config: the run's settings.
        val_data: identity-disjoint validation set (labels optional: without them only the
            candidate-fraction metrics are computed).
        out_dir: when given, the best model is written there (``model.pt``, ``config.json``,
            ``metrics.json``) each time it improves.
        progress: tqdm bars and one line per epoch.
        model: a head to start from (e.g. :meth:`HashHead.from_linear` of an ITQ hasher);
            default a fresh ``HashHead(D, bits, hidden)``.
        loss: a loss module ``(codes [B, K], labels [B]) -> scalar`` overriding
            ``make_loss(config.loss, ...)``; one with ``uses_features = True`` is called as
            ``loss(codes, labels, features [B, D])`` (rows from ``config.extra_rows`` carry
            label -1).
    """
    if isinstance(train_data, tuple):
        train_data = EmbeddingSet(*train_data)
    if train_data.labels is None:
        raise InputError("training needs labels (identities) in train_data")
    if val_data is None and config.val_fraction > 0:
        tr, va = identity_split(train_data.labels, config.val_fraction, config.seed)
        train_data, val_data = train_data.subset(tr), train_data.subset(va)
    if val_data is not None and val_data.dim != train_data.dim:
        raise InputError(f"validation features have dimension {val_data.dim}, training {train_data.dim}")
    if config.select == "map_at_r" and val_data is not None and val_data.labels is None:
        raise InputError("select='map_at_r' needs labels in val_data")
    rows, labels = _training_rows(train_data.labels, config.min_samples)
    sampler = PKSampler(labels, config.p, config.k, seed=config.seed, small=config.small, min_samples=1)
    device = resolve_device(config.device)

    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        torch.manual_seed(config.seed)
        if model is None:
            model = HashHead(HashHeadConfig(train_data.dim, config.bits, config.hidden))
        elif (model.in_dim, model.bits) != (train_data.dim, config.bits):
            raise InputError(f"initial model is {model.in_dim} -> {model.bits} bits, data/config need {train_data.dim} -> {config.bits}")
        if loss is None:
            from hashindex.training.losses import make_loss

            loss = make_loss(config.loss, bits=config.bits, num_classes=int(labels.max()) + 1, **config.loss_params)
        model, loss = model.to(device), loss.to(device)
        params = list(model.parameters()) + list(loss.parameters())
        opt = _optimizer(params, config)
        sched = _scheduler(opt, config)
        if config.extra_rows and not getattr(loss, "uses_features", False):
            raise InputError("extra_rows needs a loss that takes features (uses_features), e.g. DistilledLoss")
        # all training rows; the P x K sampler indexes the first len(rows), extras the rest too
        order = np.concatenate([rows, np.setdiff1d(np.arange(train_data.features.shape[0]), rows)])
        x = torch.from_numpy(train_data.features[order]).to(device)
        y = torch.from_numpy(np.concatenate([labels, np.full(order.size - rows.size, -1, np.int64)])).to(device)
        extra_rng = np.random.default_rng([config.seed, 1])
        neighbours = _cosine_neighbours(train_data.features[order], config.extra_neighbours) if config.extra_rows and config.extra_neighbours else None
        uses_features = getattr(loss, "uses_features", False)

        def validate() -> dict:
            if val_data is None:
                return {}
            h = predict(model, val_data.features, config.eval_batch_size, device)
            return selection_metrics(binarize(h), val_data.features, val_data.labels)

        best = validate()
        history = [{"epoch": 0, "loss": None, "lr": opt.param_groups[0]["lr"], **best}]
        best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), 0, 0
        report = tqdm.write if progress else (lambda s: None)
        report(_epoch_line(history[-1]))
        for epoch in range(1, config.epochs + 1):
            model.train()
            loss.train()
            sampler.set_epoch(epoch - 1)
            total, n = 0.0, 0
            for batch in tqdm(sampler, desc=f"epoch {epoch}", leave=False, disable=not progress):
                if config.extra_rows:
                    batch = np.concatenate([batch, _draw_extras(extra_rng, order.size, config.extra_rows, neighbours)])
                idx = torch.as_tensor(batch, device=device)
                yb = y[idx]
                if config.extra_rows:  # an extra row is unlabelled even when it repeats a P x K row
                    yb = torch.cat([yb[: -config.extra_rows], torch.full((config.extra_rows,), -1, device=device)])
                value = loss(model(x[idx]), yb, x[idx]) if uses_features else loss(model(x[idx]), yb)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                total, n = total + float(value.detach()), n + 1
            lr = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            metrics = validate()
            history.append({"epoch": epoch, "loss": total / max(n, 1), "lr": lr, **metrics})
            report(_epoch_line(history[-1]))
            # epoch 0 competes too: a start from ITQ that training cannot beat is kept
            if val_data is None or _better(metrics, best, config.select):
                best, best_epoch, stale = metrics, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                if out_dir is not None:  # written now too, so an interrupted run keeps its best
                    save_model_dir(out_dir, model, config, _summary(best, best_epoch, history))
            else:
                stale += 1
                if config.patience is not None and stale >= config.patience:
                    report(f"early stop: no improvement in {config.select} for {stale} epochs")
                    break
    finally:
        torch.set_num_threads(threads)
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    ckpt = None
    if out_dir is not None:
        ckpt = save_model_dir(out_dir, model, config, _summary(best, best_epoch, history))
    return TrainResult(model, config, history, best, best_epoch, ckpt)


def _cosine_neighbours(features: np.ndarray, n: int) -> np.ndarray:
    """``int64 [N, n]``: each row's ``n`` nearest other rows by inner product (FAISS, exact)."""
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, ids = index.search(x, min(n + 1, x.shape[0]))
    return np.stack([row[row != i][:n] for i, row in enumerate(ids)]) if x.shape[0] > n else ids[:, 1:]


def _draw_extras(rng: np.random.Generator, n_rows: int, count: int, neighbours: np.ndarray | None) -> np.ndarray:
    """``count`` extra row indices: independent draws, or groups of a row and its neighbours."""
    if neighbours is None:
        return rng.integers(0, n_rows, count)
    group = neighbours.shape[1] + 1
    seeds = rng.integers(0, n_rows, -(-count // group))
    return np.concatenate([seeds[:, None], neighbours[seeds]], axis=1).ravel()[:count]


def _summary(best: dict, epoch: int, history: list[dict]) -> dict:
    return {"best_epoch": epoch, "validation": best, "history": history}


def _epoch_line(h: dict) -> str:
    parts = [f"epoch {h['epoch']:3d}"]
    if h.get("loss") is not None:
        parts.append(f"loss {h['loss']:.4f}")
    for key in ("p95_candidates", "p50_candidates", "map_at_r"):
        if key in h:
            parts.append(f"{key} {h[key]:.4f}")
    return "  ".join(parts)
