"""The source kinds, peers over data_prep.labelset: each module declares its kind (options model, reader,
what the rest of the project says about it) as `KIND = SourceKind(...)` (data_prep.sources.kind).

The modules of this package that declare a KIND are found when it is imported (`discover`) and
registered (`register`): adding a kind is adding one module (docs/design.md §5). `python -m
data_prep.build KIND`, `python -m data_prep.labels KIND` and a spec's `[data.prepare.NAME]` all take a
kind's options from its model (`OPTIONS`), so each option has one definition and one default wherever it
is set.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from pydantic import ValidationError

from data_prep.errors import DataPrepError
from data_prep.labelset import LabelSet, file_sha256
from data_prep.sources.kind import SourceKind
from data_prep.sources.options import Options

SourceOptions = Options  # any kind's options (each kind's model subclasses Options)
REGISTRY: dict[str, SourceKind] = {}  # kind name -> its declaration, in the order registered
KINDS = REGISTRY.keys()  # a live view: a kind registered later is among them wherever KINDS was imported


class _OptionsByKind(Mapping):
    """Kind name -> its options model, live like KINDS."""

    def __getitem__(self, name: str) -> type[Options]:
        return REGISTRY[name].options

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


OPTIONS: Mapping[str, type[Options]] = _OptionsByKind()


def register(kind: SourceKind) -> SourceKind:
    """Make `kind` known to every command, spec and reader; a second kind of the same name is a bug."""
    if kind.name in REGISTRY and REGISTRY[kind.name] is not kind:
        raise ValueError(f"source kind {kind.name!r} is declared twice: {REGISTRY[kind.name].options.__module__} "
                         f"and {kind.options.__module__}")
    REGISTRY[kind.name] = kind
    return kind


def discover(path: Iterable[str], package: str) -> list[SourceKind]:
    """The KIND of each module of a package (its `__path__` and name) that declares one, by module name."""
    found = []
    for module in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        kind = getattr(importlib.import_module(f"{package}.{module.name}"), "KIND", None)
        if kind is not None and not isinstance(kind, SourceKind):
            raise ValueError(f"{package}.{module.name}.KIND is a {type(kind).__name__}; expected a SourceKind")
        found += [kind] if kind is not None else []
    return found


def kind_help() -> str:
    """The kind argument's help: each kind and what it is."""
    return "source kind: " + ", ".join(f"{k.name} ({k.title})" for k in REGISTRY.values())


def table_help() -> str:
    """What --labels takes, kind by kind."""
    return "; ".join(f"{k.name}: {k.table_help}" for k in REGISTRY.values())


def official_help() -> str:
    """Each official split's test set, for --split's help and the spec's."""
    return ", ".join(f"{k.name}: {k.official_help}" for k in REGISTRY.values() if k.official_split)


def policy_kinds() -> list[str]:
    """The kinds whose options have an uncertainty `policy` (a spec's data.chexpert_policy sets it)."""
    return [name for name, kind in REGISTRY.items() if "policy" in kind.options.model_fields]


CLI_SKIPS = ("kind", "seed")  # the build's --seed seeds every random choice, NIH's undersampling included


def option_names(kind: str) -> list[str]:
    return [name for name in OPTIONS[kind].model_fields if name != "kind"]


def source_options(kind: str, values: dict | None = None, where: str = "") -> SourceOptions:
    """The kind's options from `values`; DataPrepError naming the key and what was expected."""
    if kind not in OPTIONS:
        raise DataPrepError(f"{where or 'source kind'}: {kind!r}; expected one of {list(KINDS)}")
    try:
        return OPTIONS[kind](**(values or {}))
    except ValidationError as exc:
        prefix = f"{where}." if where else ""
        problems = "; ".join(f"{prefix}{'.'.join(map(str, e['loc']))}: {_message(e, kind)}" for e in exc.errors())
        raise DataPrepError(problems) from None


def _message(error: dict, kind: str) -> str:
    if error["type"] == "extra_forbidden":
        return f"not an option of {kind} sources; their options: {option_names(kind)}"
    return error["msg"]


def label_table(path: Path, options: SourceOptions) -> Path:
    """The table the kind's reader reads, from what the user named: the table, the downloaded folder (where
    the source has one obvious table) or, for MIMIC, another table of the download. DataPrepError saying what
    to give otherwise."""
    return REGISTRY[options.kind].label_table(Path(path), options)


def read_labels(path: Path, options: SourceOptions) -> LabelSet:
    """The label table of any source kind, named as `label_table` accepts."""
    return REGISTRY[options.kind].read_labels(label_table(path, options), options)


SPLITS = ("random", "official")  # patient-grouped folds of the whole set, or the source's own test set


def read_official(path: Path, options: SourceOptions) -> tuple[LabelSet, list[str]]:
    """The labels with an `official` column (test or train) from the source's own split; the files it
    comes from. DataPrepError for a kind without one."""
    official = REGISTRY[options.kind].official_split
    if official is None:
        raise DataPrepError(f"{options.kind} sources have no official split; expected split 'random' (kinds with "
                            f"one: {sorted(k for k in KINDS if REGISTRY[k].official_split)})")
    path = label_table(path, options)
    label_set, files = official(path, options)
    label_set.stats["official_split"] = {name: file_sha256(path.parent / name) for name in files}  # in the id
    return label_set, files


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """One --flag per option of any kind, from the models: choices, type and help included."""
    for name in dict.fromkeys(n for kind in KINDS for n in option_names(kind) if n not in CLI_SKIPS):
        kinds = [k for k in KINDS if name in OPTIONS[k].model_fields]
        field = OPTIONS[kinds[0]].model_fields[name]
        flag = f"--{name.replace('_', '-')}"
        text = f"{', '.join(kinds)}: {field.description} (default {field.default})"
        if field.annotation is bool:
            parser.add_argument(flag, action="store_true", default=None, help=text)
        else:
            choices = typing.get_args(field.annotation) or None
            parser.add_argument(flag, choices=choices, default=None, help=text,
                                type=None if choices else field.annotation)


def options_from_args(kind: str, args: argparse.Namespace, parser: argparse.ArgumentParser, **fixed) -> SourceOptions:
    """The kind's options from the flags given; a flag of another kind is an error naming it."""
    given = {name: value for name, value in vars(args).items() if value is not None and any(
        name in OPTIONS[k].model_fields for k in KINDS) and name not in CLI_SKIPS}
    foreign = [name for name in given if name not in OPTIONS[kind].model_fields]
    if foreign:
        parser.error(f"--{foreign[0].replace('_', '-')} is not an option of {kind} sources; their options: "
                     + ", ".join(f"--{n.replace('_', '-')}" for n in option_names(kind) if n not in CLI_SKIPS))
    return source_options(kind, {**given, **{k: v for k, v in fixed.items() if k in OPTIONS[kind].model_fields}})


# Last: a kind module may import this package's helpers above. By file and __package__, not __path__ and __name__,
# so that the file imported as data_prep.sources.__init__ (tests/test_imports.py) finds the same kinds.
for _kind in discover([str(Path(__file__).parent)], __package__):
    register(_kind)
# The built-in kinds' options by name, for the modules that name one (a default, a test)
from data_prep.sources.chexpert import ChexpertOptions as ChexpertOptions  # noqa: E402
from data_prep.sources.mimic import MimicOptions as MimicOptions  # noqa: E402
from data_prep.sources.nih import NihOptions as NihOptions  # noqa: E402
from data_prep.sources.target import TargetOptions as TargetOptions  # noqa: E402
