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


def test_training_imports_no_private_name_of_another_module():
    """Training modules share code through public names (issue 18: image_training imported
    ``_better``, ``_optimizer``, ``_scheduler`` from loop and ``_resnet18`` from the models)."""
    found = []
    for name, path in MODULES.items():
        if not name.startswith("hashindex.training"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hashindex"):
                found += [f"{name}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, f"private names imported across modules: {found}"
# -- one search pipeline: each step defined once, in its own module (issue 18) ------------------------
SERVING = PKG / "serving"
# step function -> the one serving module that defines it. The plan lives in serving/plan.py,
# the pipeline's order in serving/search.py, its steps' pure cores in the modules named here.
SEARCH_STEPS = {
    **{name: "plan" for name in ("plan_search", "resolve_ranking", "asymmetric_settings", "default_candidates")},
    **{name: "search" for name in (
        "execute", "restrict", "candidates", "widen", "group", "rerank_rows", "rescore", "fill_rows", "threshold",
        "rankable_projection",
    )},  # fmt: skip
    "select_candidates": "candidates.modes",
    "widen_for_labels": "grouping",
    "group_top": "grouping",
    "csr_scores": "grouping",
    "below_threshold": "grouping",
    "rerank": "rerank",
    "score_matrix": "rerank",
    "rescore_exact": "rerank",
    "merge": "candidates.csr",
    "from_knn": "candidates.csr",
}
# what a second, backend-private pipeline was called: no serving module may define them again
RETIRED_STEPS = {"_search_encoded", "_run_search_encoded", "_grouped", "_candidates", "_asymmetric_candidates",
                 "_asymmetric_settings", "_resolve_ranking", "_finish", "_group_client", "_rerank_client"}  # fmt: skip


def step_definitions(root: Path) -> dict[str, list[str]]:
    """Search-step names -> the modules (dotted, relative to ``root``) defining a function or
    method of that name, once per definition."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        mod = ".".join(path.relative_to(root).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                node.name in SEARCH_STEPS or node.name in RETIRED_STEPS
            ):
                found.setdefault(node.name, []).append(mod)
    return found


def misplaced_steps(root: Path) -> list[str]:
    """Every search step defined outside its module, twice, or under a retired name."""
    bad = []
    for name, modules in step_definitions(root).items():
        if name in RETIRED_STEPS:
            bad.append(f"{name} (a second pipeline's step) defined in {modules}")
        elif modules != [SEARCH_STEPS[name]]:
            bad.append(f"search step {name} belongs to serving/{SEARCH_STEPS[name]}.py only, defined in {modules}")
    return bad


def test_each_search_step_is_defined_once_in_its_own_module():
    assert not misplaced_steps(SERVING)


def test_the_step_check_sees_a_second_pipeline(tmp_path):
    (tmp_path / "search.py").write_text("def execute(index, plan, q):\n    pass\n\ndef threshold(res):\n    pass\n")
    (tmp_path / "rerank.py").write_text("def rerank(*a):\n    pass\n")
    assert misplaced_steps(tmp_path) == []
    (tmp_path / "index.py").write_text(
        "class HashIndex:\n    def _search_encoded(self, x):\n        pass\n\n    def threshold(self, res):\n        pass\n"
    )
    (tmp_path / "search.py").write_text("def execute():\n    pass\n\ndef execute():\n    pass\n")
    bad = misplaced_steps(tmp_path)
    assert any("_search_encoded" in b for b in bad)
    assert any("threshold" in b and "index" in b for b in bad)
    assert any("search step execute" in b for b in bad)  # defined twice in its own module


# -- benchmarks read what a user reads: no private attribute of the library ---------------------------
BENCHMARKS = PKG.parent / "benchmarks"


def private_reads(path: Path) -> list[str]:
    """``obj._name`` (and ``getattr(obj, "_name")``) in a benchmark script, except on ``self`` /
    ``cls`` (the script's own classes) and dunders: ``file:line: expression`` for each."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        name, obj = None, None
        if isinstance(node, ast.Attribute):
            name, obj = node.attr, node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):  # fmt: skip
            name, obj = node.args[1].value, node.args[0]
        if not name or not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(obj, ast.Name) and obj.id in ("self", "cls"):
            continue
        out.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_the_private_read_check_sees_one(tmp_path):
    clean = tmp_path / "clean.py"
    clean.write_text("class Run:\n    def go(self):\n        return self._cache, self.index.partition_info(), x.__class__\n")
    assert private_reads(clean) == []
    broken = tmp_path / "broken.py"
    broken.write_text("from hashindex import HashIndex\nindex = HashIndex(8)\nn = index._part\n"
                      "m = getattr(self.index, '_partition_plan', None)\n")  # fmt: skip
    assert [r.split(": ", 1)[1] for r in private_reads(broken)] == [
        "index._part", "getattr(self.index, '_partition_plan', None)"
    ]


def test_benchmarks_read_no_private_attribute_of_the_library():
    bad = [r for path in sorted(BENCHMARKS.rglob("*.py")) for r in private_reads(path)]
    assert not bad, "benchmarks reach into private state (use SearchResult.n_scanned, partition_info()): " + "; ".join(bad)
