"""`cxr-sweep COMMAND ...`: every tool of the project under one command (docs/cli.md).

Each subcommand is a module's command (its COMMAND, add_arguments and run: vocab/cli.py), the same as
`python -m MODULE`. Only the chosen module is imported, so `cxr-sweep query` or `cxr-sweep report` runs
without torch or Ray, and `cxr-sweep --help` reads each summary from its module's file without importing
any of them. The console script lives here because sweeper is the one package that may import them all.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from vocab import cli
from vocab.errors import USAGE_ERROR, run_command

PROG = "cxr-sweep"
# subcommand -> the module that implements it, in the order of a study's work
COMMANDS = {
    "prepare": "data_prep.build",
    "labels": "data_prep.labels",
    "folds": "data_prep.folds",
    "summary": "data_prep.summary",
    "phantom": "phantom.generate",
    "weights": "sweeper.weights",
    "run": "sweeper.run",
    "status": "results.status",
    "report": "results.report",
    "query": "results.query",
    "predict": "sweeper.predict",
    "evaluate": "sweeper.evaluate",
    "rerun": "sweeper.rerun",
}
ROOT = Path(__file__).resolve().parents[1]  # the packages sit side by side, in a checkout as when installed


def module_file(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def summary(name: str) -> str:
    """A subcommand's one line, from its module's COMMAND (or, for a module without one yet, the first line of
    its docstring), read without importing it."""
    path = module_file(COMMANDS[name])
    command = cli.read_command(path)
    if command is not None:
        return command.summary
    import ast

    return (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n")[0].strip()


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [options]", "",
             "Distributed experiment sweeps for multi-label chest X-ray transfer learning: every tool as one command.",
             "", "commands:", *(f"  {name:<{width}}  {summary(name)}" for name in COMMANDS), "",
             f"`{PROG} COMMAND --help` lists a command's options and examples; `python -m MODULE` is the same command",
             "(docs/cli.md lists the modules and every flag)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "name a command"
        print(f"error: {given}; expected one of {', '.join(COMMANDS)} (see {PROG} --help)", file=sys.stderr)
        return USAGE_ERROR
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name])
    if hasattr(module, "COMMAND"):
        return cli.main(module.COMMAND, module.add_arguments, module.run, rest, prog=f"{PROG} {name}")
    try:  # a tool not on the protocol yet: its own parser, through the one error path all the same
        return run_command(lambda: module.main(rest))
    except SystemExit as exc:
        return cli.exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
