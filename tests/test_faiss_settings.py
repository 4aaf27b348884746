"""FAISS's process-wide knobs: set for a block, restored after it, also when blocks overlap."""

import threading

import faiss
import numpy as np
import pytest

from hashindex.serving.faiss_settings import blas_products, faiss_setting

KNOB = "distance_compute_blas_threshold"


def test_a_knob_is_set_inside_the_block_and_restored_after_it_even_on_error():
    before = getattr(faiss.cvar, KNOB)
    with faiss_setting(KNOB, before + 7):
        assert getattr(faiss.cvar, KNOB) == before + 7
    assert getattr(faiss.cvar, KNOB) == before
    with pytest.raises(RuntimeError):
        with faiss_setting(KNOB, 3):
            raise RuntimeError("inside")
    assert getattr(faiss.cvar, KNOB) == before


def test_overlapping_blocks_restore_the_value_seen_before_the_first():
    """A enters, B enters, A leaves, B leaves (two threads' blocks interleaved): a save/restore
    per block would leave A's value behind; the original must come back."""
    before = getattr(faiss.cvar, KNOB)
    a, b = faiss_setting(KNOB, 11), faiss_setting(KNOB, 22)
    a.__enter__()
    b.__enter__()
    assert getattr(faiss.cvar, KNOB) == 22
    a.__exit__(None, None, None)
    assert getattr(faiss.cvar, KNOB) == 22  # B still runs with what it set
    b.__exit__(None, None, None)
    assert getattr(faiss.cvar, KNOB) == before


def test_blocks_in_many_threads_leave_the_knob_as_it_was():
    before = getattr(faiss.cvar, KNOB)
    start = threading.Barrier(8)

    def work(v):
        start.wait()
        for _ in range(200):
            with faiss_setting(KNOB, v):
                pass

    threads = [threading.Thread(target=work, args=(v,)) for v in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert getattr(faiss.cvar, KNOB) == before


def test_an_unknown_knob_is_refused():
    with pytest.raises(AttributeError, match="no global setting"):
        with faiss_setting("no_such_knob", 1):
            pass


def test_exact_search_on_blas_matches_float64_brute_force():
    """A batch far below FAISS's own BLAS rule (20 queries of 64-d), searched on BLAS: the same
    neighbours as a float64 numpy product (random data: no near-ties at the top)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 64)).astype(np.float32)
    q = rng.standard_normal((20, 64)).astype(np.float32)
    with blas_products():
        assert faiss.cvar.distance_compute_blas_threshold == 0
        _, ids = faiss.knn(q, x, 5, metric=faiss.METRIC_INNER_PRODUCT)
    want = np.argsort(-(q.astype(np.float64) @ x.T.astype(np.float64)), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, want)


def test_exact_search_and_exact_top_k_run_faiss_on_blas_and_restore_the_setting(monkeypatch):
    """The tuner's ground truth (index.exact_search) and the evaluation layer's exact top-k call
    FAISS with the BLAS threshold at 0 whatever the batch (FAISS's own rule would loop per pair
    below 128000 / D queries), and leave FAISS's setting as it was; the answer is numpy's."""
    from hashindex import HashIndex
    from hashindex.evaluation.exact import ExactTopK

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    q = rng.standard_normal((7, 32)).astype(np.float32)
    seen, real = [], faiss.knn
    monkeypatch.setattr(faiss, "knn", lambda *a, **kw: seen.append(faiss.cvar.distance_compute_blas_threshold) or real(*a, **kw))
    before = faiss.cvar.distance_compute_blas_threshold
    index = HashIndex(32, "itq", bits=32, metric="ip")
    index.add(x)
    ids, _ = index.exact_search(q, 5)
    want = np.argsort(-(q.astype(np.float64) @ x.T.astype(np.float64)), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, want)
    top = ExactTopK(q, 5, metric="ip")
    top.add(x)
    np.testing.assert_array_equal(top.ids(5), want)
    assert seen and set(seen) == {0}
    assert faiss.cvar.distance_compute_blas_threshold == before
