"""What the DB recorded of one completed trial for repeating it: its FitConfig as it ran, its runtime
record and its stored predictions (sweeper.rerun compares a re-run with them).

A trial is named by its Ray trial key, or as the selected trial of a (cell, outer fold): the one the
report's numbers come from.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlalchemy import select

from results.load import CELL, CELLS, SWEEPS, _json, latest_sweep, read_frame, reading
from results.query import QueryError
from results.schema import SELECTED_TRIALS, Prediction, Trial
from vocab.names import cell_name


@dataclass(frozen=True)
class TrialRecord:
    sweep: str
    trial_key: str
    cell: str
    fold: int
    fit_config: dict  # trainables.config.FitConfig.as_dict() of the trial
    runtime: dict  # trainables.fit `runtime`: threads, precision, versions, data set and pretrained weights
    val_auc: float | None  # what selection read: the kept weights' inner-validation AUC
    predictions: pd.DataFrame  # split, image_key, class_name, prob: the stored test and validation rows


def trial_record(url: str, sweep: str | None = None, trial_key: str | None = None, cell: str | None = None,
                 fold: int | None = None) -> TrialRecord:
    """The trial `trial_key`, or the selected trial of (`cell`, `fold`); QueryError naming what is missing."""
    t, c, s, st = Trial.__table__.alias("t"), CELLS.alias("c"), SWEEPS.alias("s"), SELECTED_TRIALS.alias("st")
    with reading(url) as conn:
        sweep = sweep or latest_sweep(conn, url)
        query = (select(t.c.id, t.c.trial_key, t.c.fold, t.c.status, t.c.fit_config, t.c.runtime,
                        *(c.c[name] for name in CELL), st.c.val_auc)
                 .select_from(t.join(c, c.c.id == t.c.cell_id).join(s, s.c.id == t.c.sweep_id)
                              .outerjoin(st, st.c.trial_id == t.c.id))
                 .where(s.c.name == sweep))
        if trial_key is not None:
            rows = read_frame(conn, query.where(t.c.trial_key == trial_key))
            what = f"trial {trial_key!r}"
        else:
            rows = read_frame(conn, query.where(st.c.fold == fold))
            rows = rows[[cell_name(*parts) == cell.strip("/") for parts in rows[CELL].itertuples(index=False)]]
            what = f"a selected trial of cell {cell!r}, fold {fold}"
        if rows.empty:
            raise QueryError(f"sweep {sweep!r} in {url} has no {what} (see the trial_summary and selected_trials "
                             f"views)")
        row = rows.iloc[0]
        if row["status"] != "COMPLETE":
            raise QueryError(f"trial {row['trial_key']} of sweep {sweep!r} is {row['status']}; only a completed "
                             f"trial has stored predictions to compare a re-run with")
        if row["fit_config"] is None or row["runtime"] is None:
            raise QueryError(f"trial {row['trial_key']} of sweep {sweep!r} has no recorded config and runtime (a DB "
                             f"written before schema version 10); run the sweep again with this version to re-run "
                             f"its trials")
        p = Prediction.__table__
        predictions = read_frame(conn, select(p.c.split, p.c.image_key, p.c.class_name, p.c.prob)
                                 .where(p.c.trial_id == int(row["id"])))
    return TrialRecord(sweep, str(row["trial_key"]), cell_name(*(row[name] for name in CELL)), int(row["fold"]),
                       _json(row["fit_config"]), _json(row["runtime"]),
                       None if pd.isna(row["val_auc"]) else float(row["val_auc"]), predictions)
