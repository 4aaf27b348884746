"""`hashindex demo` end to end, in a reduced size: train -> ONNX -> index -> search -> table."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the learned demo needs the train extra (torch)")

from hashindex import HashIndex, OnnxEncoder  # noqa: E402
from hashindex.cli import main  # noqa: E402
from hashindex.training.data.synthetic import SyntheticGallery  # noqa: E402


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--identities", "300", "--per-identity", "4", "--queries", "100", "--epochs", "2",
            "--out", str(out), "--scale-identities", "500"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "recall@1" in printed and "budget 1000" in printed
    # the default search beside exact search, and a plain word where it does not pay (1,200 items)
    assert "default search on 1,200 items: recall@1" in printed and "does not pay at this size" in printed
    assert "default search on 2,000 items: recall@1" in printed

    report = json.loads((out / "report.json").read_text())
    rows = {r["mode"]: r for r in report["rows"]}
    assert report["gallery_size"] == 1200 and report["bits"] == 64
    assert rows["default (asymmetric)"]["candidates_mean"] == 500 and rows["default (asymmetric)"]["recall_at_1"] >= 0.95
    assert report["scale"]["items"] == 2000 and report["scale"]["default"]["candidates_mean"] == 500
    assert rows["exact (IndexFlatIP)"]["recall_at_1"] == 1.0
    # a budget of 1000 of 1200 items must find nearly every exact neighbour; more budget never hurts
    assert rows["budget 1000"]["recall_at_1"] >= 0.95
    assert rows["budget 1000"]["recall_at_1"] >= rows["budget 100"]["recall_at_1"]
    assert rows["budget 100"]["candidates_mean"] == 100

    # the artefacts: the index reloads with the exported model, and its search is exact
    # when every item is a candidate (oracle: numpy brute force on the same gallery)
    index = HashIndex.load(out / "index")
    assert isinstance(index.hasher, OnnxEncoder) and index.hasher.sha256 == OnnxEncoder(out / "model.onnx").sha256
    gallery, _ = SyntheticGallery(300, 4, seed=0).materialize()
    queries, _ = SyntheticGallery(300, 4, seed=0).probes(20, seed=2)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(q @ g.T), axis=1)[:, :5]
    res = index.search(queries, k=5, candidates=len(index))
    np.testing.assert_array_equal(res.ids, truth)
