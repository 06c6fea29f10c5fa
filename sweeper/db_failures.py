"""The first results-DB failure this driver met, kept as the exception itself.

Our results callback's writes and the searcher's (Optuna's studies share the results DB) run inside
Ray Tune's loop, which wraps what they raise in its own errors, sometimes as text only. Each records
its DB failure here as it happens, so that the driver ends the sweep with the store's own message
(what to do, and that nothing committed is lost) instead of recognising it in Ray's text.
"""
from __future__ import annotations

import functools
import sqlite3

from sqlalchemy.exc import DBAPIError

from results.store import StoreError, store_error

_met: list[StoreError] = []


def first() -> StoreError | None:
    """The first DB failure recorded in this process since `clear()`, or None."""
    return _met[0] if _met else None


def clear() -> None:
    _met.clear()


def _db_cause(exc: BaseException | None) -> BaseException | None:
    """The StoreError or database error in `exc`'s chain (Optuna raises its own error from SQLAlchemy's)."""
    for _ in range(20):
        if exc is None or isinstance(exc, (StoreError, DBAPIError, sqlite3.Error)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def watched(url_of):
    """Decorate a method that writes to the results DB (`url_of(self)` names it): a DB failure it
    raises is recorded before it goes on up through Ray."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                cause = _db_cause(exc)
                if cause is not None:
                    _met.append(cause if isinstance(cause, StoreError) else store_error(url_of(self), cause))
                raise
        return wrapper
    return decorate
