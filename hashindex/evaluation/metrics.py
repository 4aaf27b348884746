"""Every evaluation metric under one name (a re-export; the code lives in one module per job).

* :mod:`hashindex.evaluation.hamming`: per-query Hamming histograms, pair tables (Table 1),
  candidate reduction of a radius lookup (Table 2);
* :mod:`hashindex.evaluation.ranking`: mAP@R, precision / recall at a radius, Recall@K;
* :mod:`hashindex.evaluation.exact`: exact float k-NN and recall against it;
* :mod:`hashindex.evaluation.recall`: recall against the candidate budget, fraction needed;
* :mod:`hashindex.evaluation.clustering`: NMI, k-means NMI;
* :mod:`hashindex.evaluation.ties`: the tie rule they share.
"""

from __future__ import annotations

from hashindex.evaluation.clustering import nmi, nmi_batch, nmi_kmeans
from hashindex.evaluation.exact import FEATURE_METRICS, ExactTopK, exact_search, recall_at_k_vs_exact
from hashindex.evaluation.hamming import CandidateReduction, PairHammingTable, candidate_reduction, hamming_histograms, pair_hamming_table
from hashindex.evaluation.ranking import RadiusRetrieval, average_precision_at_r, map_at_r, precision_recall_at_radius, recall_at_k
from hashindex.evaluation.recall import DEFAULT_FRACTIONS, RecallCurve, candidate_fraction_needed, recall_vs_candidates
from hashindex.evaluation.ties import TIE_RULES

__all__ = [
    "CandidateReduction", "DEFAULT_FRACTIONS", "ExactTopK", "FEATURE_METRICS", "PairHammingTable", "RadiusRetrieval",
    "RecallCurve", "TIE_RULES", "average_precision_at_r", "candidate_fraction_needed", "candidate_reduction",
    "exact_search", "hamming_histograms", "map_at_r", "nmi", "nmi_batch", "nmi_kmeans", "pair_hamming_table",
    "precision_recall_at_radius", "recall_at_k", "recall_at_k_vs_exact", "recall_vs_candidates",
]  # fmt: skip
