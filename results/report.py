"""Comparison tables from the DB: per backbone, one row per source recipe with test AUC
and AP as mean +/- sd over outer folds (the trial best on inner validation per fold).

`python -m results.report --db URL [--sweep NAME]`
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from results.query import DEFAULT_DB, QueryError, run_query
from results.schema import MACRO
from results.store import StoreError


def latest_sweep(url: str) -> str:
    frame = run_query(url, "SELECT name FROM sweeps ORDER BY started_at DESC, id DESC LIMIT 1")
    if frame.empty:
        raise QueryError(f"DB {url} holds no sweep yet; run python -m sweeper.run first")
    return str(frame.iloc[0, 0])


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


CELL = ["backbone", "recipe", "variant"]


def cell_table(url: str, sweep: str) -> pd.DataFrame:
    """One row per cell (backbone, recipe, variant) that has trials: folds done and mean/sd of test AUC, AP."""
    cells = run_query(url, f"""SELECT DISTINCT t.backbone, t.recipe, t.variant FROM sweep_trials t
                               JOIN sweeps s ON s.id = t.sweep_id WHERE s.name = {_quote(sweep)}
                               ORDER BY t.backbone, t.recipe, t.variant""")
    folds = run_query(url, f"""SELECT backbone, recipe, variant, fold, metric, value FROM fold_metrics
                               WHERE sweep = {_quote(sweep)} AND class_name = '{MACRO}' AND metric IN ('auc', 'ap')""")
    stats = (folds.groupby([*CELL, "metric"])["value"].agg(["mean", "std", "count"])
             .unstack("metric") if not folds.empty else pd.DataFrame())
    rows = []
    for key in cells.itertuples(index=False, name=None):
        row = {**dict(zip(CELL, key)), "folds": 0}
        has = not stats.empty and key in stats.index
        for metric in ("auc", "ap"):
            row[f"{metric}_mean"] = stats.loc[key, ("mean", metric)] if has else float("nan")
            row[f"{metric}_sd"] = stats.loc[key, ("std", metric)] if has else float("nan")
            row["folds"] = max(row["folds"], int(stats.loc[key, ("count", metric)]) if has else 0)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*CELL, "folds", "auc_mean", "auc_sd", "ap_mean", "ap_sd"])


def _mean_sd(mean: float, sd: float) -> str:
    if pd.isna(mean):
        return "missing"
    return f"{mean:.3f} +/- {sd:.3f}" if not pd.isna(sd) else f"{mean:.3f} (1 fold)"


def format_markdown(sweep: str, table: pd.DataFrame) -> str:
    lines = [f"# Sweep {sweep}: test metrics, mean +/- sd over outer folds", ""]
    for backbone, part in table.groupby("backbone", sort=True):
        lines += [f"## {backbone}", "", "| Source recipe | Folds | Test AUC | Test AP |", "|---|---|---|---|"]
        for row in part.itertuples(index=False):
            label = row.recipe + (f" ({row.variant})" if row.variant else "")
            lines.append(f"| {label} | {row.folds} | {_mean_sd(row.auc_mean, row.auc_sd)} | "
                         f"{_mean_sd(row.ap_mean, row.ap_sd)} |")
        lines.append("")
    return "\n".join(lines)


def report(url: str, sweep: str | None = None) -> str:
    sweep = sweep or latest_sweep(url)
    return format_markdown(sweep, cell_table(url, sweep))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m results.report", description="Print the comparison tables.")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy URL (default {DEFAULT_DB})")
    parser.add_argument("--sweep", help="sweep name (default: the latest)")
    args = parser.parse_args(argv)
    try:
        print(report(args.db, args.sweep))
    except (QueryError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
