"""Evaluation figures. matplotlib is imported inside each function (an optional dependency:
the serving path never needs it) and drawn with the Agg canvas of a bare ``Figure``, so no
pyplot global state or GUI backend is touched."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError
from hashindex.evaluation.hamming import PairHammingTable


def _new_figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.figure import Figure  # lazy: matplotlib is only needed for figures

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def plot_hamming_histograms(table: PairHammingTable, path: str | os.PathLike, title: str | None = None) -> Path:
    """Share of positive and of negative pairs at each Hamming distance 0..K (log scale).

    Args:
        table: from :func:`hashindex.evaluation.metrics.pair_hamming_table`.
        path: output file; the extension picks the format (png, pdf, svg).
    Returns the path written.
    """
    fig, ax = _new_figure()
    dist = np.arange(table.bits + 1)
    for hist, name, color in (
        (table.positive_hist, f"same identity ({table.n_positive:,} pairs)", "tab:green"),
        (table.negative_hist, f"different identity ({table.n_negative:,} pairs)", "tab:red"),
    ):
        total = hist.sum()
        if total:
            # zero bins would vanish on a log axis anyway; masking keeps the step line honest
            share = np.where(hist > 0, hist / total, np.nan)
            ax.step(dist, share, where="mid", color=color, label=name)
    for r in table.radii:
        ax.axvline(r + 0.5, color="0.6", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, table.bits + 0.5)
    ax.set_xlabel("Hamming distance")
    ax.set_ylabel("share of pairs")
    ax.set_title(title or f"Pair distances, {table.bits}-bit codes")
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_recall_vs_candidates(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str | None = None,
    ylabel: str = "recall of the exact nearest neighbour",
) -> Path:
    """Recall against the share of the gallery reranked, one line per method (log x).

    Args:
        curves: ``{label: (fractions, recall)}``, e.g. from
            :class:`hashindex.evaluation.metrics.RecallCurve` ``(c.fractions, c.nn_recall)``.
        path: output file; the extension picks the format.
    Returns the path written.
    """
    if not curves:
        raise InputError("curves is empty: give at least one {label: (fractions, recall)}")
    fig, ax = _new_figure()
    for label, (fractions, recall) in curves.items():
        f = np.asarray(fractions, dtype=np.float64)
        r = np.asarray(recall, dtype=np.float64)
        if f.shape != r.shape or f.ndim != 1:
            raise InputError(f"curve {label!r}: fractions {f.shape} and recall {r.shape} must be equal-length 1-D")
        if np.any(f <= 0):
            raise InputError(f"curve {label!r}: fractions must be > 0 for the log axis")
        ax.plot(f, r, marker="o", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("share of the gallery reranked")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Recall vs candidate budget")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)
