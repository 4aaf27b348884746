"""hashindex.evaluation.plots: figures are written, are real images, and bad curves are refused."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from hashindex.evaluation import metrics as M
from hashindex.core.codes import pack_bits
from hashindex.core.errors import InputError
from hashindex.evaluation.plots import plot_hamming_histograms, plot_recall_vs_candidates

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_hamming_histograms(tmp_path):
    rng = np.random.default_rng(0)
    codes = pack_bits(rng.integers(0, 2, (40, 16)))
    table = M.pair_hamming_table(codes, rng.integers(0, 4, 40))
    for name in ("hist.png", "sub/hist.svg"):
        out = plot_hamming_histograms(table, tmp_path / name)
        assert out == tmp_path / name and out.stat().st_size > 1000
    assert (tmp_path / "hist.png").read_bytes()[:8] == PNG_MAGIC
    assert b"<svg" in (tmp_path / "sub/hist.svg").read_bytes()[:2000]


def test_plot_recall_vs_candidates(tmp_path):
    rng = np.random.default_rng(1)
    codes = pack_bits(rng.integers(0, 2, (60, 16)))
    feats = rng.normal(size=(60, 8)).astype(np.float32)
    curve = M.recall_vs_candidates(codes, None, feats, None, fractions=(0.02, 0.1, 0.5, 1.0))
    out = plot_recall_vs_candidates(
        {"16-bit random": (curve.fractions, curve.nn_recall), "ideal": ([0.02, 1.0], [1.0, 1.0])},
        tmp_path / "recall.png",
    )
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 1000


def test_plot_recall_rejects_bad_curves(tmp_path):
    with pytest.raises(InputError, match="empty"):
        plot_recall_vs_candidates({}, tmp_path / "x.png")
    with pytest.raises(InputError, match="equal-length"):
        plot_recall_vs_candidates({"a": ([0.1, 0.2], [0.5])}, tmp_path / "x.png")
    with pytest.raises(InputError, match="> 0"):
        plot_recall_vs_candidates({"a": ([0.0, 0.2], [0.5, 0.6])}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_matplotlib_is_lazy_and_pyplot_untouched():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, tempfile, numpy as np\n"
        "from hashindex.evaluation import metrics as M, plots\n"
        "assert 'matplotlib' not in sys.modules  # imported lazily\n"
        "t = M.pair_hamming_table(np.zeros((3, 1), np.uint8), np.array([0, 0, 1]))\n"
        "plots.plot_hamming_histograms(t, tempfile.mkdtemp() + '/h.png')\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)
