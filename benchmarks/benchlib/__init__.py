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
