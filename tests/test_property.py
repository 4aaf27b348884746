"""Property-based: random sequences of add / remove / search / save+load (or reopen) against a
numpy oracle, through the public API only (issue 12).

The oracle keeps ``id -> (code, feature)``; codes come from the same fitted hasher's numpy
``encode``. Every search uses ``radius=bits`` so every item is a candidate, and its top-k must
be the brute-force top-k by exact score (compared on scores, so ties may come in any order).
HashIndex runs many examples; MilvusHashIndex (milvus-lite) a few, with ``deadline=None``.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install -e '.[dev]')")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule  # noqa: E402

from hashindex import HashIndex, make_hasher  # noqa: E402
from hashindex.core.errors import DuplicateIdError, UnknownIdError  # noqa: E402

DIM, BITS = 8, 8
HASHER = make_hasher("itq", DIM, BITS).fit(np.random.default_rng(0).standard_normal((200, DIM)).astype(np.float32))


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


class IndexMachine(RuleBasedStateMachine):
    """Shared rules; subclasses open / reopen the backend."""

    auto_ids_contiguous = True  # HashIndex: auto ids continue from the largest id ever added

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="hashindex-prop-"))
        self.items: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.next_id = 0
        self.index = self.open_new()

    # -- backend hooks ----------------------------------------------------------------------------
    def open_new(self):
        raise NotImplementedError

    def reopen(self):
        raise NotImplementedError

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- rules --------------------------------------------------------------------------------------
    @rule(n=st.integers(0, 6), seed=st.integers(0, 3), explicit=st.booleans(), base=st.integers(0, 40))
    def add(self, n, seed, explicit, base):
        x = _rows(n, seed)  # few seeds: identical rows (score ties) happen on purpose
        if explicit:
            ids = np.arange(base, base + n) * 3 + 1
            if any(int(i) in self.items for i in ids):
                with pytest.raises(DuplicateIdError):
                    self.index.add(x, ids=ids)
                return
            got = self.index.add(x, ids=ids)
            np.testing.assert_array_equal(got, ids)
        else:
            got = self.index.add(x)
            assert got.dtype == np.int64 and got.shape == (n,)
            assert not any(int(i) in self.items for i in got)
            if self.auto_ids_contiguous:
                np.testing.assert_array_equal(got, np.arange(self.next_id, self.next_id + n))
        codes = HASHER.encode(x)
        for i, c, f in zip(got.tolist(), codes, x):
            self.items[i] = (c, f)
        if n:
            self.next_id = max(self.next_id, int(got.max()) + 1)

    @rule(data=st.data())
    def remove(self, data):
        present = sorted(self.items)
        chosen = data.draw(st.lists(st.sampled_from(present), max_size=5, unique=True)) if present else []
        if data.draw(st.booleans()) or not chosen:  # a missing id: nothing is removed
            missing = max(present, default=0) + 1_000
            with pytest.raises(UnknownIdError):
                self.index.remove(chosen + [missing])
            return
        assert self.index.remove(chosen) == len(chosen)
        for i in chosen:
            del self.items[i]

    @rule(seed=st.integers(0, 5), k=st.integers(1, 8))
    def search(self, seed, k):
        q = _rows(3, 100 + seed)
        res = self.index.search(q, k=k, radius=BITS)
        ids = np.array(sorted(self.items), dtype=np.int64)
        np.testing.assert_array_equal(res.n_candidates, [len(ids)] * 3)
        if not len(ids):
            assert (res.ids == -1).all()
            return
        feats = np.stack([self.items[i][1] for i in ids]).astype(np.float64)
        scores = q.astype(np.float64) @ feats.T  # metric "ip"
        kk = min(k, len(ids))
        for row in range(3):
            expect = np.sort(scores[row])[::-1][:kk]
            np.testing.assert_allclose(res.scores[row, :kk], expect, rtol=1e-5, atol=1e-5)
            got = res.ids[row, :kk]
            assert (got >= 0).all() and (res.ids[row, kk:] == -1).all()
            oracle_of_got = scores[row, np.searchsorted(ids, got)]
            np.testing.assert_allclose(oracle_of_got, res.scores[row, :kk], rtol=1e-5, atol=1e-5)

    @rule()
    def save_and_reload(self):
        self.index = self.reopen()

    # -- invariants -------------------------------------------------------------------------------------
    @invariant()
    def contents_match(self):
        ids = sorted(self.items)
        assert len(self.index) == len(ids)
        assert sorted(self.index.ids.tolist()) == ids
        if ids:
            want_codes = np.stack([self.items[i][0] for i in ids])
            want_feats = np.stack([self.items[i][1] for i in ids])
            np.testing.assert_array_equal(self.index.get_codes(ids), want_codes)
            np.testing.assert_allclose(self.index.get_features(ids), want_feats, rtol=1e-6, atol=1e-6)


class HashIndexMachine(IndexMachine):
    def open_new(self):
        self.saves = 0
        return HashIndex(DIM, HASHER, metric="ip", backend="flat")

    def reopen(self):
        path = self.tmp / "ix"
        self.index.save(path)
        self.saves += 1
        return HashIndex.load(path, mmap=self.saves % 2 == 0, verify=True)


class MilvusMachine(IndexMachine):
    auto_ids_contiguous = False  # after reattaching, auto ids continue after the largest id stored

    def open_new(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from hashindex.serving.milvus import MilvusHashIndex
        self.cls = MilvusHashIndex
        return MilvusHashIndex(DIM, HASHER, metric="ip", uri=str(self.tmp / "m.db"), collection="prop")

    def reopen(self):
        self.index.close()
        # the hasher is passed again: a collection is only created (with the hasher's record)
        # at the first insert, so reopening an index never written to would start unfitted
        return self.cls(DIM, HASHER, metric="ip", uri=str(self.tmp / "m.db"), collection="prop")

    def teardown(self) -> None:
        self.index.close()
        super().teardown()


TestHashIndexProperties = HashIndexMachine.TestCase
TestHashIndexProperties.settings = settings(
    max_examples=40, stateful_step_count=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

TestMilvusProperties = MilvusMachine.TestCase
TestMilvusProperties.settings = settings(
    max_examples=4, stateful_step_count=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
