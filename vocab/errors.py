"""One base class for every error a user can act on, and the one place where a command line turns
it into one `error: ...` line and exit status 2.

Each package keeps its own subclasses (DataPrepError, SpecError, StoreError, ...), whose messages
name the file, row, key or address and what was expected; a CLI catches the base only, so a new
error class cannot be forgotten by one of them and surface as a traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable

USAGE_ERROR = 2  # the exit status of a run stopped by bad input, as argparse's own


class CxrSweepError(Exception):
    """Bad input or a state the user must change (a spec key, a data set, a DB, a cluster address)."""


def exits_on_error(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a CLI's `main(argv) -> int`: a CxrSweepError prints `error: MESSAGE` to stderr and
    returns 2; every other exception is a bug and keeps its traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except CxrSweepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return USAGE_ERROR

    return run
