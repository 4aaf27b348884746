"""Layer 0, core: bit order and codes, errors, input checks, the ONNX model contract, small io.

Imports nothing else from hashindex; numpy only (no faiss, onnx or torch).
"""
