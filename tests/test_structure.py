"""The package's shape, as the architecture states it: module, class and function sizes, imports at the top of
modules, and one direction through the layers (config/formats -> data/text/model/diffusion/ema -> engine/pipeline ->
evaluate -> report/ablate/bench -> cli). Read from the source with `ast`; nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "t2s"

MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60

# Each module's layer; a module imports only from its own layer or below, and never in a cycle.
LAYERS = [
    # 0: config and formats, and what has no project imports
    {"config", "rundir", "runtime", "counting", "glosses", "model", "diffusion", "ema", "metrics", "arguments"},
    # 1: data, text
    {"video", "synthsign", "synthdata", "captions", "records", "releases", "data", "text", "checkpoint"},
    # 2: engine and pipeline
    {"engine", "pipeline", "runlog", "share", "train", "launch"},
    # 3: evaluation
    {"backtranslate", "evaluation_metrics", "evaluate"},
    # 4: report, study running, benchmark
    {"report", "report_build", "study_runs", "progress", "executors", "ablate", "bench"},
    # 5: the command line and the package's facade
    {"cli", "__main__", ""},
]

# Function-local imports allowed: optional or platform-specific dependencies, imported where used.
LOCAL_IMPORTS_ALLOWED = {
    "fcntl",  # POSIX only (study_runs' file lock)
    "submitit", "submitit.helpers",  # only for --executor local/slurm
    "lpips", "torchvision.models",  # metric networks, loaded when their weights exist
    "IPython.display", "plotly.offline", "ipywidgets",  # the notebook display helpers run in a kernel only
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"t2s/{module.replace('.', '/')}.py: add it to a layer in tests/test_structure.py")


def _guarded(node: ast.If) -> bool:
    """`if __name__ == "__main__":` or `if TYPE_CHECKING:` (imports there do not run on import)."""
    test = ast.unparse(node.test)
    return test == "TYPE_CHECKING" or "__name__" in test


def _imports(tree: ast.Module):
    """(node, at_top_level) for every import, skipping those under a __main__ or TYPE_CHECKING guard."""
    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _guarded(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            yield from visit(child, inner)
    yield from visit(tree, True)


def _project_targets(module: str, path: Path, node) -> set[str]:
    """The t2s modules an import statement loads (as keys of MODULES)."""
    if isinstance(node, ast.Import):
        return {a.name[4:] for a in node.names if a.name.startswith("t2s.") and a.name[4:] in MODULES}
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = package[:len(package) - node.level + 1] if module else []
        target = ".".join([p for p in base if p] + ([node.module] if node.module else []))
    elif node.module and (node.module == "t2s" or node.module.startswith("t2s.")):
        target = node.module[4:]
    else:
        return set()
    # `from package import x`: the submodule x where x is one, else the package (or module) itself
    submodules = {f"{target}.{a.name}".lstrip(".") for a in node.names}
    found = {n for n in submodules if n in MODULES}
    return found | ({target} if len(found) < len(submodules) and target in MODULES else set())


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        graph[module] = {t for node, _ in _imports(tree) for t in _project_targets(module, path, node)} - {module}
    return graph


def test_sizes_of_classes_and_functions():
    """A function or class reads in one sitting. Modules have no line limit: a module is split when it holds two
    ideas, never because of its length (shared/DESIGN.md, "Rooms")."""
    too_big = []
    for module, path in MODULES.items():
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            limit = {ast.ClassDef: MAX_CLASS_LINES, ast.FunctionDef: MAX_FUNCTION_LINES,
                     ast.AsyncFunctionDef: MAX_FUNCTION_LINES}.get(type(node))
            if limit and node.end_lineno - node.lineno + 1 > limit:
                too_big.append(f"t2s/{path.relative_to(PACKAGE)}: {node.name} is "
                               f"{node.end_lineno - node.lineno + 1} lines (> {limit})")
    assert not too_big, "\n".join(too_big)


def test_imports_are_at_the_top_of_modules_except_optional_dependencies():
    local = []
    for module, path in MODULES.items():
        for node, top in _imports(ast.parse(path.read_text())):
            if top:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            local += [f"t2s/{path.relative_to(PACKAGE)}:{node.lineno} imports {n}" for n in names
                      if n not in LOCAL_IMPORTS_ALLOWED]
    assert not local, "function-local imports (move them to the module's header):\n" + "\n".join(local)


def test_the_import_graph_runs_one_way_through_the_layers():
    graph = _graph()
    upward = [f"{m or 't2s'} (layer {_layer(m)}) imports {t or 't2s'} (layer {_layer(t)})"
              for m, targets in graph.items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)
    # no cycle: repeatedly remove modules that import nothing left
    left = {m: set(t) for m, t in graph.items()}
    while True:
        leaves = [m for m, t in left.items() if not t]
        if not leaves:
            break
        for m in leaves:
            del left[m]
        for t in left.values():
            t.difference_update(leaves)
    assert not left, f"import cycle among: {sorted(left)}"


@pytest.mark.parametrize("source, expected", [
    ("from .config import Config", {"config"}),
    ("from . import metrics, glosses", {"metrics", "glosses"}),
    ("from t2s.report import load", {"report.load"}),
    ("from t2s.report import load, build_report", {"report.load", "report"}),
    ("from t2s import report_build", {"report_build"}),
    ("import torch", set()),
])
def test_the_import_reader_finds_project_modules(source, expected):
    node = ast.parse(source).body[0]
    assert _project_targets("train", PACKAGE / "train.py", node) == expected


def test_the_checks_fail_on_an_upward_import_and_a_local_import():
    tree = ast.parse("import os\n\ndef f():\n    from .cli import main\n")
    found = list(_imports(tree))
    assert [(type(n).__name__, top) for n, top in found] == [("Import", True), ("ImportFrom", False)]
    assert _layer("cli") > _layer("config")
