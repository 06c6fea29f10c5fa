"""The parts every command line of the project shares (docs/cli.md): one parser factory, one flag
vocabulary, renamed flags kept as deprecated aliases, flags generated from a pydantic model, and the one
error path.

A tool module exposes a small protocol, so that `cxr-sweep NAME` (sweeper/cli.py) and its own
`python -m MODULE` are the same command:

    COMMAND = Command(name="query", module="results.query", summary="...", examples=("...",))
    def add_arguments(parser: Parser) -> None: ...   # flags, from the adders below where one fits
    def run(args) -> int: ...                         # the work; raise a CxrSweepError for bad input
    def main(argv=None) -> int:                        # the `python -m` alias
        return cli.main(COMMAND, add_arguments, run, argv)

COMMAND must be written with literal keyword arguments: `cxr-sweep --help` reads it from the file
without importing the module (a module may import torch). This module imports the standard library
only; pydantic is imported by the caller that hands a model in.
"""
from __future__ import annotations

import argparse
import ast
import re
import string
import sys
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

from vocab.errors import USAGE_ERROR, CxrSweepError, run_command

DEFAULT_HOME = Path(".cxr-sweep")
HELP_WIDTH = 100
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class UsageError(CxrSweepError):
    """A flag's value that the parser cannot check alone (a NAME=VALUE pair, a value given twice)."""


@dataclass(frozen=True)
class Command:
    """What `--help` and `cxr-sweep --help` say about a command."""

    name: str  # cxr-sweep NAME
    module: str  # python -m MODULE, the same command
    summary: str  # one line: `cxr-sweep --help` lists it
    examples: tuple[str, ...] = ()  # each one after the program: `cxr-sweep NAME EXAMPLE`
    description: str = ""  # paragraphs after the summary in --help
    interrupted: str = ""  # said on Ctrl-C, formatted with `prog` and the flags' values then (how to resume)


def note(text: str) -> None:
    """A line for the user on stderr that is not an error (a renamed flag, a default chosen)."""
    print(f"note: {text}", file=sys.stderr)


class Parser(argparse.ArgumentParser):
    """argparse with the project's conventions: no prefix matching (`--fold` is not `--folds`), an
    `examples:` epilog, a usage error as one `error: ...` line and exit 2, renamed flags still accepted
    (with a note), and checks that run after parsing (`check`)."""

    def __init__(self, command: Command, prog: str):
        paragraphs = [command.summary, *command.description.split("\n\n")] if command.description else [command.summary]
        super().__init__(prog=prog, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="\n\n".join(textwrap.fill(" ".join(p.split()), HELP_WIDTH) for p in paragraphs))
        self.command = command
        self.renamed: dict[str, tuple[str, str | None]] = {}
        self.checks: list[Callable[[argparse.Namespace], None]] = []

    def rename(self, old: str, new: str, value: str | None = None) -> None:
        """Accept the old flag `old` as `new`; with `value`, its value becomes `value.format(VALUE)` (e.g.
        `--data-dir DIR` as `--data target=DIR`)."""
        self.renamed[old] = (new, value)

    def check(self, function: Callable[[argparse.Namespace], None]) -> None:
        """Run `function(args)` after parsing: it may fill in or convert values; a CxrSweepError it raises is
        a usage error."""
        self.checks.append(function)

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        args, extra = super().parse_known_args(self._new_names(sys.argv[1:] if args is None else list(args)), namespace)
        if extra:  # an unknown flag is the mistake to report, not what a check makes of the rest
            return args, extra
        for function in self.checks:
            try:
                function(args)
            except CxrSweepError as exc:
                self.error(str(exc))
        return args, extra

    def _new_names(self, argv: list[str]) -> list[str]:
        out, tokens = [], iter(argv)
        for token in tokens:
            if token == "--":
                return out + [token, *tokens]
            old, eq, value = token.partition("=")
            if old not in self.renamed:
                out.append(token)
                continue
            new, template = self.renamed[old]
            note(f"{old} is now {new}" + (f" {template.format(old.strip('-').upper())}" if template else ""))
            if template is None:
                out.append(new + eq + value)
            else:
                value = value if eq else next(tokens, None)
                out += [new] if value is None else [new, template.format(value)]
        return out

    def format_help(self) -> str:
        lines = []
        if self.command.examples:
            lines += ["examples:", *(f"  {self.prog} {example}".rstrip() for example in self.command.examples)]
        if self.renamed:
            lines += ["", "renamed flags, still accepted:"] if lines else ["renamed flags, still accepted:"]
            lines += [f"  {old} -> {new}" + (f" {value.format('VALUE')}" if value else "")
                      for old, (new, value) in self.renamed.items()]
        self.epilog = "\n".join(lines) or None
        return super().format_help()


