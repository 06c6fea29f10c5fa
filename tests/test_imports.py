"""Data flows one way: data_prep <- trainables <- sweeper -> results; results imports none of them;
every package may import vocab, which imports none."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

ALLOWED = {
    "vocab": set(),  # the shared vocabulary (errors) that every package may use
    "data_prep": {"vocab"},
    "phantom": {"data_prep", "vocab"},  # writes sets in the real sources' formats; data_prep never imports it
    "trainables": {"data_prep", "vocab"},
    "sweeper": {"data_prep", "phantom", "trainables", "results", "vocab"},
    "results": {"vocab"},
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
    """The prepared data set's reader and its node-local copy; and its decoder, for new images in
    trainables.predict only."""
    for path in (REPO / "trainables").rglob("*.py"):
        allowed = {"data_prep.dataset", "data_prep.node_copy"} | ({"data_prep.decode"} if path.name == "predict.py"
                                                                  else set())
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


INTERNAL_ERRORS = {"data_prep.errors.ImageRejected"}  # a per-file quarantine reason, caught where it is raised


def test_every_error_a_user_can_meet_derives_from_one_base_that_every_cli_turns_into_exit_2():
    """vocab.errors.CxrSweepError: one `except` for every CLI (vocab.errors.run_command), so a new error
    class cannot surface as a traceback from one of them."""
    import importlib

    from vocab.errors import CxrSweepError

    found = []
    for package in ALLOWED:
        for path in (REPO / package).rglob("*.py"):
            classes = [node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)]
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            for name in classes:
                obj = getattr(importlib.import_module(module), name, None)
                if isinstance(obj, type) and issubclass(obj, BaseException):
                    found.append((f"{module}.{name}", obj))
    assert len(found) >= 10
    strays = [name for name, cls in found if not issubclass(cls, CxrSweepError) and name not in INTERNAL_ERRORS]
    assert not strays, f"errors that are not CxrSweepError: {strays}"


def _cli_modules() -> list:
    """Every module of `cxr-sweep`'s table, and the older `python -m` forms kept beside them."""
    from sweeper.cli import COMMANDS

    return [*COMMANDS.values(), "trainables.weights"]


@pytest.mark.parametrize("module", _cli_modules())
def test_every_command_goes_through_the_one_error_path(module):
    """vocab.cli.main (a command on the protocol) or vocab.errors.exits_on_error (one not on it yet): both end
    in vocab.errors.run_command, the one place a CxrSweepError becomes `error: ...` and exit 2."""
    text = (REPO / (module.replace(".", "/") + ".py")).read_text()
    assert "return cli.main(COMMAND, " in text or "@exits_on_error\ndef main(" in text, module


def test_names_that_cross_packages_are_composed_and_parsed_in_vocab_names():
    """A study key, a cell name and a metric key round-trip; no module composes them by hand."""
    import re

    from vocab import names

    cell = names.cell_name("resnet50", "imagenet", "loss=bce,lr=0.01")
    assert cell == "resnet50/imagenet/loss=bce,lr=0.01" and names.cell_name("resnet50", "imagenet") == "resnet50/imagenet"
    assert names.cell_of_study(names.study_key(cell, 3)) == cell
    with pytest.raises(ValueError, match="not a study key"):
        names.cell_of_study("resnet50/imagenet")
    assert names.metric_key("outer_train", "binary_acc") == "outer_train_binary_acc"
    hand_made = re.compile(r'/fold\{|"/fold"|f"\{(split|prefix)\}_|\{r\.backbone\}/\{r\.recipe\}')
    for package in ALLOWED:
        for path in (REPO / package).rglob("*.py"):
            if path.parts[-2:] != ("vocab", "names.py"):
                assert not hand_made.search(path.read_text()), f"{path} composes a name by hand"


def _ray_train_uses(source: str) -> list[str]:
    """Each `ray.train` / `ray.air` import or attribute in Python source, as written."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(("ray.train", "ray.air"))]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(("ray.train", "ray.air")):
                found.append(node.module)
            elif node.module == "ray":
                found += [f"ray.{a.name}" for a in node.names if a.name in ("train", "air")]
        elif (isinstance(node, ast.Attribute) and node.attr in ("train", "air") and isinstance(node.value, ast.Name)
              and node.value.id == "ray"):
            found.append(f"ray.{node.attr}")
    return found


def test_no_module_uses_ray_train_in_what_runs_in_trials():
    """Under Ray Train V2 (already the default of the pinned Ray 2.60: RAY_TRAIN_V2_ENABLED defaults to 1; Ray
    3.0 removes V1) a `ray.train.*` or `ray.air` call inside a Tune trainable is an error. Trials report and
    checkpoint with `ray.tune` only (tune.report, tune.get_checkpoint, tune.Checkpoint); a logger's name
    ("ray.train._internal.storage") is no use."""
    assert sorted(_ray_train_uses("import ray\nfrom ray import train\nray.train.report({})\nfrom ray.air import session\n"
                                  "import ray.train.torch\nlogging.getLogger('ray.train._internal.storage')\n")) == [
        "ray.air", "ray.train", "ray.train", "ray.train.torch"]  # the check itself finds each form
    uses = {path.relative_to(REPO).as_posix(): _ray_train_uses(path.read_text())
            for package in ALLOWED for path in (REPO / package).rglob("*.py")}
    assert not {path: found for path, found in uses.items() if found}
