"""Module paths of hashindex 0.1 that moved when the package took its layered layout.

``import hashindex.index`` (and every other old path below) still works for one release: it
returns the module at its new path and raises a :class:`DeprecationWarning` naming it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "hashindex.codes": "hashindex.core.codes",
    "hashindex.errors": "hashindex.core.errors",
    "hashindex.validation": "hashindex.core.validation",
    "hashindex.preprocess": "hashindex.core.preprocess",
    "hashindex.onnx_graph": "hashindex.export.graph",
    "hashindex.locks": "hashindex.serving.locks",
    "hashindex.store": "hashindex.serving.store",
    "hashindex.rerank": "hashindex.serving.rerank",
    "hashindex.persist": "hashindex.serving.persist",
    "hashindex.hashers": "hashindex.serving.hashers",
    "hashindex.encoder": "hashindex.serving.encoder",
    "hashindex.index": "hashindex.serving.index",
    "hashindex.candidates": "hashindex.serving.candidates.modes",
    "hashindex.backends": "hashindex.serving",
    "hashindex.backends.faiss_binary": "hashindex.serving.candidates.binary",
    "hashindex.backends.faiss_asymmetric": "hashindex.serving.candidates.asymmetric",
    "hashindex.backends.milvus": "hashindex.serving.milvus",
    "hashindex.metrics": "hashindex.evaluation.metrics",
    "hashindex.rank_eval": "hashindex.evaluation.target_ranks",
    "hashindex.plots": "hashindex.evaluation.plots",
    "hashindex.train": "hashindex.training.loop",
    "hashindex.recipes": "hashindex.training.recipes",
    "hashindex.losses": "hashindex.training.losses",
    "hashindex.models": "hashindex.training.models",
    "hashindex.data": "hashindex.training.data",
    "hashindex.onnx_export": "hashindex.export.onnx",
    "hashindex.cli_train": "hashindex.cli.train_commands",
    "hashindex.demo": "hashindex.cli.demo",
}


def new_name(old: str) -> str | None:
    """The current path of an old module path (packages move with their submodules)."""
    parts = old.split(".")
    for cut in range(len(parts), 1, -1):
        head = ".".join(parts[:cut])
        if head in MOVED:
            return ".".join([MOVED[head], *parts[cut:]])
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves an old path with the module at its new path (the same object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        target = new_name(spec.name)
        warnings.warn(
            f"{spec.name} moved to {target}; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(target)
        self._spec = module.__spec__  # the import system overwrites it on the shared object
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._spec


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())  # before PathFinder, which would load a second copy
