"""Which trained model of a sweep to apply to new images.

A cell has one selected trial per outer fold (the best on inner validation, `selected_trials`);
the model applied is the one of those with the best inner-validation AUC. Without a cell, the
cell with the best mean inner-validation AUC is taken. The choice looks at validation only, so
the outer test folds stay what the report says they are: unseen.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Connection, select

from results.load import CELL, SWEEPS, latest_sweep, read_frame, reading
from results.query import QueryError
from results.schema import SELECTED_TRIALS, Prediction, Trial
from vocab.names import cell_name


@dataclass(frozen=True)
class ChosenTrial:
    sweep: str
    backbone: str
    recipe: str
    variant: str
    fold: int
    trial_key: str
    val_auc: float
    checkpoint: str

    @property
    def cell(self) -> str:
        return cell_name(self.backbone, self.recipe, self.variant)


def selected_trials(conn: Connection, sweep: str) -> pd.DataFrame:
    """The sweep's selected trials (one per cell and fold) with their checkpoints and cell names."""
    st, t, s = SELECTED_TRIALS.alias("st"), Trial.__table__.alias("t"), SWEEPS.alias("s")
    selected = read_frame(conn, select(st.c.backbone, st.c.recipe, st.c.variant, st.c.fold, st.c.val_auc,
                                       t.c.trial_key, t.c.checkpoint)
                          .select_from(st.join(t, t.c.id == st.c.trial_id).join(s, s.c.id == st.c.sweep_id))
                          .where(s.c.name == sweep).order_by(st.c.backbone, st.c.recipe, st.c.variant))
    selected["name"] = [cell_name(*parts) for parts in selected[CELL].itertuples(index=False)]
    return selected


def choose_trial(url: str, sweep: str | None = None, cell: str | None = None) -> ChosenTrial:
    """`cell`: BACKBONE/RECIPE or BACKBONE/RECIPE/VARIANT; None: the best cell on validation."""
    with reading(url) as conn:
        sweep = sweep or latest_sweep(conn, url)
        selected = selected_trials(conn, sweep)
    return choose_from(selected, url, sweep, cell)


def choose_from(selected: pd.DataFrame, url: str, sweep: str, cell: str | None = None) -> ChosenTrial:
    """choose_trial on a sweep's selected_trials, already read."""
    return fold_models(selected, url, sweep, cell, every=False)[0]


def fold_models(selected: pd.DataFrame, url: str, sweep: str, cell: str | None = None,
                every: bool = True) -> list[ChosenTrial]:
    """A cell's selected trials, one per outer fold, best on inner validation first (the model predict
    applies alone; all of them make its fold ensemble). `cell` None: the best cell on validation.
    `every`: each must have a recorded checkpoint (an ensemble); else only the first (one model)."""
    if selected.empty:
        raise QueryError(f"sweep {sweep!r} in {url} has no completed trial to apply yet")
    if cell is None:
        cell = selected.groupby("name")["val_auc"].mean().idxmax()
    part = selected[selected["name"] == cell.strip("/")]
    if part.empty:
        raise QueryError(f"sweep {sweep!r} has no cell {cell!r} with a completed trial; its cells: "
                         f"{sorted(selected['name'].unique())}")
    chosen = []
    for _, row in part.sort_values(["val_auc", "fold"], ascending=[False, True]).iterrows():
        if not row["checkpoint"] and (every or not chosen):
            raise QueryError(f"sweep {sweep!r}, cell {cell}, fold {row['fold']}: trial {row['trial_key']} has no "
                             f"recorded checkpoint (a DB written before schema version 4); run the sweep again to "
                             f"apply its models")
        chosen.append(ChosenTrial(sweep, row["backbone"], row["recipe"], row["variant"], int(row["fold"]),
                                  row["trial_key"], float(row["val_auc"]), row["checkpoint"]))
    return chosen


def cell_models(url: str, sweep: str | None = None, cell: str | None = None, every: bool = True) -> list[ChosenTrial]:
    """fold_models from the DB: a cell's selected trial of every outer fold."""
    with reading(url) as conn:
        sweep = sweep or latest_sweep(conn, url)
        selected = selected_trials(conn, sweep)
    return fold_models(selected, url, sweep, cell, every)


def cells_with_models(selected: pd.DataFrame) -> list[str]:
    """The cells of a sweep's selected trials (selected_trials) that have a recorded checkpoint, by name."""
    return list(dict.fromkeys(selected.loc[selected["checkpoint"].notna(), "name"]))


def validation_predictions(url: str, chosen: ChosenTrial, label_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(truth, probs), images x `label_names`, of the chosen trial's inner-validation predictions: what an
    operating point for it is fitted on. A trial that kept none (a DB from before schema version 8) is a
    QueryError saying so."""
    p, t, s = Prediction.__table__.alias("p"), Trial.__table__.alias("t"), SWEEPS.alias("s")
    with reading(url) as conn:
        rows = read_frame(conn, select(p.c.image_key, p.c.class_name, p.c.prob, p.c.target)
                          .select_from(p.join(t, t.c.id == p.c.trial_id).join(s, s.c.id == t.c.sweep_id))
                          .where(s.c.name == chosen.sweep, t.c.trial_key == chosen.trial_key, p.c.split == "val"))
    if rows.empty:
        raise QueryError(f"trial {chosen.trial_key} of sweep {chosen.sweep!r} kept no inner-validation predictions "
                         f"(a DB written before schema version 8), so no operating point can be fitted for it; "
                         f"run the sweep again, or predict without --threshold")
    wide = lambda column: rows.pivot(index="image_key", columns="class_name", values=column).reindex(  # noqa: E731
        columns=label_names).to_numpy(float)
    return wide("target"), wide("prob")
