"""Shared fixtures for the serving-core tests: clustered galleries and brute-force oracles.

The oracles here deliberately share no code with ``hashindex``: Hamming distances come from
``np.bitwise_count`` of XOR (not the library's byte table), similarities from float64 numpy.
They are exposed as fixtures (``oracle``, ``make_gallery``) so test modules never import
``conftest`` directly.
"""

from __future__ import annotations

import multiprocessing
import warnings
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest

# FAISS's OpenMP threads spin-wait: on the shared 2-core test machine, small calls (ITQ
# training, range searches) run ~30x slower with 2 threads than with 1.
faiss.omp_set_num_threads(1)


# -- brute-force oracles ---------------------------------------------------------------------
def hamming_oracle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances ``int64 [na, nb]`` of packed codes (order-free popcount)."""
    a = np.asarray(a, dtype=np.uint8)
    b = np.asarray(b, dtype=np.uint8)
    return np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=-1, dtype=np.int64)


def score_oracle(queries: np.ndarray, features: np.ndarray, metric: str) -> np.ndarray:
    """Exact float64 scores ``[nq, n]``: cosine / ip similarity or squared L2 distance."""
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(features, dtype=np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if metric == "l2":
        return (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
    return q @ x.T


def csr_rows(lims: np.ndarray, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Split CSR arrays into per-query tuples."""
    return [tuple(a[lims[q] : lims[q + 1]] for a in arrays) for q in range(len(lims) - 1)]


class Oracle:
    hamming = staticmethod(hamming_oracle)
    scores = staticmethod(score_oracle)
    csr_rows = staticmethod(csr_rows)

    @staticmethod
    def assert_topk(
        ids: np.ndarray,
        scores: np.ndarray,
        cand_ids: np.ndarray,
        cand_scores: np.ndarray,
        k: int,
        metric: str,
        atol: float = 1e-4,
    ) -> None:
        """One query's reranked result equals the brute-force top-k of its candidate set.

        Robust to ties: the returned scores must equal the best k oracle scores (within atol),
        every returned id must be a candidate whose oracle score is the returned score, and
        the list is padded with -1 exactly when there are fewer than k candidates.
        """
        n_valid = min(k, cand_ids.size)
        assert (ids[n_valid:] == -1).all(), f"expected {n_valid} results, got padding {ids}"
        got = ids[:n_valid]
        assert (got >= 0).all(), f"expected {n_valid} results, got {ids}"
        assert np.unique(got).size == got.size, f"repeated ids in a result: {got}"
        sign = 1.0 if metric == "l2" else -1.0
        best = np.sort(sign * cand_scores)[:n_valid] * sign
        np.testing.assert_allclose(scores[:n_valid], best, atol=atol, rtol=1e-4)
        lookup = dict(zip(cand_ids.tolist(), cand_scores.tolist()))
        missing = [i for i in got.tolist() if i not in lookup]
        assert not missing, f"ids {missing} returned but not candidates"
        np.testing.assert_allclose([lookup[i] for i in got.tolist()], scores[:n_valid], atol=atol, rtol=1e-4)


@pytest.fixture(scope="session")
def oracle() -> type[Oracle]:
    return Oracle


