"""Derive hashindex/data/synthetic_lfw128.npz from the LFW development embeddings.

    PYTHONPATH=. .venv/bin/python benchmarks/derive_synthetic_params.py   (or after pip install -e .)

Reads ../shared/data/lfw/lfw_mfn128_dev.npz (relative to the repository), fits the PLDA-style
generator (hashindex.training.data.synthetic.fit_synthetic_params) and writes the small parameter file
shipped in the package. Prints the real and synthetic pair statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashindex.training.data.synthetic import DEFAULT_PARAMS_PATH, fit_synthetic_params

LFW = Path(__file__).resolve().parents[1].parent / "shared/data/lfw/lfw_mfn128_dev.npz"

with np.load(LFW, allow_pickle=False) as z:
    embeddings, labels = z["embeddings"], z["labels"]
params = fit_synthetic_params(
    embeddings, labels, source="LFW dev split (lfw_mfn128_dev.npz), MobileFaceNet 128-d, L2-normalised"
)
params.save(DEFAULT_PARAMS_PATH)
print(f"wrote {DEFAULT_PARAMS_PATH} ({DEFAULT_PARAMS_PATH.stat().st_size} bytes)")
print(f"s_b={params.between_scale:.4f} s_w={params.within_scale:.4f} sigma={params.noise_sigma:.4f}")
print(f"ranks: between {params.between_factor.shape[1]}, within {params.within_factor.shape[1]}")
print("            pos_mean pos_std neg_mean neg_std")
for name, s in (("real", params.real_stats), ("synthetic", params.synthetic_stats)):
    print(f"{name:10s}  " + "  ".join(f"{v:7.4f}" for v in s.as_array()))
print(f"max |diff| = {params.real_stats.max_abs_diff(params.synthetic_stats):.4f}")
