"""One base class for every error a user can act on, and the one place where a command line turns
it into one `error: ...` line and exit status 2.

Each package keeps its own subclasses (DataPrepError, SpecError, StoreError, ...), whose messages
name the file, row, key or address and what was expected; a CLI catches the base only
(`run_command`), so a new error class cannot be forgotten by one of them and surface as a traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable

USAGE_ERROR = 2  # the exit status of a run stopped by bad input, as argparse's own
INTERRUPTED = 130  # a run stopped by Ctrl-C (128 + SIGINT), as a shell reports it


class CxrSweepError(Exception):
    """Bad input or a state the user must change (a spec key, a data set, a DB, a cluster address)."""


def run_command(call: Callable[[], int], interrupted: Callable[[], str] = lambda: "") -> int:
    """The one error path of every command: `call()`'s exit status; a CxrSweepError prints `error: MESSAGE`
    to stderr and gives 2; Ctrl-C prints `interrupted` (and what `interrupted()` says then, e.g. how to
    resume) and gives 130. Every other exception is a bug and keeps its traceback."""
    try:
        return call()
    except CxrSweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        hint = interrupted()
        print("interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return INTERRUPTED


def exits_on_error(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a CLI's `main(argv) -> int` with `run_command`'s error path (for tools whose parser is not
    built by vocab.cli yet)."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        return run_command(lambda: main(*args, **kwargs))

    return run
