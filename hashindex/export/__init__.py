"""Layer 4, export: torch hash heads, image models and linear hashers to the ONNX contract
(ARCHITECTURE.md §3), fused backbone + head graphs.
"""
