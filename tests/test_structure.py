"""The package's shape, as shared/DESIGN.md states it, read from the source with `ast` (nothing is imported):

* rooms in layers, imports running one way (config/rundir -> data, synthsign, text, model, diffusion, ema -> engine,
  pipeline -> eval -> report, study, bench -> cli and the package's API facade), and no import cycle among modules;
* no re-export shims (a module imports another's names to use them, never to hand them on; package `__init__`s hold a
  docstring only, but for the one API facade, `t2s/__init__.py`, which loads its names lazily);
* no import of another module's private `_name`;
* imports at the top of a module, except optional dependencies and the command line's (which imports each command's
  rooms when the command runs, so that `--help` and a bad argument answer before torch loads);
* functions and classes that read in one sitting.

Each check is a function of a package folder, so the tests below also show it failing on a small fixture tree.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "t2s"

MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60

# Each room's layer (the first name under t2s/); a module imports only from its own layer or below.
LAYERS = [
    {"config", "rundir", "arguments"},  # 0: the config, every file name and column of a run, the CLI's value types
    {"data", "synthsign", "text", "model", "diffusion", "ema"},  # 1: data, and the model's parts
    {"engine", "pipeline"},  # 2: training, sampling
    {"eval"},  # 3: evaluation
    {"report", "study", "bench"},  # 4: the report, studies, the benchmark
    {"cli", "__main__", ""},  # 5: the command line and the package's API facade
]
FACADE = ""  # t2s/__init__.py: the Python API (its names load lazily)
LAZY_IMPORTS = {"cli", "bench.command"}  # modules that import inside functions on purpose (see the module docstring)
# Function-local imports allowed anywhere: optional or platform-specific dependencies, imported where used.
LOCAL_IMPORTS_ALLOWED = {
    "fcntl",  # POSIX only (the study's run locks)
    "submitit", "submitit.helpers",  # only for --executor local/slurm
    "lpips", "torchvision.models",  # metric networks, loaded when their weights exist
    "IPython.display", "plotly.offline", "ipywidgets",  # the notebook display helpers run in a kernel only
}


# --------------------------------------------------------------------------------------------- reading a package
def modules(package: Path) -> dict[str, Path]:
    """{dotted name under the package ('' for its __init__): path} of every module."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _guarded(node: ast.If) -> bool:
    """`if __name__ == "__main__":` or `if TYPE_CHECKING:` (imports there do not run on import)."""
    test = ast.unparse(node.test)
    return test == "TYPE_CHECKING" or "__name__" in test


def imports(tree: ast.Module):
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


def _absolute(module: str, path: Path, node: ast.ImportFrom, name: str) -> str:
    """The dotted name (under the package) an ImportFrom's module refers to; '' for the package itself, or the
    empty string also where it is outside the package (see `targets`)."""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = package[:len(package) - node.level + 1] if module else []
        return ".".join([p for p in base if p] + ([node.module] if node.module else []))
    return "" if node.module == name else node.module[len(name) + 1:]


def targets(module: str, path: Path, node, known: dict, name: str = "t2s") -> set[str]:
    """The package's modules an import statement loads (as keys of `known`)."""
    if isinstance(node, ast.Import):
        return {a.name[len(name) + 1:] for a in node.names if a.name.startswith(name + ".")} & set(known)
    if not node.level and not (node.module == name or (node.module or "").startswith(name + ".")):
        return set()
    target = _absolute(module, path, node, name)
    submodules = {f"{target}.{a.name}".lstrip(".") for a in node.names}
    found = {n for n in submodules if n in known}
    return found | ({target} if len(found) < len(submodules) and target in known else set())


def graph(package: Path, name: str = "t2s") -> dict[str, set[str]]:
    """{module: the package's modules it imports}, every import statement (top-level or not) counted."""
    known = modules(package)
    return {m: {t for node, _ in imports(ast.parse(p.read_text())) for t in targets(m, p, node, known, name)} - {m}
            for m, p in known.items()}


def layer(module: str, layers=LAYERS) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(layers):
        if top in names:
            return i
    raise AssertionError(f"{module or '__init__'}: add its room to a layer in tests/test_structure.py")


# --------------------------------------------------------------------------------------------- the checks
def upward_imports(package: Path, layers=LAYERS, name: str = "t2s") -> list[str]:
    return [f"{m or name} (layer {layer(m, layers)}) imports {t or name} (layer {layer(t, layers)})"
            for m, found in graph(package, name).items() for t in sorted(found) if layer(t, layers) > layer(m, layers)]


