"""Read-only SQL against the results DB: `python -m results.query --db URL "SELECT ..."`.

SQLite is opened read-only (mode=ro, query_only); PostgreSQL runs in a read-only
transaction. A write or DDL statement is refused and leaves the DB unchanged.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd
from sqlalchemy.exc import DBAPIError, ProgrammingError

from results.store import StoreError, open_engine

DEFAULT_DB = "sqlite:///.cxr-sweep/results.db"


class QueryError(Exception):
    pass


def run_query(url: str, sql: str) -> pd.DataFrame:
    engine = open_engine(url, readonly=True)
    try:
        with engine.begin() as conn:
            result = conn.exec_driver_sql(sql)
            if not result.returns_rows:
                raise QueryError("the statement returned no rows; results.query runs read-only SELECT queries")
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except (DBAPIError, ProgrammingError) as exc:
        message = str(exc.orig) if getattr(exc, "orig", None) else str(exc)
        if any(word in message for word in ("readonly", "read-only", "read only", "not authorized")):
            message += " (results.query is read-only: write and DDL statements are refused)"
        raise QueryError(message) from exc
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m results.query", description="Run one read-only SQL query.")
    parser.add_argument("sql")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy URL (default {DEFAULT_DB})")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        frame = run_query(args.db, args.sql)
    except (QueryError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.csv:
        frame.to_csv(sys.stdout, index=False)
    elif args.json:
        print(frame.to_json(orient="records", indent=1))
    else:
        print(frame.to_string(index=False) if len(frame) else f"(no rows; columns: {', '.join(frame.columns)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
