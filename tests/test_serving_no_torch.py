"""The serving path must work where torch cannot be imported, and must never try to import it.

A child interpreter installs a ``sys.meta_path`` finder that records and refuses every import
of ``torch`` (or a submodule), then imports the serving modules and builds, searches, saves
and loads an index. Any attempt, even one caught by a ``try: import torch``, fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# modules on the serving path (preamble / ARCHITECTURE.md); those not written yet are skipped
SERVING_MODULES = [
    "hashindex",
    "hashindex.core.codes",
    "hashindex.core.errors",
    "hashindex.core.validation",
    "hashindex.serving.store",
    "hashindex.serving.persist",
    "hashindex.serving.locks",
    "hashindex.serving.rerank",
    "hashindex.serving.hashers",
    "hashindex.serving.candidates.binary",
    "hashindex.serving.index",
    "hashindex.serving.encoder",
    "hashindex.evaluation.metrics",
    "hashindex.training.data",
    "hashindex.training.data.synthetic",
]

_CHILD = r"""
import importlib, importlib.util, json, sys

attempts = []

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            import traceback
            attempts.append((name, "".join(traceback.format_stack(limit=12))))
            raise ImportError(f"import of {name} blocked: the serving path must not need torch")
        return None

sys.meta_path.insert(0, BlockTorch())
sys.path.insert(0, REPO)

imported, missing = [], []
for mod in MODULES:
    top = mod.rsplit(".", 1)[0]
    if "." in mod and importlib.util.find_spec(top) is not None and importlib.util.find_spec(mod) is None:
        missing.append(mod)  # not written yet
        continue
    importlib.import_module(mod)
    imported.append(mod)

import tempfile
import numpy as np
from hashindex.serving.index import HashIndex
from hashindex.serving.hashers import make_hasher

rng = np.random.default_rng(0)
centers = rng.standard_normal((20, 32))
x = (centers[rng.integers(0, 20, 1000)] + 0.05 * rng.standard_normal((1000, 32))).astype(np.float32)
q = (centers[:5] + 0.05 * rng.standard_normal((5, 32))).astype(np.float32)
index = HashIndex(32, make_hasher("itq", 32, 32), backend="multihash")
index.add(x)
res = index.search(q, k=5, radius=2)
lims, ids, ham = index.range_search(q, 1)
with tempfile.TemporaryDirectory() as d:
    index.save(d + "/ix")
    loaded = HashIndex.load(d + "/ix")
    res2 = loaded.search(q, k=5, radius=2)
assert np.array_equal(res.ids, res2.ids) and (res.ids[:, 0] >= 0).all()
print(json.dumps({
    "imported": imported,
    "missing": missing,
    "attempts": attempts,
    "torch_loaded": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
}))
"""


def test_serving_path_never_imports_torch():
    code = _CHILD.replace("REPO", repr(str(REPO))).replace("MODULES", repr(SERVING_MODULES))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"serving path failed without torch:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["attempts"], "torch import attempted:\n" + "\n".join(
        f"{name}:\n{stack}" for name, stack in report["attempts"]
    )
    assert report["torch_loaded"] == []
    for core in ("hashindex.serving.index", "hashindex.serving.hashers", "hashindex.serving.persist", "hashindex.core.codes", "hashindex.serving.store"):
        assert core in report["imported"]


def test_blocker_is_effective():
    """The harness itself works: the child really cannot import torch (else the test above is void)."""
    code = _CHILD.split("imported, missing")[0].replace("REPO", repr(str(REPO)))
    code += "\ntry:\n    import torch\nexcept ImportError:\n    print('blocked')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "blocked", proc.stderr
