"""One evaluation report of a code set: every metric ``hashindex eval`` prints and writes.

Leave-one-out over one data set: each row queries the rest. Pair distances (Table 1), candidate
reduction (Table 2), mAP@R, recall against the candidate budget and the share of the gallery
reranked to reach the exact nearest neighbour.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.core.io import atomic_write_json
from hashindex.evaluation.hamming import CandidateReduction, PairHammingTable, candidate_reduction, pair_hamming_table
from hashindex.evaluation.ranking import map_at_r
from hashindex.evaluation.recall import RecallCurve, candidate_fraction_needed, recall_vs_candidates

EVAL_FILE = "eval.json"


@dataclass
class EvalReport:
    """Every evaluation of one code set over one data set (leave-one-out: each row queries the rest)."""

    name: str
    bits: int
    n: int
    table: PairHammingTable | None  # None without labels
    reduction: CandidateReduction
    map_at_r: float | None
    curve: RecallCurve
    candidates_needed: dict[str, float]  # quantiles of the share reranked to reach the exact NN

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "bits": self.bits,
            "n": self.n,
            "pair_distances": None if self.table is None else self.table.to_dict(),
            "candidate_reduction": self.reduction.to_dict(),
            "map_at_r": self.map_at_r,
            "recall_vs_candidates": self.curve.to_dict(),
            "candidates_needed": self.candidates_needed,
        }

    def format(self) -> str:
        parts = [f"== {self.name}: {self.bits}-bit codes, {self.n:,} items =="]
        if self.table is not None:
            parts += ["", "Pair distances (Table 1)", self.table.format()]
        parts += ["", "Candidate reduction (Table 2)", self.reduction.format()]
        if self.map_at_r is not None:
            parts += ["", f"mAP@R (identity): {self.map_at_r:.4f}"]
        q = ", ".join(f"{k} {v:.4%}" for k, v in self.candidates_needed.items())
        parts += ["", f"share of the gallery reranked to reach the exact cosine NN: {q}"]
        parts += ["", "Recall vs candidates", self.curve.format()]
        return "\n".join(parts)


def evaluate_codes(
    codes: np.ndarray, features: np.ndarray, labels: np.ndarray | None, name: str, radii=(0, 1, 2)
) -> EvalReport:
    """Evaluate packed ``codes uint8 [N, K/8]`` against their float ``features [N, D]``."""
    table = pair_hamming_table(codes, labels, radii) if labels is not None else None
    reduction = candidate_reduction(codes, radii=radii)
    map_r = map_at_r(codes, labels) if labels is not None else None
    curve = recall_vs_candidates(codes, None, features, None, query_labels=labels)
    frac = candidate_fraction_needed(codes, None, features, None)
    quantiles = {f"p{int(q * 100)}": float(v) for q, v in zip((0.5, 0.95, 0.99), np.quantile(frac, [0.5, 0.95, 0.99]))}
    return EvalReport(name, 8 * codes.shape[1], codes.shape[0], table, reduction, map_r, curve, quantiles)


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> list[Path]:
    """``eval.json`` and, when matplotlib is installed, the PNG figures; the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_json(out / EVAL_FILE, report.to_dict())]
    try:
        from hashindex.evaluation import plots
    except ImportError:  # matplotlib is optional
        return written
    if report.table is not None:
        written.append(plots.plot_hamming_histograms(report.table, out / "pair_distances.png", title=report.name))
    curves = {f"{report.name}, exact NN": (report.curve.fractions, report.curve.nn_recall)}
    if report.curve.identity_recall is not None:
        curves[f"{report.name}, same identity"] = (report.curve.fractions, report.curve.identity_recall)
    written.append(plots.plot_recall_vs_candidates(curves, out / "recall_vs_candidates.png", ylabel="recall"))
    return written
