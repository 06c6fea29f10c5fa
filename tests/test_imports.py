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
