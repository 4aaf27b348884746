"""Candidate stages: the Hamming search modes over FAISS binary indexes, the asymmetric fast-scan
of the packed codes, and the partition (IVF) stage. Positions are row numbers of the index's stores.
"""
