"""Encoder throughput: OnnxEncoder (onnxruntime) vs torch eager for a HashHead, in vectors/s.

Both paths produce packed codes from float32 features: onnxruntime runs the exported graph
(packing inside the graph, plus the encoder's input validation); torch runs the module under
``no_grad`` and packs with ``hashindex.core.codes.binarize``. Both are pinned to the same number of
threads (default 1: the development machine is shared) so the figures compare like with like.

    python benchmarks/encoder_throughput.py [--bits 64] [--dim 128] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def vectors_per_second(fn, x: np.ndarray, min_time: float, repeats: int = 3) -> float:
    """Best of ``repeats`` timings, each running ``fn(x)`` for at least ``min_time`` seconds."""
    fn(x)  # warm-up (allocations, lazy initialisation)
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_time:
            fn(x)
            calls += 1
        best = max(best, calls * len(x) / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="*", default=[], help="hidden widths of the HashHead")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per timing")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from hashindex.core.codes import binarize
    from hashindex.serving.encoder import OnnxEncoder
    from hashindex.training.models import HashHead
    from hashindex.export.onnx import InputSpec, TrainingInfo, export_model, fragile_rows

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = HashHead.create(args.dim, args.bits, hidden=tuple(args.hidden)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "head.onnx"
        export_model(head, path, InputSpec.features(args.dim), TrainingInfo("none (random init)", "benchmark"))
        encoder = OnnxEncoder(path, providers="cpu", threads=args.threads)

    def torch_encode(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return binarize(head(torch.from_numpy(x)).numpy())

    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batches:
        x = rng.standard_normal((batch, args.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        with torch.no_grad():
            robust = np.setdiff1d(np.arange(batch), fragile_rows(head(torch.from_numpy(x)).numpy()))
        if not np.array_equal(encoder.encode(x)[robust], torch_encode(x)[robust]):
            raise SystemExit("onnxruntime and torch codes differ: the timings would not compare like with like")
        ort_vps = vectors_per_second(encoder.encode, x, args.min_time)
        torch_vps = vectors_per_second(torch_encode, x, args.min_time)
        rows.append({"batch": batch, "onnxruntime_vps": ort_vps, "torch_eager_vps": torch_vps})

    print(f"HashHead({args.dim}, {args.bits}, hidden={tuple(args.hidden)}), {args.threads} thread(s), "
          f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}")
    print(f"{'batch':>6} {'onnxruntime vec/s':>18} {'torch eager vec/s':>18} {'ratio':>6}")
    for r in rows:
        print(f"{r['batch']:>6} {r['onnxruntime_vps']:>18,.0f} {r['torch_eager_vps']:>18,.0f} "
              f"{r['onnxruntime_vps'] / r['torch_eager_vps']:>6.2f}")
    if args.json:
        meta = {"dim": args.dim, "bits": args.bits, "hidden": args.hidden, "threads": args.threads,
                "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}
        args.json.write_text(json.dumps({"config": meta, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
