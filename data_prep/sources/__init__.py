"""The source kinds, peers over data_prep.labelset: each module has its options model and its reader.

`python -m data_prep.build KIND`, `python -m data_prep.labels KIND` and a spec's
`[data.prepare.NAME]` all take a kind's options from its model (`OPTIONS`), so each option has one
definition and one default wherever it is set.
"""
from __future__ import annotations

import argparse
import typing
from pathlib import Path

from pydantic import ValidationError

from data_prep.errors import DataPrepError
from data_prep.labelset import LabelSet, file_sha256
from data_prep.sources import chexpert, mimic, nih, target
from data_prep.sources.chexpert import ChexpertOptions
from data_prep.sources.mimic import MimicOptions
from data_prep.sources.nih import NihOptions
from data_prep.sources.target import TargetOptions

SourceOptions = TargetOptions | NihOptions | ChexpertOptions | MimicOptions
OPTIONS: dict[str, type] = {"target": TargetOptions, "nih": NihOptions, "chexpert": ChexpertOptions,
                            "mimic": MimicOptions}
READERS = {"target": target.read_labels, "nih": nih.read_labels, "chexpert": chexpert.read_labels,
           "mimic": mimic.read_labels}
TABLES = {"target": target.label_table, "nih": nih.label_table, "chexpert": chexpert.label_table,
          "mimic": mimic.label_table}
KINDS = tuple(OPTIONS)
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
    return TABLES[options.kind](Path(path), options)


def read_labels(path: Path, options: SourceOptions) -> LabelSet:
    """The label table of any source kind, named as `label_table` accepts."""
    return READERS[options.kind](label_table(path, options), options)


OFFICIAL = {"nih": nih.official_split, "chexpert": chexpert.official_split, "mimic": mimic.official_split}
SPLITS = ("random", "official")  # patient-grouped folds of the whole set, or the source's own test set


def read_official(path: Path, options: SourceOptions) -> tuple[LabelSet, list[str]]:
    """The labels with an `official` column (test or train) from the source's own split; the files it
    comes from. DataPrepError for a kind without one."""
    if options.kind not in OFFICIAL:
        raise DataPrepError(f"{options.kind} sources have no official split; expected split 'random' (kinds with "
                            f"one: {sorted(OFFICIAL)})")
    path = label_table(path, options)
    label_set, files = OFFICIAL[options.kind](path, options)
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