def call_or_fail_on_hang(fn, *args, timeout: float = 5.0, **kwargs):
    """Run ``fn(*args, **kwargs)`` in a forked child; fail the test if it does not return.

    A hang inside FAISS's C++ code cannot be interrupted from Python, so calls that may loop
    forever (IndexBinaryHash / MultiHash with nflip > hash bits) run in a child process that
    is killed after ``timeout`` seconds. Exceptions are re-raised in the test.
    """
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def target() -> None:
        try:
            send.send(("ok", fn(*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the test
            send.send(("err", e))
        finally:
            os._exit(0)

    proc = ctx.Process(target=target, daemon=True)
    proc.start()
    try:
        if not receive.poll(timeout):
            pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {timeout} s (hang)")
        status, value = receive.recv()
    finally:
        proc.kill()
        proc.join()
    if status == "err":
        raise value
    return value


@pytest.fixture(scope="session")
def no_hang():
    """``no_hang(fn, *args, timeout=5.0, **kwargs)``: see :func:`call_or_fail_on_hang`."""
    return call_or_fail_on_hang


# -- clustered galleries ----------------------------------------------------------------------
@dataclass
class Gallery:
    """Codes clustered around random centres so small Hamming radii have many hits.

    codes uint8 [n, bits/8], features float32 [n, dim], ids int64 [n] (shuffled, sparse);
    queries: qcodes uint8 [nq, bits/8] (centres with 0..2 flips, plus a few uniform codes)
    and qfeatures float32 [nq, dim].
    """

    bits: int
    codes: np.ndarray
    features: np.ndarray
    ids: np.ndarray
    qcodes: np.ndarray
    qfeatures: np.ndarray


def _flip(rng: np.random.Generator, bits01: np.ndarray, max_flips: int) -> np.ndarray:
    out = bits01.copy()
    for row in out:
        row[rng.choice(row.size, size=rng.integers(0, max_flips + 1), replace=False)] ^= 1
    return out


def make_gallery_fn(
    bits: int, n: int = 3000, dim: int = 16, n_centers: int = 60, nq: int = 40, seed: int = 0
) -> Gallery:
    rng = np.random.default_rng(seed + bits)
    centers = rng.integers(0, 2, size=(n_centers, bits), dtype=np.uint8)
    item_bits = _flip(rng, centers[rng.integers(0, n_centers, size=n)], 3)
    n_rand = max(nq // 8, 1)
    q_bits = np.concatenate(
        [
            _flip(rng, centers[rng.integers(0, n_centers, size=nq - n_rand)], 2),
            rng.integers(0, 2, size=(n_rand, bits), dtype=np.uint8),
        ]
    )
    # pack with numpy directly (little bit order), independent of hashindex.core.codes
    codes = np.packbits(item_bits, axis=1, bitorder="little")
    qcodes = np.packbits(q_bits, axis=1, bitorder="little")
    features = rng.standard_normal((n, dim)).astype(np.float32)
    qfeatures = rng.standard_normal((nq, dim)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64) + 5  # sparse, unordered explicit ids
    return Gallery(bits, codes, features, ids, qcodes, qfeatures)


@pytest.fixture(scope="session")
def make_gallery():
    """Factory ``make_gallery(bits, n=3000, dim=16, n_centers=60, nq=40, seed=0) -> Gallery``."""
    cache: dict[tuple, Gallery] = {}

    def factory(bits: int, **kw) -> Gallery:
        key = (bits, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = make_gallery_fn(bits, **kw)
        return cache[key]

    return factory


@pytest.fixture
def build_index(monkeypatch):
    """Factory ``build_index(gallery, backend, metric="cosine", feature_dtype="float32")``.

    Items are added with :meth:`HashIndex.add_codes` under the gallery's explicit ids. For
    ``backend="auto"`` the accelerator threshold is lowered so the accelerators are exercised
    at test sizes (the real threshold would need 100k items).
    """
    import hashindex.serving.index as hindex

    def factory(g: Gallery, backend: str, metric: str = "cosine", feature_dtype: str = "float32", ids=True):
        if backend == "auto":
            monkeypatch.setattr(hindex, "AUTO_MIN_ITEMS", 100)
        index = hindex.HashIndex(
            g.features.shape[1], bits=g.bits, metric=metric, backend=backend, feature_dtype=feature_dtype
        )
        index.add_codes(g.codes, g.features, g.ids if ids is True else ids)
        return index

    return factory


@pytest.fixture()
def torch_one_thread():
    """Training tests run torch on one thread (the machine's 2 cores are shared); restored after."""
    torch = pytest.importorskip("torch", reason="needs the train extra (torch)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- every index backend, one fixture ------------------------------------------------------------
INDEX_BACKENDS = ["faiss", "milvus"]


def _milvus_index_class():
    """MilvusHashIndex, or a failure: the Milvus backend is part of the suite, never skipped."""
    try:
        with warnings.catch_warnings():  # milvus-lite 2.5 imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import milvus_lite  # noqa: F401  (the embedded server the tests run)

            from hashindex.serving.milvus import MilvusHashIndex
    except ImportError:
        pytest.fail("the Milvus backend is part of the suite: install hashindex[milvus]")
    return MilvusHashIndex


@pytest.fixture(params=INDEX_BACKENDS)
def make_index(request, tmp_path):
    """Factory ``make_index(dim, *hasher, name=None, **kw)`` for HashIndex (flat backend) and
    MilvusHashIndex; on Milvus each call gets a collection of its own unless ``name`` repeats one.
    ``factory.backend`` names the backend; everything opened is closed afterwards."""
    from hashindex import HashIndex

    opened = []

    def factory(dim: int, *hasher, name: str | None = None, **kw):
        if request.param == "faiss":
            kw.setdefault("backend", "flat")
            # the oracles here are the exact top-k of the candidates, which a float32 rerank gives
            # (Milvus reranks on its float field); the compact default has its own tests
            kw.setdefault("rerank", "float32")
            return HashIndex(dim, *hasher, **kw)
        name = name or f"ix{len(opened)}"
        index = _milvus_index_class()(dim, *hasher, uri=str(tmp_path / f"{name}.db"), collection=name, **kw)
        opened.append(index)
        return index

    factory.backend = request.param
    yield factory
    for index in opened:
        index.close()


@pytest.fixture
def milvus_class():
    """``MilvusHashIndex`` (a failure, not a skip, when the milvus extra is missing)."""
    return _milvus_index_class()


# -- the real data beside the repository (../shared, as in CI) ----------------------------------
LFW_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "lfw_mfn128_dev.npz"


@pytest.fixture(scope="session")
def lfw_dev_path() -> Path:
    """``../shared/data/lfw/lfw_mfn128_dev.npz``; a failure, not a skip, when it is missing."""
    if not LFW_DEV.exists():
        pytest.fail(f"LFW dev embeddings not found at {LFW_DEV}: clone the repository beside ../shared")
    return LFW_DEV


# -- hostile index directories --------------------------------------------------------------------
def _rewrite_manifest(root, mutate) -> None:
    """Apply ``mutate`` to an index directory's manifest, then re-checksum the files as they are
    and the manifest itself: what a hostile (not a careless) writer leaves behind."""
    import hashlib
    import json

    m = json.loads((root / "manifest.json").read_text())
    m.pop("manifest_sha256")
    for name, info in m["files"].items():
        data = (root / name).read_bytes()
        info.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    mutate(m)
    m["manifest_sha256"] = hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="session")
def rewrite_manifest():
    """``rewrite_manifest(root: Path, mutate)`` (see :func:`_rewrite_manifest`)."""
    return _rewrite_manifest


def _killed_save(target: Path) -> Path:
    """Start a save of a small index to ``target`` in another process, SIGKILL it while it
    writes hasher.npz, and return the temporary directory that save left behind."""
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    before = set(os.listdir(target.parent))
    code = f"""
        import time, numpy as np
        from hashindex.serving.hashers import LinearHasher
        from hashindex.serving.index import HashIndex
        rng = np.random.default_rng(0)
        h = LinearHasher("linear", 16, 16, rng.standard_normal((16, 16)).astype(np.float32), np.zeros(16, np.float32))
        ix = HashIndex(16, h, metric="ip", backend="flat")
        ix.add(rng.standard_normal((30, 16)).astype(np.float32))
        def stuck(self, path):
            print("writing", flush=True)
            time.sleep(600)
        LinearHasher.save = stuck
        ix.save({str(target)!r})
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    (debris,) = set(os.listdir(target.parent)) - before
    return target.parent / debris


@pytest.fixture(scope="session")
def killed_save():
    """``killed_save(target: Path) -> Path``: the temporary directory a save killed mid-write left."""
    return _killed_save