def build_parser(command: Command, add_arguments: Callable[[Parser], None], prog: str | None = None) -> Parser:
    parser = Parser(command, prog or f"python -m {command.module}")
    add_arguments(parser)
    return parser


def exit_status(exc: SystemExit) -> int:
    """The exit status a SystemExit stands for (argparse's --help: 0; its usage errors: 2)."""
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE_ERROR)


def main(command: Command, add_arguments: Callable[[Parser], None], run: Callable[[argparse.Namespace], int],
         argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` and run the command through the one error path; the exit status (a usage error, already
    printed as one line: 2; --help: 0)."""
    parser = build_parser(command, add_arguments, prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exit_status(exc)
    return run_command(lambda: run(args), lambda: _hint(command.interrupted, parser.prog, args))


def _hint(template: str, prog: str, args: argparse.Namespace) -> str:
    """`template` formatted with the flags' values at the time (a command may fill one in as it runs, e.g. the
    sweep's name); nothing while a value it names is still unknown."""
    values = {"prog": prog, **vars(args)}
    named = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return "" if any(values.get(name) is None for name in named) else template.format(**values)


def read_command(path: Path) -> Command | None:
    """The `COMMAND = Command(...)` of a module's file, read without importing the module; None if it has
    none."""
    for node in ast.parse(Path(path).read_text()).body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["COMMAND"]
                and isinstance(node.value, ast.Call)):
            given = dict(zip((f.name for f in fields(Command)), map(ast.literal_eval, node.value.args)))
            given.update({k.arg: ast.literal_eval(k.value) for k in node.value.keywords})
            return Command(**given)
    return None


# -- value types ------------------------------------------------------------------------------------------


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `low`."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            expected = "a positive number" if low == 1 else f"a whole number of at least {low}"
            raise argparse.ArgumentTypeError(f"{text}: expected {expected}")
        return value

    whole.__name__ = f"whole number >= {low}"  # what argparse names in its own messages
    return whole


def device(text: str) -> str:
    """An argparse type: auto, cpu, cuda or cuda:N."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, cpu, cuda or cuda:N")
    return text


def pairs(values: Iterable[str] | None, flag: str, metavar: str = "NAME=PATH", example: str = "") -> dict[str, str]:
    """{NAME: VALUE} from repeated `flag NAME=VALUE`; UsageError for a malformed pair or a name given twice."""
    found: dict[str, str] = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UsageError(f"{flag} {value!r}: expected {metavar}" + (f", e.g. {flag} {example}" if example else ""))
        if name in found:
            raise UsageError(f"{flag}: {name!r} given twice")
        found[name] = rest
    return found


# -- the flag vocabulary (docs/cli.md): one name, one meaning, one default -----------------------------------


def default_db(home: Path | str) -> str:
    """The results DB of a workspace: sqlite:///HOME/results.db, with HOME made absolute (a sweep's workers and
    a later report may start elsewhere)."""
    return f"sqlite:///{Path(home).resolve() / 'results.db'}"


def add_home(parser: Parser) -> None:
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, metavar="DIR",
                        help=f"the workspace: data sets, Ray results, reports and the default DB (default: {DEFAULT_HOME})")


def add_db(parser: Parser) -> None:
    """--home and --db; an unset --db becomes HOME's DB after parsing, so every command finds the same one."""
    add_home(parser)
    parser.add_argument("--db", default=None, metavar="URL",
                        help="SQLAlchemy URL of the results DB (default: sqlite:///HOME/results.db)")

    def resolve(args: argparse.Namespace) -> None:
        args.db = args.db or default_db(args.home)

    parser.check(resolve)


def add_sweep(parser: Parser, help: str = "a sweep in the DB (default: the latest)") -> None:
    parser.add_argument("--sweep", default=None, metavar="NAME", help=help)


def add_spec(parser: Parser) -> None:
    parser.add_argument("--spec", default="demo", metavar="NAME|PATH",
                        help="built-in spec name (demo, tiny, paper, zhou2020) or path of a TOML file (default: demo)")


def add_out(parser: Parser, help: str, required: bool = False) -> None:
    """--out: where the command writes; `help` says whether it is a folder or a file."""
    parser.add_argument("--out", type=Path, default=None, required=required, metavar="PATH", help=help)


def add_seed(parser: Parser, help: str) -> None:
    parser.add_argument("--seed", type=int, default=0, metavar="N", help=f"{help} (default 0)")


def add_folds(parser: Parser) -> None:
    parser.add_argument("--folds", type=at_least(2), default=5, metavar="N",
                        help="outer folds, patient-grouped (default 5)")


def add_fold(parser: Parser, help: str) -> None:
    parser.add_argument("--fold", type=at_least(0), default=None, metavar="N", help=help)


def add_images(parser: Parser, help: str, required: bool = False) -> None:
    parser.add_argument("--images", type=Path, default=None, required=required, metavar="DIR", help=help)


def add_labels(parser: Parser, help: str, required: bool = False, positional: str = "") -> None:
    """--labels PATH; with `positional` (what it is, e.g. "label table"), the older form that gave it as a
    positional argument is still read, as --labels with a note (--labels is then required all the same)."""
    parser.add_argument("--labels", type=Path, default=None, required=required and not positional, metavar="PATH",
                        help=help)
    if not positional:
        return
    parser.add_argument("older_labels", nargs="?", type=Path, default=None, metavar="LABELS",
                        help="the older form of --labels")

    def resolve(args: argparse.Namespace) -> None:
        if (args.older_labels is None) == (args.labels is None):
            raise UsageError(f"name the {positional} once: --labels PATH")
        if args.older_labels is not None:
            note(f"the {positional} as a positional argument is now --labels PATH")
            args.labels, args.older_labels = args.older_labels, None

    parser.check(resolve)


def add_workers(parser: Parser, default: str) -> None:
    parser.add_argument("--workers", type=at_least(0), default=None, metavar="N",
                        help=f"decoding processes; 0 or 1 decodes in this process (default: {default})")


def add_device(parser: Parser) -> None:
    parser.add_argument("--device", type=device, default="auto", metavar="auto|cpu|cuda|cuda:N",
                        help="where the models run (default auto: a GPU if there is one)")


def add_bootstrap(parser: Parser, help: str = "bootstrap resamples for intervals and p-values") -> None:
    parser.add_argument("--bootstrap", type=at_least(0), default=1000, metavar="N", help=f"{help} (default 1000; 0: none)")


def checked(check: Callable[[str], object], name: str) -> Callable[[str], object]:
    """An argparse type from a function that raises a CxrSweepError for a bad value (its message is the error)."""

    def convert(text: str):
        try:
            return check(text)
        except CxrSweepError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def add_threshold(parser: Parser, rule: Callable[[str], str], help: str, repeat: bool = False) -> None:
    """--threshold RULE: prevalence, youden or sensitivity:S, checked by `rule` (results.operating_points)."""
    parser.add_argument("--threshold", type=checked(rule, "threshold rule"), default=None, metavar="RULE", action="append" if repeat else "store",
                        dest="thresholds" if repeat else "threshold", help=help)


def add_cell(parser: Parser, help: str, repeat: bool = False) -> None:
    parser.add_argument("--cell", default=None, metavar="BACKBONE/RECIPE[/VARIANT]", help=help,
                        action="append" if repeat else "store")


def add_tta(parser: Parser, choices: tuple[str, ...]) -> None:
    parser.add_argument("--tta", choices=choices, default="none",
                        help="test-time augmentation: hflip averages each image with its mirror image (default none)")


def add_data(parser: Parser, help: str, names: tuple[str, ...] = ()) -> None:
    """--data NAME=LOCATION, repeatable; a dict {NAME: LOCATION} after parsing (only `names`, if given)."""
    parser.add_argument("--data", action="append", default=[], metavar="NAME=LOCATION", help=help)

    def to_dict(args: argparse.Namespace) -> None:
        args.data = pairs(args.data, "--data", "NAME=LOCATION", f"{(names or ('chexpert',))[0]}=/data/prepared/DIR")
        stray = sorted(set(args.data) - set(names)) if names else []
        if stray:
            raise UsageError(f"--data {stray[0]}=...: this command takes --data for {', '.join(names)} only")

    parser.check(to_dict)


def add_format(parser: Parser, csv: bool = True) -> None:
    """--json (and --csv): the output as JSON (or CSV) instead of a table for reading."""
    group = parser.add_mutually_exclusive_group() if csv else parser
    if csv:
        group.add_argument("--csv", action="store_true", help="the output as CSV")
    group.add_argument("--json", action="store_true", help="the output as JSON")


# -- flags from a pydantic model -------------------------------------------------------------------------------


def flag_name(field: str) -> str:
    return f"--{field.replace('_', '-')}"


def _plain(annotation):
    """The annotation without None (an optional field's flag is simply left out)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return annotation


def _argument(info) -> dict:
    """argparse keywords for one model field: its type, choices, count and flag kind."""
    annotation = _plain(info.annotation)
    origin, inner = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction if info.default is True else "store_true"}
    if origin is typing.Literal:  # text choices need no type; 8|16 are read as numbers
        kinds = {type(v) for v in inner}
        return {"choices": inner, "type": None if kinds == {str} or len(kinds) > 1 else kinds.pop()}
    if origin is tuple and inner and Ellipsis not in inner:
        return {"nargs": len(inner), "type": inner[0] if len(set(inner)) == 1 else str}
    if origin in (list, tuple, set):
        return {"nargs": "+", "type": inner[0] if inner and isinstance(inner[0], type) else str}
    return {"type": annotation if annotation in (int, float, str, Path) else str}  # else: pydantic converts text


def _default_text(info) -> str:
    from pydantic_core import PydanticUndefined

    if info.default is not PydanticUndefined:
        return str(info.default)
    return "required" if info.default_factory is None else str(info.default_factory())


def add_model_flags(parser: argparse.ArgumentParser, models, skip: Iterable[str] = ()) -> None:
    """One --flag per field of a pydantic model, or of several models by owner ({kind: Model}: a field that
    several share is one flag), with type, choices and help from the field (and its metavar from the field's
    json_schema_extra={"metavar": ...}, where it has one). Every flag defaults to None,
    so that a flag left out leaves the model's own default (`model_values`)."""
    owned = models if isinstance(models, Mapping) else {"": models}
    names = dict.fromkeys(n for m in owned.values() for n in m.model_fields if n not in set(skip))
    for name in names:
        owners = [o for o, m in owned.items() if name in m.model_fields]
        info = owned[owners[0]].model_fields[name]
        text = f"{info.description or name} (default {_default_text(info)})".replace("%", "%%")
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        shown = {"metavar": extra["metavar"]} if "metavar" in extra else {}  # Field(..., json_schema_extra=...)
        parser.add_argument(flag_name(name), dest=name, default=None, help=f"{', '.join(owners)}: {text}"
                            if owners != [""] else text, **_argument(info), **shown)


def model_values(args: argparse.Namespace, models, owner: str | None = None, skip: Iterable[str] = ()) -> dict:
    """The model flags given on the command line (not None), by field. With several models and `owner`, a
    flag of another owner's model is a UsageError naming it and the owner's own flags."""
    owned = models if isinstance(models, Mapping) else {"": models}
    every = {n for m in owned.values() for n in m.model_fields} - set(skip)
    given = {name: value for name, value in vars(args).items() if name in every and value is not None}
    if owner is not None:
        mine = [n for n in owned[owner].model_fields if n not in set(skip)]
        foreign = [name for name in given if name not in mine]
        if foreign:
            raise UsageError(f"{flag_name(foreign[0])} is not an option of {owner}; its options: "
                             + ", ".join(map(flag_name, mine)))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}


def model_from_flags(model, args: argparse.Namespace, skip: Iterable[str] = (), **fixed):
    """The model from the flags given (and `fixed` values); a value the model refuses is a UsageError naming
    the flag and what was expected."""
    from pydantic import ValidationError

    try:
        return model(**{**model_values(args, model, skip=skip), **fixed})
    except ValidationError as exc:
        raise UsageError("; ".join(f"{flag_name(str(e['loc'][0])) if e['loc'] else model.__name__}: "
                                   f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())) from None
