"""Everything a report needs about one sweep, read once through read-only queries.

The report works from a copied DB on a laptop (docs/design.md §2: results imports nothing of the
other packages), so all it knows comes from these frames: the planned cells and folds,
each (cell, fold)'s selected trial with its metrics, the pooled out-of-fold test
predictions, learning curves, and every trial's hyperparameters (for the learning-rate study).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from results.query import QueryError, run_query
from results.schema import MACRO

CELL = ["backbone", "recipe", "variant"]


def quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def latest_sweep(url: str) -> str:
    frame = run_query(url, "SELECT name FROM sweeps ORDER BY started_at DESC, id DESC LIMIT 1")
    if frame.empty:
        raise QueryError(f"DB {url} holds no sweep yet; run python -m sweeper.run first")
    return str(frame.iloc[0, 0])


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


@dataclass
class SweepData:
    name: str
    sweep: dict  # the sweeps row
    cells: pd.DataFrame  # planned cells: backbone, recipe, variant, strategy, init, sources, settings
    folds: list[int]  # planned outer folds
    trials: pd.DataFrame  # every trial: cell, fold, status, lr, dropout, val_auc, selected
    metrics: pd.DataFrame  # fold_metrics: cell, fold, trial_id, split, metric, class_name, value
    predictions: pd.DataFrame  # oof_predictions of the selected trials, with the trial's threshold
    curves: pd.DataFrame  # learning curves of every trial: trial_id, epoch, losses, val_auc

    def cell_keys(self) -> list[tuple]:
        return [tuple(row) for row in self.cells[CELL].itertuples(index=False, name=None)]

    def macro(self, split: str, metric: str) -> pd.DataFrame:
        """One value per (cell, fold): the selected trial's macro metric."""
        m = self.metrics
        part = m[(m.split == split) & (m.metric == metric) & (m.class_name == MACRO)]
        return part[[*CELL, "fold", "value"]]

    def pooled(self, key: tuple) -> dict | None:
        """A cell's pooled out-of-fold test predictions as aligned arrays (images x classes), or None."""
        p = self.predictions
        part = p[(p.backbone == key[0]) & (p.recipe == key[1]) & (p.variant == key[2])]
        if part.empty:
            return None
        probs = part.pivot(index="image_key", columns="class_name", values="prob")
        probs = probs.loc[:, probs.notna().all()]  # a class not every fold's model predicted cannot be pooled
        truth = part.pivot(index="image_key", columns="class_name", values="target").reindex_like(probs)
        thresholds = part.pivot(index="image_key", columns="class_name", values="threshold").reindex_like(probs)
        patients = part.drop_duplicates("image_key").set_index("image_key")["patient_key"].reindex(probs.index)
        return {"image_keys": probs.index.to_numpy(), "classes": list(probs.columns),
                "probs": probs.to_numpy(float), "truth": truth.to_numpy(float),
                "thresholds": thresholds.to_numpy(float), "patients": patients.to_numpy()}


def _sweep_row(url: str, name: str) -> dict:
    frame = run_query(url, f"SELECT * FROM sweeps WHERE name = {quote(name)}")
    if frame.empty:
        known = run_query(url, "SELECT name FROM sweeps ORDER BY id")["name"].tolist()
        raise QueryError(f"no sweep named {name!r} in the DB; it holds {known or 'no sweep yet'}")
    return frame.iloc[0].to_dict()


def _cells(url: str, sweep_id: int) -> pd.DataFrame:
    cells = run_query(url, f"SELECT id AS cell_id, backbone, recipe, variant, strategy, init, sources, settings, "
                           f"pretrain_artefact, weights_file, weights_sha256 FROM cells WHERE sweep_id = {int(sweep_id)} "
                           f"ORDER BY backbone, recipe, variant")
    cells["sources"] = [list(_json(s) or []) for s in cells["sources"]]
    cells["settings"] = [dict(_json(s) or {}) for s in cells["settings"]]
    return cells


def _trials(url: str, name: str) -> pd.DataFrame:
    trials = run_query(url, f"""
        SELECT t.backbone, t.recipe, t.variant, t.fold, t.trial_id, t.status, t.params, t.epochs_run,
               m.value AS val_auc, CASE WHEN st.trial_id IS NULL THEN 0 ELSE 1 END AS selected
        FROM trial_summary t
        LEFT JOIN trial_metrics m ON m.trial_id = t.trial_id AND m.split = 'val' AND m.metric = 'auc'
                                 AND m.class_name = '{MACRO}'
        LEFT JOIN selected_trials st ON st.trial_id = t.trial_id
        WHERE t.sweep = {quote(name)} ORDER BY t.trial_id""")
    params = [dict(_json(p) or {}) for p in trials.pop("params")]
    trials["lr"] = [p.get("lr", np.nan) for p in params]
    trials["dropout"] = [p.get("dropout", np.nan) for p in params]
    return trials


def load(url: str, name: str | None = None) -> SweepData:
    name = name or latest_sweep(url)
    sweep = _sweep_row(url, name)
    q = quote(name)
    metrics = run_query(url, f"SELECT backbone, recipe, variant, fold, trial_id, split, metric, class_name, value "
                             f"FROM fold_metrics WHERE sweep = {q}")
    predictions = run_query(url, f"""
        SELECT o.backbone, o.recipe, o.variant, o.fold, o.trial_id, o.image_key, o.patient_key, o.class_name,
               o.prob, o.target, th.value AS threshold
        FROM oof_predictions o LEFT JOIN trial_metrics th ON th.trial_id = o.trial_id AND th.split = 'test'
             AND th.metric = 'threshold' AND th.class_name = o.class_name
        WHERE o.sweep = {q}""")
    curves = run_query(url, f"""
        SELECT c.trial_id, c.epoch, c.train_loss, c.val_loss, c.val_auc, c.lr, c.val_binary_acc, c.val_exact_match,
               c.val_fnr FROM learning_curves c
        JOIN trial_summary t ON t.trial_id = c.trial_id WHERE t.sweep = {q} ORDER BY c.trial_id, c.epoch""")
    for frame in (metrics, predictions, curves):  # NULL (undefined) comes back as None in object columns
        for column in ("value", "prob", "target", "threshold", "train_loss", "val_loss", "val_auc", "lr",
                       "val_binary_acc", "val_exact_match", "val_fnr"):
            if column in frame:
                frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    folds = [int(f) for f in (_json(sweep.get("folds")) or [])]
    trials = _trials(url, name)
    if not folds and not trials.empty:  # a DB written without the plan: the folds seen
        folds = sorted(int(f) for f in trials["fold"].unique())
    return SweepData(name=name, sweep=sweep, cells=_cells(url, int(sweep["id"])), folds=folds, trials=trials,
                     metrics=metrics, predictions=predictions, curves=curves)
