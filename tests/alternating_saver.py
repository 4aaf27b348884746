"""A process that saves two versions of one index to one path, alternately, until it is stopped
(``--stop FILE`` appears) or killed. The crash-safety and concurrent-load tests run it; it is a
helper script, not a test module. ``build`` is imported by those tests (runpy) as the oracle.

    python tests/alternating_saver.py PATH [--seed S --n N --dim D] [--stop FILE] [--rename] [--ready-after I]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hashindex.serving.hashers import LinearHasher  # noqa: E402
from hashindex.serving.index import HashIndex  # noqa: E402


def build(version: int, seed: int = 100, n: int = 24_000, dim: int = 64) -> HashIndex:
    """Version 0 or 1 of the index: random codes, features and ids; version 1 is 25% larger."""
    rng = np.random.default_rng(seed + version)
    n, bits = n + n // 4 * version, dim
    hasher = LinearHasher("linear", bits, dim, rng.standard_normal((bits, dim)).astype(np.float32), np.zeros(bits, np.float32))
    index = HashIndex(dim, hasher, metric="ip", backend="flat")
    index.add_codes(
        rng.integers(0, 256, (n, bits // 8), dtype=np.uint8),
        rng.standard_normal((n, dim)).astype(np.float32),
        rng.permutation(4 * n)[:n],
    )
    return index


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--n", type=int, default=24_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--stop", help="stop once this file exists (default: run until killed)")
    ap.add_argument("--rename", action="store_true", help="force the portable rename-aside swap")
    ap.add_argument("--ready-after", type=int, default=0, help="print 'saved' after this save (0-based)")
    args = ap.parse_args()
    if args.rename:
        import hashindex.serving.persist

        hashindex.serving.persist._exchange = lambda a, b: False
    versions = [build(v, args.seed, args.n, args.dim) for v in (0, 1)]
    i = 0
    while not (args.stop and os.path.exists(args.stop)):
        versions[i % 2].save(args.path)
        if i == args.ready_after:
            print("saved", flush=True)
        i += 1


if __name__ == "__main__":
    main()
