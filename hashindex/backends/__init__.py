"""Candidate generators: the Hamming stage of a search (FAISS binary indexes; Milvus later)."""
