"""Candidate stages: the Hamming search modes over FAISS binary indexes, the asymmetric fast-scan
of the packed codes, and the partition (IVF) stage. Positions are row numbers of the index's stores.

One convention for every stage's k-NN: ``knn(<query inputs>, c[, settings]) -> (positions int64
[nq, c], values [nq, c])``, positions -1 padded, best first (FlatCandidates / AllowedRows:
``knn(codes, c)`` with Hamming distances; AsymmetricCandidates: ``knn(z, c)``; PartitionStage:
``knn(x, z, c, nprobe)``, approximate scores); ``csr.from_knn`` turns it into
:class:`~hashindex.serving.candidates.csr.Candidates`, which range searches return directly.
"""
