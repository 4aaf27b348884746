"""Plain FAISS interop: an index's codes and ids as a ``faiss.IndexBinaryIDMap``.

``index.to_faiss()`` gives an ``IndexBinaryIDMap`` over an ``IndexBinaryFlat`` with exactly the
index's codes under its ids, so ``faiss.write_index_binary`` / ``read_index_binary`` users can
take the codes elsewhere. Only the Hamming stage travels: the features (rerank), labels and the
hasher stay in the hashindex directory, whose format is unchanged. FAISS's bit order is
hashindex's (ARCHITECTURE.md §1), so a query code from ``index.hasher.encode`` searches it as is.
"""

from __future__ import annotations

import faiss
import numpy as np


def to_faiss_binary(bits: int, ids: np.ndarray, codes: np.ndarray) -> "faiss.IndexBinaryIDMap":
    """``IndexBinaryIDMap(IndexBinaryFlat(bits))`` holding ``codes`` under ``ids`` (same order)."""
    flat = faiss.IndexBinaryFlat(bits)
    index = faiss.IndexBinaryIDMap(flat)
    # the map owns its flat index, as one read back by read_index_binary does
    flat.this.disown()
    index.own_fields = True
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(codes, dtype=np.uint8), np.ascontiguousarray(ids, dtype=np.int64))
    return index
