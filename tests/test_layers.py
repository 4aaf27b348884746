"""The package's layers import one way, and nothing inside it imports in a circle.

Layers, lowest first: core <- serving <- evaluation <- training <- export <- cli. A module may
import its own layer and those below it, never one above; serving never imports torch.
"""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hashindex"
LAYERS = ("core", "serving", "evaluation", "training", "export", "cli")
HEAVY = {"torch", "torchvision", "onnx", "onnxscript", "matplotlib"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, top_level_only: bool) -> set[str]:
    """Absolute names this file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    mod = module_name(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # imports guarded by `if TYPE_CHECKING` / try at module level count too
        nodes = [n for top in tree.body for n in ast.walk(top) if not isinstance(top, (ast.FunctionDef, ast.ClassDef))]
        nodes += [n for top in tree.body if isinstance(top, ast.ClassDef)
                  for n in top.body if isinstance(n, (ast.Import, ast.ImportFrom))]  # fmt: skip
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return found


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "hashindex" and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def test_every_module_sits_in_a_layer():
    loose = [m for m in MODULES if layer_of(m) is None and m not in ("hashindex", "hashindex.__main__", "hashindex._moved")]
    assert not loose, f"modules outside the layer folders: {loose}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    own = layer_of(name)
    if own is None:
        return
    upward = sorted(i for i in imports_of(MODULES[name], top_level_only=False) if (layer_of(i) or -1) > own)
    assert not upward, f"{name} (layer {LAYERS[own]}) imports from a layer above it: {upward}"
    if LAYERS[own] in ("core", "serving"):
        heavy = sorted(i for i in imports_of(MODULES[name], False) if i.split(".")[0] in HEAVY)
        assert not heavy, f"{name} is on the serving path but imports {heavy}"


def test_no_import_cycles():
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for i in imports_of(path, top_level_only=True):
            while i and i not in MODULES:
                i = i.rpartition(".")[0]
            if i and i != name and i != "hashindex":
                deps.add(i)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The two checks above can fail: they flag a hand-made cycle and an upward import."""
    pkg = tmp_path / "hashindex" / "serving"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("from hashindex.serving import b\nfrom hashindex.training.loop import x\n")
    (pkg / "b.py").write_text("from . import a\n")
    global PKG
    saved = PKG
    PKG = tmp_path / "hashindex"
    try:
        a = imports_of(pkg / "a.py", top_level_only=True)
        b = imports_of(pkg / "b.py", top_level_only=True)
    finally:
        PKG = saved
    assert "hashindex.serving.b" in a and "hashindex.serving.a" in b
    assert any(layer_of(i) == LAYERS.index("training") for i in a)


@pytest.mark.parametrize("old, new", [
    ("hashindex.index", "hashindex.serving.index"),
    ("hashindex.backends.milvus", None),
    ("hashindex.data.synthetic", "hashindex.training.data.synthetic"),
])  # fmt: skip
def test_old_module_paths_still_import_with_a_warning(old, new):
    from hashindex._moved import new_name

    target = new or new_name(old)
    if target == "hashindex.serving.milvus":
        pytest.importorskip("pymilvus")
    import sys

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(target)
    assert module.__name__ == target and module.__spec__.name == target
    assert any(issubclass(w.category, DeprecationWarning) and target in str(w.message) for w in caught)


BENCHMARKS = PKG.parent / "benchmarks"


def private_reads(source: str) -> list[str]:
    """``x._name`` attribute reads where ``x`` is not ``self`` / ``cls`` (a script's own objects
    keep their privates on ``self``; anything else is another object's private state, e.g. a
    HashIndex's ``index._part``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_benchmarks_read_no_private_attribute_of_library_objects():
    bad = {str(p.relative_to(BENCHMARKS)): hits for p in sorted(BENCHMARKS.rglob("*.py"))
           if (hits := private_reads(p.read_text()))}  # fmt: skip
    assert not bad, f"benchmarks read private attributes (use public API, e.g. SearchResult / HashIndex fields): {bad}"


def test_private_read_check_catches_a_broken_example():
    broken = "def scanned(method):\n    stage = method.index._part\n    return self._ok, stage\n"
    assert private_reads(broken) == ["line 2: method.index._part"]
