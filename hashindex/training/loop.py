"""Training loop for hash heads over embeddings (needs torch).

``train_hasher`` draws P x K class-balanced batches (:class:`~hashindex.training.data.PKSampler`),
and optimises a loss from :func:`hashindex.training.losses.make_loss` on the head's tanh output.

Model selection (:mod:`hashindex.training.optim`): after every epoch the codes of identity-disjoint
validation data are scored (``p95_candidates`` by default, or ``map_at_r``); the best epoch's
weights are kept, epoch 0 competing, and training stops early after ``patience`` epochs without
improvement.

Determinism: with ``device="cpu"`` two runs with the same config and data give identical
weights (``torch.manual_seed`` before building the model and loss; batches from a seeded numpy
Generator; no data-order randomness elsewhere).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hashindex.core.codes import binarize
from hashindex.core.errors import InputError
from hashindex.training.checkpoints import load_checkpoint, save_checkpoint, save_model_dir  # noqa: F401  (old import path)
from hashindex.training.config import TrainConfig, TrainResult
from hashindex.training.data import EmbeddingSet, PKSampler, identity_split, training_rows
from hashindex.training.models import HashHead, HashHeadConfig
from hashindex.training.optim import Selection, epoch_line, make_optimizer, make_scheduler, selection_metrics


# -- devices and encoding ----------------------------------------------------
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


# -- one run, step by step ------------------------------------------------------------------
def split_data(
    train_data: EmbeddingSet | tuple[np.ndarray, np.ndarray], config: TrainConfig, val_data: EmbeddingSet | None
) -> tuple[EmbeddingSet, EmbeddingSet | None]:
    """Check the data and, without ``val_data``, hold out ``config.val_fraction`` of the identities."""
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
    return train_data, val_data


def build_model_and_loss(
    dim: int, num_classes: int, config: TrainConfig, model: HashHead | None, loss: nn.Module | None
) -> tuple[nn.Module, nn.Module]:
    """The head (fresh unless given) and the loss (``make_loss`` unless given); seeds torch first."""
    torch.manual_seed(config.seed)
    if model is None:
        model = HashHead(HashHeadConfig(dim, config.bits, config.hidden))
    elif (model.in_dim, model.bits) != (dim, config.bits):
        raise InputError(f"initial model is {model.in_dim} -> {model.bits} bits, data/config need {dim} -> {config.bits}")
    if loss is None:
        from hashindex.training.losses import make_loss

        loss = make_loss(config.loss, bits=config.bits, num_classes=num_classes, **config.loss_params)
    return model, loss


@dataclass
class Batches:
    """Every training row on the device, and how each step's batch is drawn.

    The P x K sampler indexes the first ``len(rows)`` rows (identities with enough samples);
    ``config.extra_rows`` unlabelled extras come from all rows.
    """

    x: torch.Tensor
    y: torch.Tensor
    sampler: PKSampler
    extra_rows: int
    extra_rng: np.random.Generator
    neighbours: np.ndarray | None

    @classmethod
    def build(cls, train_data: EmbeddingSet, rows: np.ndarray, labels: np.ndarray, config: TrainConfig, device) -> "Batches":
        sampler = PKSampler(labels, config.p, config.k, seed=config.seed, small=config.small, min_samples=1)
        order = np.concatenate([rows, np.setdiff1d(np.arange(train_data.features.shape[0]), rows)])
        x = torch.from_numpy(train_data.features[order]).to(device)
        y = torch.from_numpy(np.concatenate([labels, np.full(order.size - rows.size, -1, np.int64)])).to(device)
        with_neighbours = config.extra_rows and config.extra_neighbours
        neighbours = _cosine_neighbours(train_data.features[order], config.extra_neighbours) if with_neighbours else None
        return cls(x, y, sampler, config.extra_rows, np.random.default_rng([config.seed, 1]), neighbours)

    def epoch(self, epoch: int, progress: bool):
        """Yield ``(inputs, labels)`` for every batch of 1-based ``epoch``."""
        self.sampler.set_epoch(epoch - 1)
        for batch in tqdm(self.sampler, desc=f"epoch {epoch}", leave=False, disable=not progress):
            if self.extra_rows:
                batch = np.concatenate([batch, _draw_extras(self.extra_rng, self.x.shape[0], self.extra_rows, self.neighbours)])
            idx = torch.as_tensor(batch, device=self.x.device)
            yb = self.y[idx]
            if self.extra_rows:  # an extra row is unlabelled even when it repeats a P x K row
                yb = torch.cat([yb[: -self.extra_rows], torch.full((self.extra_rows,), -1, device=self.x.device)])
            yield self.x[idx], yb


def train_epoch(model: nn.Module, loss: nn.Module, opt: torch.optim.Optimizer, batches: Batches, epoch: int, progress: bool) -> float:
    """One pass over the sampler's batches; the mean loss."""
    model.train()
    loss.train()
    uses_features = getattr(loss, "uses_features", False)
    total, n = 0.0, 0
    for xb, yb in batches.epoch(epoch, progress):
        value = loss(model(xb), yb, xb) if uses_features else loss(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        total, n = total + float(value.detach()), n + 1
    return total / max(n, 1)


def validate(model: nn.Module, val_data: EmbeddingSet | None, config: TrainConfig, device) -> dict:
    """:func:`selection_metrics` of the model's codes for ``val_data`` (``{}`` without it)."""
    if val_data is None:
        return {}
    h = predict(model, val_data.features, config.eval_batch_size, device)
    return selection_metrics(binarize(h), val_data.features, val_data.labels)


def train_hasher(
    train_data: EmbeddingSet | tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    val_data: EmbeddingSet | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model: HashHead | None = None,
    loss: nn.Module | None = None,
    stage: str | None = None,
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
        stage: a label for the progress lines (``[fold 0] epoch 1 ...``), when this run is one of
            several.
    """
    train_data, val_data = split_data(train_data, config, val_data)
    rows, labels = training_rows(train_data.labels, config.min_samples)
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        model, loss = build_model_and_loss(train_data.dim, int(labels.max()) + 1, config, model, loss)
        model, loss = model.to(device), loss.to(device)
        opt = make_optimizer(list(model.parameters()) + list(loss.parameters()), config)
        sched = make_scheduler(opt, config)
        if config.extra_rows and not getattr(loss, "uses_features", False):
            raise InputError("extra_rows needs a loss that takes features (uses_features), e.g. DistilledLoss")
        batches = Batches.build(train_data, rows, labels, config, device)
        history = [{"epoch": 0, "loss": None, "lr": opt.param_groups[0]["lr"], **validate(model, val_data, config, device)}]
        keep = Selection(config.select, config.patience, val_data is not None, _metrics_of(history[0]),
                         copy.deepcopy(model.state_dict()))  # fmt: skip
        prefix = f"[{stage}] " if stage else ""
        report = (lambda text: tqdm.write(prefix + text)) if progress else (lambda text: None)
        report(epoch_line(history[-1]))
        for epoch in range(1, config.epochs + 1):
            mean_loss = train_epoch(model, loss, opt, batches, epoch, progress)
            lr = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            metrics = validate(model, val_data, config, device)
            history.append({"epoch": epoch, "loss": mean_loss, "lr": lr, **metrics})
            report(epoch_line(history[-1]))
            if keep.update(metrics, epoch, model):
                if out_dir is not None:  # written now too, so an interrupted run keeps its best
                    save_model_dir(out_dir, model, config, _summary(keep.best, keep.epoch, history))
            elif keep.should_stop:
                report(f"early stop: no improvement in {config.select} for {keep.stale} epochs")
                break
    finally:
        torch.set_num_threads(threads)
    model.load_state_dict(keep.state)
    model = model.cpu().eval()
    ckpt = None if out_dir is None else save_model_dir(out_dir, model, config, _summary(keep.best, keep.epoch, history))
    return TrainResult(model, config, history, keep.best, keep.epoch, ckpt)


def _metrics_of(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("epoch", "loss", "lr")}


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
