"""Read-only SQL against the results DB: `cxr-sweep query "SELECT ..."` (or `python -m results.query`).

SQLite is opened read-only (mode=ro, query_only, an authorizer that denies writes, DDL,
ATTACH and PRAGMA); PostgreSQL runs one statement in a read-only transaction of a session
whose transactions are all read-only. A write or DDL statement is refused and leaves the DB
unchanged. (For a hard guarantee on a shared PostgreSQL server, give readers a role with
SELECT rights only.)
"""
from __future__ import annotations

import sys

import pandas as pd
from sqlalchemy.exc import DBAPIError, ProgrammingError

from results.store import open_engine
from vocab import cli
from vocab.errors import CxrSweepError

COMMAND = cli.Command(
    name="query", module="results.query", summary="Run one read-only SQL statement against the results DB.",
    description="Writes, DDL and a second statement are refused and leave the DB unchanged. The tables and views "
                "(trial_summary, cell_summary, fold_metrics, oof_predictions, ...) are in docs/results.md.",
    examples=("\"SELECT backbone, recipe, metric, mean FROM cell_summary WHERE split = 'test'\"",
              "--csv \"SELECT * FROM trial_summary\" > trials.csv",
              "--db postgresql+psycopg://user@host/cxr --json \"SELECT name, status FROM sweeps\""))


class QueryError(CxrSweepError):
    pass


def _fetch(conn, sql: str) -> tuple[list[str], list] | None:
    """Columns and rows of one statement; None if it returns no rows. On PostgreSQL the statement
    goes through the extended protocol (psycopg's binary mode), which refuses several statements
    in one string: "COMMIT; DELETE ..." would otherwise end the read-only transaction first."""
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql, binary=True)
            return None if cursor.description is None else ([d.name for d in cursor.description], cursor.fetchall())
        finally:
            cursor.close()
    result = conn.exec_driver_sql(sql)  # sqlite3 refuses a second statement itself
    return (list(result.keys()), result.fetchall()) if result.returns_rows else None


def run_query(url: str, sql: str) -> pd.DataFrame:
    engine = open_engine(url, readonly=True)
    try:
        with engine.begin() as conn:
            fetched = _fetch(conn, sql)
            if fetched is None:
                raise QueryError("the statement returned no rows; results.query runs read-only SELECT queries")
            columns, rows = fetched
            return pd.DataFrame(rows, columns=columns)
    except (DBAPIError, ProgrammingError, engine.dialect.dbapi.Error) as exc:
        message = str(getattr(exc, "orig", None) or exc).strip()
        if any(word in message for word in ("readonly", "read-only", "read only", "not authorized",
                                            "multiple commands", "one statement")):
            message += " (results.query is read-only: one statement; writes and DDL are refused)"
        raise QueryError(message) from exc
    finally:
        engine.dispose()


def add_arguments(parser: cli.Parser) -> None:
    parser.add_argument("sql", metavar="SQL", help="one SELECT statement (quote it)")
    cli.add_db(parser)
    cli.add_format(parser)


def run(args) -> int:
    frame = run_query(args.db, args.sql)
    if args.csv:
        frame.to_csv(sys.stdout, index=False)
    elif args.json:
        print(frame.to_json(orient="records", indent=1))
    else:
        print(frame.to_string(index=False) if len(frame) else f"(no rows; columns: {', '.join(frame.columns)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
