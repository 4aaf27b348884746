"""The benchmark harness behind benchmarks/run.py and benchmarks/compare.py, one job per module.

- :mod:`benchlib.config`: :class:`BenchConfig`, every option written once (its command-line
  flag, type and help come from the dataclass field);
- :mod:`benchlib.sources`: galleries, training sets and probes (synthetic or an embeddings file),
  and their exact ground truth;
- :mod:`benchlib.methods`: the methods under test (exact, HNSW, IVF, FAISS anchors, ScaNN,
  hashindex), each a small object with ``points`` / ``prepare`` / ``search``;
- :mod:`benchlib.measure`: timing (sweeps, round-robin best-of-n), recall, the machine record.

benchmarks/ is a folder of scripts, not a package: the scripts put this folder on ``sys.path``.
Only public hashindex API is used here (tests/test_layers.py checks it).
"""

import faiss

# Every flat search in a benchmark runs on BLAS, whatever its batch. FAISS >= 1.14.2 uses BLAS
# only from 128000 / D queries (1,000 at 128-d; facebookresearch/faiss#5022) and a per-pair loop
# below it, ~10x slower for the exact baseline at 300 probes: the x-exact ratios of the runs
# before 2026-12-04's fourth stop were against that loop (benchmarks/README.md, "Exact search on BLAS").
# Exact search is timed at its fastest setting; FAISS's IVF anchors' coarse searches get it too.
faiss.cvar.distance_compute_blas_threshold = 0
