"""`cxr-sweep status`: what the results DB holds, read-only: every sweep with its status and its trials
by status, and one sweep's trials by status per cell and outer fold (the latest, or --sweep).

It reads only the DB, as a report does, so it runs anywhere the DB can be read, during a sweep as after it.
"""
from __future__ import annotations

import sys

import pandas as pd
from sqlalchemy import select

from results.load import SWEEPS, latest_sweep, read_frame, reading
from results.query import QueryError
from results.schema import TRIAL_SUMMARY
from vocab import cli
from vocab.names import cell_name

COMMAND = cli.Command(
    name="status", module="results.status",
    summary="List the sweeps in the results DB and their trials by status per cell and fold.",
    description="Read-only. COMPLETE trials trained to their end; PRUNED ones were stopped by ASHA; ERROR ones "
                "failed (trial_summary.error says why); RUNNING ones are in progress, or were when a driver stopped.",
    examples=("", "--sweep demo-20260101-120000", "--home /efs/cxr-sweep"))
STATUSES = ("COMPLETE", "PRUNED", "ERROR", "RUNNING")  # first in this order; any other after them


def _by_status(trials: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    """Trials counted per `index` and status, with every usual status as a column and a total."""
    counts = trials.groupby([*index, "status"]).size().unstack("status", fill_value=0)
    columns = [*STATUSES, *sorted(set(counts.columns) - set(STATUSES))]
    counts = counts.reindex(columns=columns, fill_value=0)
    counts.insert(0, "trials", counts.sum(axis=1))
    return counts


def status_tables(url: str, sweep: str | None) -> tuple[pd.DataFrame, str, pd.DataFrame]:
    """(every sweep with its trials by status, the sweep shown in detail, its trials by cell, fold and status);
    QueryError for a DB without sweeps or an unknown --sweep."""
    with reading(url) as conn:
        sweeps = read_frame(conn, select(SWEEPS.c.name, SWEEPS.c.spec_name, SWEEPS.c.status, SWEEPS.c.started_at,
                                         SWEEPS.c.finished_at).order_by(SWEEPS.c.started_at, SWEEPS.c.id))
        sweep = sweep or latest_sweep(conn, url)
        trials = read_frame(conn, select(TRIAL_SUMMARY.c.sweep, TRIAL_SUMMARY.c.backbone, TRIAL_SUMMARY.c.recipe,
                                         TRIAL_SUMMARY.c.variant, TRIAL_SUMMARY.c.fold, TRIAL_SUMMARY.c.status))
    if sweep not in set(sweeps["name"]):
        raise QueryError(f"no sweep named {sweep!r} in {url}; it holds {list(sweeps['name'])}")
    totals = _by_status(trials, ["sweep"]) if len(trials) else pd.DataFrame(columns=["trials", *STATUSES])
    for column in ("started_at", "finished_at"):  # to the minute: a table that fits a terminal
        sweeps[column] = pd.to_datetime(sweeps[column]).dt.strftime("%Y-%m-%d %H:%M").fillna("")
    overview = sweeps.rename(columns={"spec_name": "spec", "started_at": "started", "finished_at": "finished"})
    overview = overview.set_index("name").join(totals).fillna(0)
    mine = trials[trials["sweep"] == sweep].assign(
        cell=lambda t: [cell_name(b, r, v or "") for b, r, v in zip(t.backbone, t.recipe, t.variant)])
    detail = _by_status(mine, ["cell", "fold"]) if len(mine) else pd.DataFrame()
    return overview.reset_index(), sweep, detail


def add_arguments(parser: cli.Parser) -> None:
    cli.add_db(parser)
    cli.add_sweep(parser, help="the sweep shown per cell and fold (default: the latest)")


def run(args) -> int:
    overview, sweep, detail = status_tables(args.db, args.sweep)
    for column in ("trials", *STATUSES):
        overview[column] = overview[column].astype(int)
    print(f"sweeps in {args.db}:")
    print(overview.to_string(index=False))
    print(f"\nsweep {sweep}: trials by status per cell and outer fold")
    print(detail.reset_index().to_string(index=False) if len(detail) else "(no trial yet)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
