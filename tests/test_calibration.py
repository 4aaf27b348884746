"""Open-set threshold calibration (hashindex.evaluation.calibration) against brute force.

The oracle builds the full pair-score matrix with numpy and counts accepted pairs directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hashindex.core.errors import InputError
from hashindex.evaluation.calibration import calibrate



def brute_pairs(x, labels, metric):
    x = np.asarray(x, np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if metric == "l2":
        s = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    else:
        s = x @ x.T
    iu = np.triu_indices(len(x), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    return s[iu][same], s[iu][~same]


def check_against_brute_force(cal, genuine, impostor, far, metric):
    accept = (lambda s, t: s >= t) if metric != "l2" else (lambda s, t: s <= t)
    m = math.floor(far * impostor.size + 1e-9)
    assert cal.pairs.n_genuine == genuine.size and cal.pairs.n_impostor == impostor.size
    assert not cal.pairs.sampled
    n_acc = int(accept(impostor, cal.threshold).sum())
    assert n_acc <= m  # FAR at most the target
    # the most permissive such threshold: the next impostor score is the first one rejected
    ordered = np.sort(impostor)[::-1] if metric != "l2" else np.sort(impostor)
    assert not accept(ordered[m], cal.threshold)
    assert abs(cal.threshold - ordered[m]) <= 1e-6 * max(1.0, abs(ordered[m]))
    assert cal.far == pytest.approx(n_acc / impostor.size)
    assert cal.tar == pytest.approx(accept(genuine, cal.threshold).mean())


@pytest.fixture(scope="module")
def lfw_subset(lfw_dev_path):
    from hashindex.training.data.embeddings import load_embeddings

    data = load_embeddings(lfw_dev_path)
    return data.features[:2500], data.labels[:2500].astype(np.int64)


@pytest.mark.parametrize("far", [1e-2, 1e-3, 1e-4])
def test_lfw_threshold_matches_brute_force(lfw_subset, far):
    x, labels = lfw_subset
    genuine, impostor = brute_pairs(x, labels, "cosine")
    cal = calibrate(x, labels, far=far)
    check_against_brute_force(cal, genuine, impostor, far, "cosine")
    assert 0.5 < cal.tar <= 1.0


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_random_data_other_metrics(metric):
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((40, 8))
    labels = rng.integers(0, 40, 400)
    x = (centres[labels] + 0.7 * rng.standard_normal((400, 8))).astype(np.float32)
    genuine, impostor = brute_pairs(x, labels, metric)
    for far in (0.05, 1e-3):
        check_against_brute_force(calibrate(x, labels, far=far, metric=metric), genuine, impostor, far, metric)


def test_sampled_pairs_are_close_to_all_pairs(lfw_subset):
    x, labels = lfw_subset
    exact = calibrate(x, labels, far=1e-3)
    sampled = calibrate(x, labels, far=1e-3, max_pairs=400_000, seed=1)
    assert sampled.pairs.sampled and sampled.pairs.n_impostor == 400_000
    assert abs(sampled.threshold - exact.threshold) < 0.03
    assert exact.rates(sampled.threshold)[0] == pytest.approx(1e-3, rel=0.5)


def test_curve_and_plot(lfw_subset, tmp_path):
    pytest.importorskip("matplotlib")
    x, labels = lfw_subset
    cal = calibrate(x, labels, far=1e-3)
    far, tar, thr = cal.curve()
    assert (np.diff(far) >= 0).all() and far[-1] == pytest.approx(1.0) and tar[-1] == pytest.approx(1.0)
    path = cal.plot(tmp_path / "fig" / "verification.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input():
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    labels = np.arange(20) // 2
    for call in (
        lambda: calibrate(x, labels, far=0),
        lambda: calibrate(x, labels, far=float("nan")),
        lambda: calibrate(x, labels, far=1.5),
        lambda: calibrate(x, labels[:5]),
        lambda: calibrate(x, np.zeros(20, np.int64)),  # no impostor pairs
        lambda: calibrate(x, np.arange(20)),  # no genuine pairs
        lambda: calibrate(x, labels, metric="hamming"),
    ):
        with pytest.raises(InputError):
            call()
