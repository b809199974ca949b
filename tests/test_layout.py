"""The package's import graph points one way, and the packaging names every package.

Read from the source with ``ast`` (nothing is imported): every ``colbert_lightning`` import of
every module, except those under ``if TYPE_CHECKING:`` (type-only, never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "colbert_lightning"

LAYERS = [
    {"resources", "scoring", "losses", "schedules"},  # pure functions and shipped files
    {"modeling"},
    {"retrieval"},
    {"data"},
    {"config"},
    {"evaluation"},
    {"training"},
    {"pretraining"},
    {"compat"},
    # entry points
    {
        "train",
        "evaluate",
        "prepare",
        "index",
        "search",
        "export",
        "summarize",
        "compare",
        "tokenizer",
        "pretrain",
        "pipeline",
        "score_candidates",
    },
]
"""Lowest first: a module may import its own layer's units and lower ones, never higher ones."""
ENTRY_POINTS = LAYERS[-1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module imported, names imported from it)`` for each runtime import in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return [(name, names) for name, names in found if name.split(".")[0] == "colbert_lightning"]


def _unit(module: str) -> str:
    """The layer unit of a module: its first name below ``colbert_lightning``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
    unit = _unit(module)
    for number, layer in enumerate(LAYERS):
        if unit in layer:
            return number
    raise AssertionError(f"{module}: add {unit!r} to a layer of tests/test_layout.py")


SOURCES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {_module_name(path): _runtime_imports(path) for path in SOURCES}


def test_every_unit_has_a_layer():
    for module in GRAPH:
        if module != "colbert_lightning":
            _layer(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_and_never_at_an_entry_point(module):
    if module == "colbert_lightning":
        return  # the package root only re-exports RAGTrainer, imported on first use
    for imported, _ in GRAPH[module]:
        if imported == "colbert_lightning":
            continue
        assert _layer(imported) <= _layer(module), f"{module} imports higher {imported}"
        assert _unit(imported) not in ENTRY_POINTS, f"{module} imports an entry point"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_private_names_from_another_module(module):
    for imported, names in GRAPH[module]:
        private = [name for name in names if name.startswith("_")]
        assert not private, f"{module} imports private {private} from {imported}"


def _resolve(imported: str, names: list[str]) -> list[str]:
    """The modules an import runs: a submodule for ``from package import submodule``."""
    modules = [imported] if imported in GRAPH else []
    modules += [f"{imported}.{name}" for name in names if f"{imported}.{name}" in GRAPH]
    return modules


def test_no_import_cycles():
    edges = {
        module: {
            target
            for imported, names in imports
            for target in _resolve(imported, names)
            if target != module
        }
        for module, imports in GRAPH.items()
    }
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open" and not module.startswith(target + "."):
                # a package __init__ re-exporting its own submodules is not a cycle
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    """The check itself: an import of training from data would be reported."""
    bad = tmp_path / "colbert_lightning" / "data" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from colbert_lightning.training.run import train\n")
    imports = [name for name, _ in _runtime_imports_at(bad, tmp_path)]
    assert imports == ["colbert_lightning.training.run"]
    assert _layer(imports[0]) > _layer("colbert_lightning.data.bad")


def _runtime_imports_at(path: Path, root: Path) -> list[tuple[str, list[str]]]:
    global PACKAGE
    saved, PACKAGE = PACKAGE, root / "colbert_lightning"
    try:
        return _runtime_imports(path)
    finally:
        PACKAGE = saved


def test_pyproject_lists_every_package():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(path) for path in PACKAGE.rglob("__init__.py")}
    assert listed == on_disk | {"colbert_lightning.conf"}
    assert pyproject["tool"]["setuptools"]["package-dir"]["colbert_lightning.conf"] == "conf"


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=_module_name)
def test_every_package_says_what_lives_there(init):
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert docstring and len(docstring) > 20, f"{init}: no docstring"
