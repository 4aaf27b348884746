"""Never ship a trained model worse than its start on new people: the one judged-training driver
(needs torch).

A model trained from a start (ITQ, the hasher the index would otherwise use) can still end worse
than that start on identities it never saw, and one validation split is too noisy to catch it.
So the judgement is k-fold over identities (:func:`~hashindex.training.data.identity_folds`):
for each fold the model is trained on the other folds, exactly as it would be trained for
shipping, and compared with the start fitted on the same rows, on the held-out fold's people,
which nothing was fit or tuned on. Only when training beats the start in *every* fold is the
model trained on all rows shipped; otherwise the start itself is shipped.

The driver (:func:`judge_folds_of`, :func:`judge_and_ship`) knows nothing about the data: a
:class:`Trainer` supplies ``fit`` (train on some rows), ``start`` (the start fitted on some
rows) and ``score`` (selection metrics of a model on some rows). Two trainers use it:

* embeddings: :class:`RecipeTrainer`, a recipe from :data:`~hashindex.training.recipes.RECIPES`
  that starts from ITQ, against :func:`itq_start`, by ``p95_candidates``
  (:func:`~hashindex.training.optim.selection_metrics`); :func:`fit_recipe_judged` is the entry
  point (``hashindex train --data``);
* images: :class:`~hashindex.training.image_training.ImageRun`
  (:func:`~hashindex.training.image_training.train_images`, ``hashindex train --images``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from hashindex.core.codes import binarize
from hashindex.core.errors import InputError
from hashindex.serving.hashers import make_hasher
from hashindex.training.checkpoints import save_model_dir
from hashindex.training.config import TrainResult
from hashindex.training.data import identity_folds
from hashindex.training.loop import predict
from hashindex.training.models import HashHead
from hashindex.training.optim import better, selection_metrics
from hashindex.training.recipes import RECIPES, fit_recipe

CRITERION = "p95_candidates"


# -- the start ----------------------------------------------------------------------------------
def itq_hasher(features: np.ndarray, bits: int):
    """ITQ fitted on ``features [N, D]``; :class:`InputError` when N <= bits or D < bits."""
    if features.shape[0] <= bits or features.shape[1] < bits:
        raise InputError(f"the ITQ start of {bits}-bit codes needs more than {bits} training rows and features of "
                         f">= {bits} dimensions; got {features.shape[0]} rows of {features.shape[1]}-d features")
    return make_hasher("itq", features.shape[1], bits).fit(features)


def itq_start(features: np.ndarray, bits: int) -> HashHead:
    """ITQ fitted on ``features`` as a linear head in eval mode (its codes are the hasher's, bit
    for bit)."""
    hasher = itq_hasher(features, bits)
    return HashHead.from_linear(hasher.weight, hasher.bias).eval()


# -- the driver ---------------------------------------------------------------------------------
@dataclass
class Fitted:
    """One training run of a :class:`Trainer`.

    Attributes:
        model: the trained model (eval mode).
        start: the start this run began from, when it is not ``trainer.start(rows)`` (e.g. an
            image network's own epoch-0 state); None otherwise.
        info: extra fields for the fold record (e.g. ``selected_epoch``).
        result: the trainer's own record of the run (a :class:`TrainResult`, a history).
    """

    model: nn.Module
    start: nn.Module | None = None
    info: dict = field(default_factory=dict)
    result: Any = None


class Trainer(Protocol):
    """What the driver needs of a training procedure (rows index the trainer's data)."""

    criterion: str  # a key of :data:`~hashindex.training.config.SELECTION`

    def fit(self, rows: np.ndarray, stage: str) -> Fitted: ...

    def start(self, rows: np.ndarray) -> nn.Module: ...

    def score(self, model: nn.Module, rows: np.ndarray) -> dict: ...


def judge_fold(trainer: Trainer, fold: int, train: np.ndarray, held: np.ndarray, labels: np.ndarray) -> dict:
    """Train on ``train``, score it and the start on ``held``: the fold's record."""
    fitted = trainer.fit(train, f"fold {fold}")
    start = fitted.start if fitted.start is not None else trainer.start(train)
    learned, baseline = trainer.score(fitted.model, held), trainer.score(start, held)
    crit = trainer.criterion
    ratio = learned[crit] / baseline[crit] if baseline[crit] > 0 else float("inf")
    return {"fold": fold, "identities": int(np.unique(labels[held]).size), "images": int(held.size),
            "criterion": crit, "learned": learned, "start": baseline, "ratio": float(ratio),
            "learned_better": better(learned, baseline, crit), **fitted.info}


def judge_folds_of(
    trainer: Trainer,
    labels: np.ndarray,
    folds: int,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    done: list[dict] | None = None,
    on_fold: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Per-fold records (:func:`judge_fold`) over ``folds`` identity folds of ``labels``.

    ``done``: records of folds an interrupted run finished (skipped); ``on_fold(records)`` is
    called after every new fold (to persist them). ``progress``: a bar over the folds.
    """
    records = list(done or [])
    parts = identity_folds(labels, folds, seed)
    bar = tqdm(total=len(parts), initial=len(records), desc="held-out folds", unit="fold", disable=not progress)
    try:
        for f, held in enumerate(parts):
            if f < len(records):
                continue
            train = np.setdiff1d(np.arange(labels.size), held)
            records.append(judge_fold(trainer, f, train, held, labels))
            if on_fold is not None:
                on_fold(records)
            j = records[-1]
            if log:
                log(f"fold {f}: held-out {j['identities']} identities / {j['images']} images: learned {j['criterion']} "
                    f"{j['learned'][j['criterion']]:.4f} vs start {j['start'][j['criterion']]:.4f} "
                    f"(ratio {j['ratio']:.3f})")
            bar.update(1)
    finally:
        bar.close()
    return records


@dataclass
class Judgement:
    """What :func:`judge_and_ship` shipped.

    Attributes:
        model: the learned model trained on all rows, or the start fitted on all rows.
        shipped: "learned" or "start".
        folds: the per-fold records (empty when not judged).
        note: one line saying what shipped and why.
        fitted: the final run when the learned model shipped.
    """

    model: nn.Module
    shipped: str
    folds: list[dict]
    note: str
    fitted: Fitted | None = None


def judge_and_ship(
    trainer: Trainer,
    labels: np.ndarray,
    folds: int,
    seed: int = 0,
    name: str = "training",
    start_name: str = "the start",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    done: list[dict] | None = None,
    on_fold: Callable[[list[dict]], None] | None = None,
) -> Judgement:
    """Judge on ``folds`` identity folds (``< 2``: not judged), then ship the model trained on all
    rows when it beat the start in every fold, else the start fitted on all rows."""
    labels = np.asarray(labels)
    records = judge_folds_of(trainer, labels, folds, seed, progress, log, done, on_fold) if folds >= 2 else []
    all_rows = np.arange(labels.size, dtype=np.int64)
    worse = [j["fold"] for j in records if not j["learned_better"]]
    if worse:
        note = (f"{name} did not beat {start_name} on held-out identities (folds {worse} of {len(records)}, "
                f"{trainer.criterion}): shipping the start itself")
        judgement = Judgement(trainer.start(all_rows), "start", records, note)
    else:
        fitted = trainer.fit(all_rows, "final")
        note = (f"{name} beat {start_name} in all {len(records)} held-out folds ({trainer.criterion}): shipping the "
                "learned model" if records else f"{name} not judged on held-out folds (folds < 2): shipping the learned model")
        judgement = Judgement(fitted.model, "learned", records, note, fitted)
    if log:
        log(judgement.note)
    return judgement


# -- embeddings: a recipe against its ITQ start --------------------------------------------------
@dataclass
class RecipeTrainer:
    """A recipe from :data:`RECIPES` over ``features [N, D]`` / ``labels [N]`` as a :class:`Trainer`.

    ``overrides`` are :class:`~hashindex.training.config.TrainConfig` fields for every run (the
    per-fold ones and the final one alike, so the judged procedure is the shipped one).
    ``progress`` shows each run's epoch bars.
    """

    recipe: str
    features: np.ndarray
    labels: np.ndarray
    bits: int
    seed: int = 0
    overrides: dict = field(default_factory=dict)
    progress: bool = False
    criterion: str = CRITERION

    def fit(self, rows: np.ndarray, stage: str) -> Fitted:
        result = fit_recipe(self.recipe, self.features[rows], self.labels[rows], self.bits, seed=self.seed,
                            progress=self.progress, stage=stage, **self.overrides)
        return Fitted(result.model, result=result)

    def start(self, rows: np.ndarray) -> nn.Module:
        return itq_start(self.features[rows], self.bits)

    def score(self, model: nn.Module, rows: np.ndarray) -> dict:
        x = self.features[rows]
        return selection_metrics(binarize(predict(model, x)), x, self.labels[rows])


@dataclass
class JudgedResult:
    """A recipe judged on held-out identity folds.

    Attributes:
        model: the shipped head (learned on all rows, or the ITQ start).
        shipped: "learned" or "start".
        folds: per fold: held-out identities / images, ``learned`` and ``start`` metrics,
            ``ratio`` (learned / start p95 candidates), ``learned_better``.
        note: one line saying what shipped and why.
        train: the final :class:`TrainResult` when the learned head shipped.
        summary: what ``metrics.json`` holds.
    """

    model: HashHead
    shipped: str
    folds: list[dict]
    note: str
    train: TrainResult | None = None
    summary: dict = field(default_factory=dict)


def judge_folds(recipe: str, features: np.ndarray, labels: np.ndarray, bits: int, folds: int = 3, seed: int = 0,
                log=None, progress: bool = False, **overrides: Any) -> list[dict]:
    """Train ``recipe`` on all folds but one, compare with ITQ on the held-out one, per fold."""
    trainer = RecipeTrainer(recipe, features, np.asarray(labels), bits, seed, overrides, progress)
    return judge_folds_of(trainer, trainer.labels, folds, seed, progress, log)


def fit_recipe_judged(recipe: str, features: np.ndarray, labels: np.ndarray, bits: int, folds: int = 3, seed: int = 0,
                      out_dir: str | os.PathLike | None = None, progress: bool = False, log=None,
                      **overrides: Any) -> JudgedResult:
    """Judge ``recipe`` on ``folds`` identity folds, then ship the learned head (trained on all
    rows) or, when it did not beat ITQ in every fold, the ITQ start (module docstring).

    ``overrides`` are :class:`TrainConfig` fields for every training run. ``progress``: a bar
    over the folds and each run's epoch bars.
    """
    if not isinstance(recipe, str) or recipe not in RECIPES:
        raise InputError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    if RECIPES[recipe].init != "itq":
        raise InputError(f"recipe {recipe!r} does not start from ITQ; judge it with benchmarks/quality.py")
    if folds < 2:
        raise InputError(f"judging on held-out identities needs folds >= 2, got {folds} (fit_recipe trains unjudged)")
    trainer = RecipeTrainer(recipe, features, np.asarray(labels), bits, seed, overrides, progress)
    j = judge_and_ship(trainer, trainer.labels, folds, seed, f"recipe {recipe}", "its ITQ start", progress, log)
    train = None if j.fitted is None else j.fitted.result
    summary = {"shipped": j.shipped, "note": j.note, "criterion": CRITERION, "folds": j.folds, "recipe": recipe,
               "history": [] if train is None else train.history}
    if out_dir is not None:
        save_model_dir(out_dir, j.model, None if train is None else train.config, summary)
    return JudgedResult(j.model, j.shipped, j.folds, j.note, train, summary)


__all__ = ["Fitted", "JudgedResult", "Judgement", "RecipeTrainer", "Trainer", "fit_recipe_judged", "itq_hasher",
           "itq_start", "judge_and_ship", "judge_fold", "judge_folds", "judge_folds_of"]