def import_cycles(package: Path, name: str = "t2s") -> list[str]:
    """The modules on an import cycle: those that reach themselves through the import graph."""
    edges = graph(package, name)

    def reaches(start: str) -> set:
        seen, todo = set(), list(edges[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return seen

    return sorted(m for m in edges if m in reaches(m))


def _used_names(tree: ast.Module, skip: set) -> set[str]:
    """Names a module reads (Name loads and the roots of attribute chains), outside the import statements."""
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            used.add(node.id)
    return used - skip


def re_exports(package: Path, facade: str = FACADE, name: str = "t2s") -> list[str]:
    """Names a module imports from the package without using them (kept only to be handed on), star imports,
    `__all__` entries that are imported names, and package `__init__`s that hold more than a docstring."""
    found = []
    for module, path in modules(package).items():
        if module == facade:
            continue
        tree = ast.parse(path.read_text())
        rel = path.relative_to(package.parent)
        if path.name == "__init__.py":
            extra = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                     and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
            if extra:
                found.append(f"{rel}: a package's __init__ holds its docstring only (line {extra[0].lineno})")
                continue
        imported = {}
        for node, _ in imports(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or node.module == name
                                                     or (node.module or "").startswith(name + ".")):
                for alias in node.names:
                    if alias.name == "*":
                        found.append(f"{rel}:{node.lineno}: star import from {node.module or '.'}")
                    else:
                        imported[alias.asname or alias.name] = node.lineno
        exported = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                exported = {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant)}
        used = _used_names(tree, set())
        for bound, lineno in imported.items():
            if bound in exported or bound not in used:
                found.append(f"{rel}:{lineno}: {bound} is imported to be handed on (a re-export)")
    return found


def private_imports(package: Path, name: str = "t2s") -> list[str]:
    """`from <another module> import _name` and `<imported module>._name` (dunders aside)."""
    known = modules(package)
    found = []
    for module, path in known.items():
        tree = ast.parse(path.read_text())
        rel = path.relative_to(package.parent)
        aliases = {}
        for node, _ in imports(tree):
            if not isinstance(node, ast.ImportFrom) or not targets(module, path, node, known, name):
                continue
            base = _absolute(module, path, node, name)
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{rel}:{node.lineno}: imports {alias.name} from {base or name}")
                if f"{base}.{alias.name}".lstrip(".") in known:
                    aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{rel}:{node.lineno}: reads {node.value.id}.{node.attr}")
    return found


def local_imports(package: Path, lazy: set = LAZY_IMPORTS) -> list[str]:
    found = []
    for module, path in modules(package).items():
        if module in lazy:
            continue
        for node, top in imports(ast.parse(path.read_text())):
            if top:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            found += [f"{path.relative_to(package.parent)}:{node.lineno} imports {n}" for n in names
                      if n not in LOCAL_IMPORTS_ALLOWED]
    return found


def oversized(package: Path) -> list[str]:
    found = []
    for path in modules(package).values():
        for node in ast.walk(ast.parse(path.read_text())):
            limit = {ast.ClassDef: MAX_CLASS_LINES, ast.FunctionDef: MAX_FUNCTION_LINES,
                     ast.AsyncFunctionDef: MAX_FUNCTION_LINES}.get(type(node))
            if limit and node.end_lineno - node.lineno + 1 > limit:
                found.append(f"{path.relative_to(package.parent)}: {node.name} is "
                             f"{node.end_lineno - node.lineno + 1} lines (> {limit})")
    return found


# --------------------------------------------------------------------------------------------- t2s holds them
def test_the_import_graph_runs_one_way_through_the_layers_without_a_cycle():
    assert not upward_imports(PACKAGE), "\n".join(upward_imports(PACKAGE))
    assert not import_cycles(PACKAGE), f"import cycle among: {import_cycles(PACKAGE)}"


def test_no_module_re_exports_another_modules_names():
    assert not re_exports(PACKAGE), "\n".join(re_exports(PACKAGE))


def test_no_module_imports_another_modules_private_names():
    assert not private_imports(PACKAGE), "\n".join(private_imports(PACKAGE))


def test_imports_are_at_the_top_of_modules_except_optional_dependencies_and_the_command_line():
    found = local_imports(PACKAGE)
    assert not found, "function-local imports (move them to the module's header):\n" + "\n".join(found)


def test_sizes_of_classes_and_functions():
    """A function or class reads in one sitting. Modules have no line limit: a module is split when it holds two
    ideas, never because of its length (shared/DESIGN.md, "Rooms")."""
    assert not oversized(PACKAGE), "\n".join(oversized(PACKAGE))


def test_every_room_has_a_docstring_that_says_what_it_owns():
    missing = [str(path.relative_to(PACKAGE.parent)) for path in modules(PACKAGE).values()
               if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, "modules without a docstring: " + ", ".join(missing)


def test_the_one_command_line_is_python_m_t2s():
    """`python -m t2s` is the only parser: no other module runs as a script or builds an ArgumentParser."""
    scripts = [str(p.relative_to(PACKAGE.parent)) for m, p in modules(PACKAGE).items()
               if m not in ("cli", "__main__") and ("__main__" in p.read_text() or "ArgumentParser(" in p.read_text())]
    assert not scripts, ", ".join(scripts)


# --------------------------------------------------------------------------------------------- and they can fail
def _tree(root: Path, files: dict) -> Path:
    """A fixture package `pkg` under root from {relative path: source}."""
    package = root / "pkg"
    for rel, source in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return package


FIXTURE_LAYERS = [{"base"}, {"room"}, {"cli", ""}]
CLEAN = {"__init__.py": '"""The fixture package."""\n',
         "base.py": '"""Base."""\nVALUE = 1\n',
         "room/__init__.py": '"""A room."""\n',
         "room/a.py": '"""A."""\nfrom pkg.base import VALUE\n\nDOUBLE = 2 * VALUE\n',
         "cli.py": '"""Cli."""\nfrom pkg.room.a import DOUBLE\n\nprint(DOUBLE)\n'}


def test_a_clean_fixture_tree_passes_every_check(tmp_path):
    package = _tree(tmp_path, CLEAN)
    assert upward_imports(package, FIXTURE_LAYERS, "pkg") == []
    assert import_cycles(package, "pkg") == []
    assert re_exports(package, name="pkg") == []
    assert private_imports(package, "pkg") == []


def test_an_added_shim_is_found(tmp_path):
    """room/b.py imports DOUBLE only for its callers (as data.py once re-exported captions' names), a package's
    __init__ that re-exports, and an __all__ that hands an imported name on."""
    package = _tree(tmp_path, {**CLEAN,
                               "room/b.py": '"""B: the old home of DOUBLE."""\nfrom pkg.room.a import DOUBLE  # noqa\n',
                               "room/__init__.py": '"""A room."""\nfrom pkg.room.a import DOUBLE  # noqa\n',
                               "room/c.py": ('"""C."""\nfrom pkg.base import VALUE\n\n__all__ = ["VALUE", "f"]\n\n\n'
                                             'def f():\n    return VALUE\n')})
    found = re_exports(package, name="pkg")
    assert any("room/b.py:2: DOUBLE is imported to be handed on" in f for f in found), found
    assert any("room/__init__.py: a package's __init__ holds its docstring only" in f for f in found), found
    assert any("room/c.py:2: VALUE is imported to be handed on" in f for f in found), found


def test_a_cross_module_private_import_is_found(tmp_path):
    package = _tree(tmp_path, {**CLEAN,
                               "base.py": '"""Base."""\nVALUE = 1\n\n\ndef _helper():\n    return 2\n',
                               "room/a.py": ('"""A."""\nfrom pkg import base\nfrom pkg.base import VALUE, _helper\n\n'
                                             'DOUBLE = VALUE * _helper() * base._helper()\n')})
    found = private_imports(package, "pkg")
    assert any("room/a.py:3: imports _helper from base" in f for f in found), found
    assert any("room/a.py:5: reads base._helper" in f for f in found), found


def test_a_circle_and_an_upward_import_are_found(tmp_path):
    """base imports room.a and room.a imports base: a cycle, and an import from layer 0 up to layer 1 (as
    launch.py and train.py once imported each other)."""
    package = _tree(tmp_path, {**CLEAN, "base.py": '"""Base."""\nfrom pkg.room import a\n\nVALUE = 1\nprint(a)\n'})
    assert import_cycles(package, "pkg") == ["base", "room.a"]
    assert upward_imports(package, FIXTURE_LAYERS, "pkg") == ["base (layer 0) imports room.a (layer 1)"]


@pytest.mark.parametrize("source, expected", [
    ("from .config import Config", {"config"}),
    ("from t2s.eval import metrics, captions", {"eval.metrics", "eval.captions"}),
    ("from t2s.report import load", {"report.load"}),
    ("from t2s.study.export import build_report", {"study.export"}),
    ("import torch", set()),
])
def test_the_import_reader_finds_project_modules(source, expected):
    node = ast.parse(source).body[0]
    assert targets("pipeline", PACKAGE / "pipeline.py", node, modules(PACKAGE)) == expected


def test_a_function_local_import_is_found_outside_the_command_line(tmp_path):
    package = _tree(tmp_path, {**CLEAN, "room/a.py": '"""A."""\n\n\ndef f():\n    import json\n    return json\n'})
    assert local_imports(package, lazy={"cli"}) == ["pkg/room/a.py:5 imports json"]
