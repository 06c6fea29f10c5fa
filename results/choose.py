"""Which trained model of a sweep to apply to new images.

A cell has one selected trial per outer fold (the best on inner validation, `selected_trials`);
the model applied is the one of those with the best inner-validation AUC. Without a cell, the
cell with the best mean inner-validation AUC is taken. The choice looks at validation only, so
the outer test folds stay what the report says they are: unseen.
"""
from __future__ import annotations

from dataclasses import dataclass

from results.load import CELL, latest_sweep, quote
from results.query import QueryError, run_query


def cell_name(backbone: str, recipe: str, variant: str) -> str:
    """BACKBONE/RECIPE, or BACKBONE/RECIPE/VARIANT: how --cell names a cell."""
    return "/".join(part for part in (backbone, recipe, variant) if part)


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


def _selected(url: str, sweep: str):
    """The sweep's selected trials (one per cell and fold) with their checkpoints and cell names."""
    selected = run_query(url, f"""
        SELECT st.backbone, st.recipe, st.variant, st.fold, st.val_auc, t.trial_key, t.checkpoint
        FROM selected_trials st JOIN sweep_trials t ON t.id = st.trial_id JOIN sweeps s ON s.id = st.sweep_id
        WHERE s.name = {quote(sweep)} ORDER BY st.backbone, st.recipe, st.variant""")
    selected["name"] = [cell_name(*parts) for parts in selected[CELL].itertuples(index=False)]
    return selected


def choose_trial(url: str, sweep: str | None = None, cell: str | None = None) -> ChosenTrial:
    """`cell`: BACKBONE/RECIPE or BACKBONE/RECIPE/VARIANT; None: the best cell on validation."""
    sweep = sweep or latest_sweep(url)
    selected = _selected(url, sweep)
    if selected.empty:
        raise QueryError(f"sweep {sweep!r} in {url} has no completed trial to apply yet")
    if cell is None:
        cell = selected.groupby("name")["val_auc"].mean().idxmax()
    part = selected[selected["name"] == cell.strip("/")]
    if part.empty:
        raise QueryError(f"sweep {sweep!r} has no cell {cell!r} with a completed trial; its cells: "
                         f"{sorted(selected['name'].unique())}")
    row = part.sort_values(["val_auc", "fold"], ascending=[False, True]).iloc[0]
    if not row["checkpoint"]:
        raise QueryError(f"sweep {sweep!r}, cell {cell}, fold {row['fold']}: trial {row['trial_key']} has no recorded "
                         f"checkpoint (a DB written before schema version 4); run the sweep again to apply its models")
    return ChosenTrial(sweep, row["backbone"], row["recipe"], row["variant"], int(row["fold"]), row["trial_key"],
                       float(row["val_auc"]), row["checkpoint"])


def cells_with_models(url: str, sweep: str) -> list[str]:
    """The cells of a sweep that have a completed, selected trial with a recorded checkpoint, by name."""
    selected = _selected(url, sweep)
    return list(dict.fromkeys(selected.loc[selected["checkpoint"].notna(), "name"]))
