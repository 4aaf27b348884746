"""benchmarks/run.py at a tiny size, its figures checked against independent oracles.

Oracles: float64 numpy brute force for the exact search and the same-identity hit rate (with a
probe's own image left out on real data), a numpy Hamming count of sign codes for the radius
candidate counts, and a second implementation of the same hash function (the sign hasher exported
to ONNX and benchmarked as the ``--model``) for the learned-model path.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared/data/lfw/lfw_mfn128_dev.npz"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load("run")

N, NLIST, MAX_CAND = 2000, 16, 150
RADII = (0, 8, 16, 24, 32, 40, 48, 56, 64, 72)
ARGS = [
    "--n", str(N), "--probes", "150", "--train-items", "3000", "--latency-queries", "5", "--repeat", "1",
    "--bits", "32", "--nlist", str(NLIST), "--nprobe", "1", "4", str(NLIST), "--ef-search", "16", "64",
    "--oversample", "1", "5", "--candidates", "10", "50", str(N), "--radii", *map(str, RADII),
    "--accel-radii", "0", "8", "72", "--max-candidates", str(MAX_CAND), "--chunk", "700",
]  # fmt: skip


def rows_of(record: dict, name_prefix: str) -> list[dict]:
    (method,) = [m for m in record["methods"] if m["name"].startswith(name_prefix)]
    return method["results"]


def by_setting(rows: list[dict]) -> dict[str, dict]:
    return {r["setting"]: r for r in rows}


def oracle_top(q: np.ndarray, x: np.ndarray, k: int, self_ids: np.ndarray | None = None) -> np.ndarray:
    """Exact float64 cosine top-k ids; a probe's own gallery id excluded when given."""
    q64 = q / np.linalg.norm(q, axis=1, keepdims=True).astype(np.float64)
    x64 = x / np.linalg.norm(x, axis=1, keepdims=True).astype(np.float64)
    s = q64 @ x64.T
    if self_ids is not None:
        s[np.arange(len(q)), self_ids] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def unit32(x: np.ndarray) -> np.ndarray:
    """What HashIndex(metric="cosine") stores: float32 rows divided by their norm."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """One tiny synthetic run with every method, the model being the exported sign hasher."""
    from hashindex.serving.hashers import SignHasher
    from hashindex.export.onnx import export_linear_hasher

    out = tmp_path_factory.mktemp("bench")
    cfg = bench.parse_args(ARGS)
    source = bench.make_source(cfg)
    sign = SignHasher(source.dim).fit(source.train)
    model = out / "sign.onnx"
    export_linear_hasher(sign, model)
    record = bench.main([*ARGS, "--model", str(model), "--out-dir", str(out), "--name", "smoke"])
    gallery = np.concatenate(list(source.chunks(cfg.chunk)))
    return record, out, source, gallery, sign


def test_writes_json_with_command_machine_and_plots(synthetic):
    record, out, *_ = synthetic
    on_disk = json.loads((out / "smoke.json").read_text())
    assert on_disk["command"].startswith("python benchmarks/run.py --n 2000")
    assert "--model" in on_disk["command"]
    assert on_disk["machine"]["threads"] == 1 and on_disk["machine"]["faiss"]
    assert {m["family"] for m in on_disk["methods"]} == {"exact", "hnsw", "ivf", "hash"}
    assert [m["name"] for m in on_disk["methods"]] == ["exact", "hnsw-M32", f"ivf{NLIST}-flat", "sign-128",
                                                       "pca-32", "itq-32", "model-128"]  # fmt: skip
    assert on_disk["skipped"] == []
    for m in on_disk["methods"]:
        assert m["build"]["total_s"] >= m["build"]["train_s"] >= 0
        for r in m["results"]:
            assert r["qps"] > 0 and r["latency_ms_p99"] >= r["latency_ms_p50"] > 0
    for suffix in ("recall_qps", "recall_candidates"):
        png = (out / f"smoke_{suffix}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_exact_method_matches_numpy_brute_force(synthetic):
    record, _, source, gallery, _ = synthetic
    assert gallery.shape == (N, 128)
    top = oracle_top(source.probes.features, gallery, 10)
    (row,) = rows_of(record, "exact")
    assert row["recall_at_1"] == 1.0 and row["recall_at_10"] == 1.0
    hit = (source.gallery_labels[top[:, 0]] == source.probes.labels).mean()
    assert row["hit_at_1"] == pytest.approx(hit, abs=1e-12)
    assert 0.5 < hit < 1.0  # probes are fresh images: the task is neither trivial nor hopeless
    assert row["candidates_mean"] == N


def test_training_identities_are_disjoint_from_the_gallery(synthetic):
    _, _, source, _, _ = synthetic
    assert source.train.shape[0] >= 3000
    assert source.gallery_labels.min() >= source.n_train_ids
    assert np.isin(source.probes.labels, source.gallery_labels).all()


def test_full_candidate_budget_and_all_lists_are_exact(synthetic):
    record, *_ = synthetic
    for prefix in ("pca", "itq", "model"):
        row = by_setting(rows_of(record, prefix))[f"c={N}"]
        assert row["recall_at_1"] == 1.0 and row["recall_at_10"] == 1.0, prefix
        assert row["candidates_mean"] == N
    ivf = by_setting(rows_of(record, "ivf"))
    assert ivf[f"nprobe={NLIST}"]["recall_at_1"] == 1.0 and ivf[f"nprobe={NLIST}"]["candidates_mean"] == N
    assert ivf["nprobe=1"]["candidates_mean"] < N / 2  # one list of sixteen is a fraction of the gallery
    for c in (10, 50):
        assert by_setting(rows_of(record, "itq"))[f"c={c}"]["candidates_mean"] == c


def test_model_path_reproduces_the_sign_method(synthetic):
    """The exported ONNX sign hasher is a second implementation of ``sign``: same figures."""
    record, *_ = synthetic
    sign, model = by_setting(rows_of(record, "sign")), by_setting(rows_of(record, "model"))
    assert set(sign) == {"c=10", "c=50"}
    for s in sign:
        for key in ("recall_at_1", "recall_at_10", "hit_at_1", "candidates_mean"):
            assert model[s][key] == sign[s][key], (s, key)


def test_radius_candidates_match_numpy_hamming_counts(synthetic):
    record, _, source, gallery, sign = synthetic
    mean = -sign.bias  # the sign hasher thresholds each centred dimension at the training mean
    g_bits = unit32(gallery) - mean > 0
    q_bits = unit32(source.probes.features) - mean > 0
    dist = (q_bits[:, None, :] != g_bits[None, :, :]).sum(axis=2)
    rows = by_setting(rows_of(record, "model"))
    # the sweep stops at the first radius whose warm-up batch (50 probes) averages > MAX_CAND,
    # on every backend (r=72 is an accelerated radius, but beyond the stop)
    warm = [(dist[:50] <= r).sum(axis=1).mean() for r in RADII]
    expected = list(RADII[: next((i for i, w in enumerate(warm) if w > MAX_CAND), len(RADII))])
    assert 2 <= len(expected) and 72 not in expected  # the test exercises the stop rule
    assert [int(s.split()[0][2:]) for s in rows if s.endswith(" flat")] == expected
    for r in expected:
        want = (dist <= r).sum(axis=1).mean()
        for backend in ("flat", "hash", "multihash"):
            row = rows.get(f"r={r} {backend}")
            if backend != "flat" and r not in (0, 8):
                assert row is None
                continue
            assert row["candidates_mean"] == pytest.approx(want, abs=1e-9), (r, backend)
            assert row["recall_at_1"] == rows[f"r={r} flat"]["recall_at_1"]


def test_drop_self_removes_each_probes_own_id():
    ids = np.array([[5, 3, 9], [3, 5, 9], [1, 2, 4]])
    got = bench.drop_self(ids, np.array([5, 5, 7]), 2)
    np.testing.assert_array_equal(got, [[3, 9], [3, 9], [1, 2]])
    np.testing.assert_array_equal(bench.drop_self(ids, None, 2), ids[:, :2])


def test_lfw_mode_is_identity_disjoint_and_never_matches_self(tmp_path):
    if not LFW.exists():
        pytest.skip(f"LFW development split not found at {LFW}")
    args = ["--data", str(LFW), "--methods", "exact", "sign", "--probes", "300", "--latency-queries", "3",
            "--repeat", "1", "--oversample", "1", "400", "--out-dir", str(tmp_path), "--no-plots"]  # fmt: skip
    record = bench.main(args)
    cfg = bench.parse_args(args)
    source = bench.make_source(cfg)
    with np.load(LFW, allow_pickle=False) as z:
        labels = z["labels"]
    train_ids = set(np.unique(labels).tolist()) - set(source.gallery_labels.tolist())
    assert len(train_ids) == record["data"]["train_identities"]
    assert 0.6 < source.train.shape[0] / len(labels) < 0.8  # ~70% of identities train the hashers
    gallery = np.concatenate(list(source.chunks(1000)))
    top = oracle_top(source.probes.features, gallery, 10, source.probes.self_ids)
    (exact,) = rows_of(record, "exact")
    assert exact["recall_at_1"] == 1.0 and exact["recall_at_10"] == 1.0
    hit = (source.gallery_labels[top[:, 0]] == source.probes.labels).mean()
    assert exact["hit_at_1"] == pytest.approx(hit, abs=1e-12)
    assert hit < 1.0  # with itself counted every probe would hit
    # 4000 candidates cover the whole gallery: reranking everything is exact search again
    full = by_setting(rows_of(record, "sign"))["c=4000"]
    assert full["recall_at_1"] == 1.0 and full["hit_at_1"] == exact["hit_at_1"]
    assert full["candidates_mean"] == source.n_items
