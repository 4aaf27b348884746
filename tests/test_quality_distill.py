"""Similarity distillation loss, feature-aware batches in train_hasher, and training recipes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hashindex.core.codes import binarize  # noqa: E402
from hashindex.core.errors import InputError  # noqa: E402
from hashindex.serving.hashers import ITQHasher  # noqa: E402
from hashindex.training.losses import make_loss  # noqa: E402
from hashindex.training.losses.distill import DistilledLoss, SimilarityDistillLoss, similarity_distillation_loss  # noqa: E402
from hashindex.training.recipes import Recipe, fit_recipe, initial_head  # noqa: E402
from hashindex.training.config import TrainConfig  # noqa: E402
from hashindex.training.loop import _cosine_neighbours, _draw_extras, predict  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _numpy_distill(h: np.ndarray, x: np.ndarray, tau: float) -> float:
    """Independent oracle: row-wise KL between softmaxes of cosine / tau, diagonal dropped."""
    def cos(a):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        return a @ a.T

    total = 0.0
    for i in range(h.shape[0]):
        others = [j for j in range(h.shape[0]) if j != i]
        t = cos(x)[i, others] / tau
        s = cos(h)[i, others] / tau
        p = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
        log_q = s - s.max() - np.log(np.exp(s - s.max()).sum())
        total += float((p * (np.log(p) - log_q)).sum())
    return total / h.shape[0]


def test_distillation_matches_numpy_and_vanishes_on_the_teacher():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 5))
    h = np.tanh(rng.normal(size=(9, 4)))
    got = similarity_distillation_loss(torch.tensor(h), torch.tensor(x), 0.1)
    assert float(got) == pytest.approx(_numpy_distill(h, x, 0.1), rel=1e-6)  # teacher in float32
    # codes with the teacher's cosines (a rotation + scale of the features): zero loss
    q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    assert float(similarity_distillation_loss(torch.tensor(3 * x @ q), torch.tensor(x), 0.1)) == pytest.approx(0, abs=1e-6)


def test_distilled_loss_routes_unlabelled_rows_to_distillation_only():
    rng = np.random.default_rng(1)
    h = torch.tensor(np.tanh(rng.normal(size=(12, 8))), requires_grad=True)
    x = torch.tensor(rng.normal(size=(12, 6)))
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1])
    ident = make_loss("softmax", bits=8, num_classes=4)
    loss = DistilledLoss(ident, weight=0.5, tau=0.2)
    expected = ident(h[:8], y[:8]) + 0.5 * SimilarityDistillLoss(0.2)(h, y, x)
    assert float(loss(h, y, x).detach()) == pytest.approx(float(expected.detach()))
    loss(h, y, x).backward()
    assert torch.isfinite(h.grad).all() and h.grad[8:].abs().sum() > 0  # extras get gradient
    with pytest.raises(InputError):
        DistilledLoss(None, weight=0.0)


def test_cosine_neighbours_and_extra_groups():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    nb = _cosine_neighbours(x, 4)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(np.sort(nb, axis=1), np.sort(np.argsort(-sims, axis=1)[:, :4], axis=1))
    extras = _draw_extras(np.random.default_rng(0), 50, 12, nb)
    assert extras.shape == (12,)
    groups = extras[:10].reshape(2, 5)
    for g in groups:  # each group: a row followed by its 4 neighbours
        np.testing.assert_array_equal(g[1:], nb[g[0]])
    plain = _draw_extras(np.random.default_rng(0), 50, 7, None)
    assert plain.shape == (7,) and plain.max() < 50


def test_extra_rows_need_a_feature_loss():
    with pytest.raises(InputError):
        TrainConfig(extra_rows=-1)
    from hashindex.training.loop import train_hasher

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    cfg = TrainConfig(bits=8, loss="softmax", epochs=1, p=4, k=2, device="cpu", val_fraction=0.0, extra_rows=4)
    with pytest.raises(InputError, match="uses_features"):
        train_hasher((x, np.repeat(np.arange(20), 2)), cfg, progress=False)


def _identities(n_ids=80, per_id=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    y = np.repeat(np.arange(n_ids), per_id)
    y[-10:] = np.arange(n_ids, n_ids + 10)  # some single-image identities: only extras see them
    x = centres[np.minimum(y, n_ids - 1)] + 0.6 * rng.normal(size=(y.size, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def test_itq_start_reproduces_itq_codes_and_distillation_trains():
    x, y = _identities()
    recipe = Recipe(init="itq", distill_weight=1.0, extra_rows=32, extra_neighbours=3, epochs=2, init_scale=2.0)
    head = initial_head(recipe, x, 8)
    itq = ITQHasher(16, 8).fit(x)
    np.testing.assert_array_equal(binarize(predict(head, x)), itq.encode(x))
    assert np.abs(head.mlp[-1](torch.from_numpy(x)).detach().numpy()).mean() == pytest.approx(2.0, rel=1e-4)
    result = fit_recipe(recipe, x, y, bits=8, seed=0)
    losses = [h["loss"] for h in result.history[1:]]
    assert len(losses) == 2 and all(np.isfinite(losses)) and result.model.bits == 8
    # deterministic on the CPU
    again = fit_recipe(recipe, x, y, bits=8, seed=0)
    for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
