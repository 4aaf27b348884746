"""Layer 2, evaluation: exact search as the oracle, Hamming pair tables, ranking and recall
metrics, clustering (NMI), open-set calibration, reports and plots. numpy + faiss (+ matplotlib).
"""
