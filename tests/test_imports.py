"""Data flows one way: data_prep <- trainables <- sweeper -> results; results imports none."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

ALLOWED = {
    "data_prep": set(),
    "trainables": {"data_prep"},
    "sweeper": {"data_prep", "trainables", "results"},
    "results": set(),
}


def _imported_packages(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (REPO / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[path.relative_to(REPO).as_posix()] = names & set(ALLOWED)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_data_flow_allows(package):
    for path, imported in _imported_packages(package).items():
        assert imported - {package} <= ALLOWED[package], f"{path} imports {imported - {package} - ALLOWED[package]}"


def test_trainables_uses_only_the_reading_side_of_data_prep():
    """The prepared data set's reader; and its decoder, for new images in trainables.predict only."""
    for path in (REPO / "trainables").rglob("*.py"):
        allowed = {"data_prep.dataset"} | ({"data_prep.decode"} if path.name == "predict.py" else set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("data_prep"):
                assert node.module in allowed, f"{path.name} imports {node.module}"


def _module_graph() -> dict[str, set[str]]:
    """Every project module -> the project modules it imports, at any depth of the file (a function's
    import counts: it is a circle all the same, only postponed)."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for package in ALLOWED for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_module_imports_itself_back_through_others():
    graph, state, circles = _module_graph(), {}, []

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                circles.append(" -> ".join(path[path.index(imported):] + [imported]))
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles
