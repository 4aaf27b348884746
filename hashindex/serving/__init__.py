"""Layer 1, serving: the index front and its FAISS and Milvus backends, candidate stages, rerank,
row stores, persistence, hashers and the ONNX encoder. numpy + faiss (+ onnxruntime), never torch.
"""
