"""Everything a report needs about one sweep, read once: one read-only engine per load, SQLAlchemy
Core selects on results.schema's tables and views, names as bound parameters.

The report works from a copied DB on a laptop (docs/design.md §2: results imports nothing of the
other packages), so all it knows comes from these frames: the planned cells and folds,
each (cell, fold)'s selected trial with its metrics, the pooled out-of-fold test
predictions, learning curves, and every trial's hyperparameters (for the learning-rate study).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Select, case, literal_column, select
from sqlalchemy.exc import DBAPIError

from results.query import QueryError
from results.schema import (EXTERNAL_RESULTS, FOLD_METRICS, MACRO, OOF_PREDICTIONS, SELECTED_TRIALS, TRIAL_SUMMARY,
                            VAL_PREDICTIONS, Cell, CurveMetric, ExternalMetric, ExternalSet, ImageGroup, LearningCurve,
                            SCHEMA_VERSION, SchemaMeta, Sweep, TrialMetric)
from results.store import ResultsStore, open_engine
from vocab.metrics import EPOCH_METRICS
from vocab.names import metric_key

CELL = ["backbone", "recipe", "variant"]
SWEEPS, CELLS, CURVES, METRICS = Sweep.__table__, Cell.__table__, LearningCurve.__table__, TrialMetric.__table__
CURVE_ROWS = CurveMetric.__table__
EXTERNAL_SETS, EXTERNAL_METRICS, IMAGE_GROUPS = ExternalSet.__table__, ExternalMetric.__table__, ImageGroup.__table__


@contextmanager
def reading(url: str) -> Iterator[Connection]:
    """One read-only engine and one read-only transaction for all of a load's selects; the engine is
    disposed after. A DB error becomes a QueryError, as it does in results.query. A DB of an older schema
    is first brought up to date in place, as a sweep opening it would (`ResultsStore`'s migrations, every
    row kept), and read after; nothing is written to a DB already of this version."""
    engine = open_engine(url, readonly=True)
    try:
        with engine.begin() as conn:
            found = older_schema(conn, url)
            if found is None:
                yield conn
                return
        engine.dispose()
        print(f"note: {url} has schema version {found}; migrating it in place to {SCHEMA_VERSION} (every row kept)",
              file=sys.stderr)
        ResultsStore(url).engine.dispose()  # a newer or unmigratable DB is the store's error
        engine = open_engine(url, readonly=True)
        with engine.begin() as conn:
            yield conn
    except DBAPIError as exc:
        raise QueryError(str(exc.orig).strip()) from exc
    finally:
        engine.dispose()


def older_schema(conn: Connection, url: str) -> int | None:
    """The schema version of a results DB older than this code's, else None (this version, or a newer one:
    the store's error); a DB that is no results DB at all is a QueryError saying so."""
    try:
        found = conn.scalar(select(SchemaMeta.value).where(SchemaMeta.key == "schema_version"))
    except DBAPIError as exc:
        raise QueryError(f"{url} holds no cxr-sweep results ({str(exc.orig).strip()}); "
                         f"pass the DB a sweep wrote (--db)") from exc
    return int(found) if found is not None and int(found) < SCHEMA_VERSION else None


def read_frame(conn: Connection, query: Select) -> pd.DataFrame:
    """The query's rows as a frame. Given as plain tuples: pandas probes each SQLAlchemy Row's attributes as a
    named tuple's, and a miss costs an exception (a third of the time to load 1 M prediction rows)."""
    result = conn.execute(query)
    columns = list(result.keys())
    return pd.DataFrame.from_records([tuple(row) for row in result], columns=columns)


def latest_sweep(conn: Connection, url: str) -> str:
    row = conn.execute(select(SWEEPS.c.name).order_by(SWEEPS.c.started_at.desc(), SWEEPS.c.id.desc()).limit(1)).first()
    if row is None:
        raise QueryError(f"DB {url} holds no sweep yet; run python -m sweeper.run first")
    return str(row[0])


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
    validation: pd.DataFrame  # val_predictions: the selected trials' inner-validation predictions
    external: pd.DataFrame  # external_results of the fold ensembles (per TTA) on external sets
    external_metrics: pd.DataFrame  # the fold models' AUC and AP there (external_metrics)
    external_sets: pd.DataFrame  # external_sets: name, dataset, images, labels (mapping), left_out
    groups: pd.DataFrame  # image_groups: each target image's sex, age band and view ("" unknown)
    curves: pd.DataFrame  # learning curves of every trial: trial_id, epoch, train_loss, lr, val_<m> per curve metric

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
        first = part.drop_duplicates("image_key").set_index("image_key").reindex(probs.index)
        return {"image_keys": probs.index.to_numpy(), "classes": list(probs.columns),
                "probs": probs.to_numpy(float), "truth": truth.to_numpy(float),
                "thresholds": thresholds.to_numpy(float), "patients": first["patient_key"].to_numpy(),
                "folds": first["fold"].to_numpy(int)}

    def external_of(self, key: tuple, external: str) -> dict[tuple, dict]:
        """{("ensemble", None, tta): truth, probs (images x classes), patients, classes} of a cell's fold
        ensemble on an external set, per test-time augmentation."""
        e = self.external
        part = e[(e.backbone == key[0]) & (e.recipe == key[1]) & (e.variant == key[2]) & (e.external == external)]
        out = {}
        for (model, fold, tta), rows in part.groupby(["model", part["fold"].fillna(-1), "tta"], sort=True):
            probs = rows.pivot(index="image_key", columns="class_name", values="prob")
            truth = rows.pivot(index="image_key", columns="class_name", values="target").reindex_like(probs)
            patients = rows.drop_duplicates("image_key").set_index("image_key")["patient_key"].reindex(probs.index)
            out[(model, None if fold == -1 else int(fold), tta)] = {
                "classes": list(probs.columns), "probs": probs.to_numpy(float), "truth": truth.to_numpy(float),
                "patients": patients.to_numpy()}
        return out

    def external_folds(self, key: tuple, external: str) -> pd.DataFrame:
        """A cell's fold models' metrics on an external set: fold, tta, metric, class_name, value."""
        m = self.external_metrics
        return m[(m.backbone == key[0]) & (m.recipe == key[1]) & (m.variant == key[2]) & (m.external == external)]

    def validation_of(self, key: tuple) -> dict[int, dict]:
        """{fold: that fold's selected trial's inner-validation predictions (images x classes)}; empty for a
        cell whose trials kept none (a DB from before schema 8)."""
        v = self.validation
        part = v[(v.backbone == key[0]) & (v.recipe == key[1]) & (v.variant == key[2])]
        out = {}
        for fold, rows in part.groupby("fold"):
            probs = rows.pivot(index="image_key", columns="class_name", values="prob")
            truth = rows.pivot(index="image_key", columns="class_name", values="target").reindex_like(probs)
            out[int(fold)] = {"classes": list(probs.columns), "probs": probs.to_numpy(float),
                              "truth": truth.to_numpy(float)}
        return out


def _sweep_row(conn: Connection, name: str) -> dict:
    # SELECT *: the row as the DB holds it, untyped (SQLite's DATETIME stays its stored text)
    frame = read_frame(conn, select(literal_column("*")).select_from(SWEEPS).where(SWEEPS.c.name == name))
    if frame.empty:
        known = list(conn.scalars(select(SWEEPS.c.name).order_by(SWEEPS.c.id)))
        raise QueryError(f"no sweep named {name!r} in the DB; it holds {known or 'no sweep yet'}")
    return frame.iloc[0].to_dict()


def _cells(conn: Connection, sweep_id: int) -> pd.DataFrame:
    c = CELLS.c
    cells = read_frame(conn, select(c.id.label("cell_id"), c.backbone, c.recipe, c.variant, c.strategy, c.init,
                                    c.sources, c.settings, c.pretrain_artefact, c.weights_file, c.weights_sha256)
                       .where(c.sweep_id == sweep_id).order_by(c.backbone, c.recipe, c.variant))
    cells["sources"] = [list(_json(s) or []) for s in cells["sources"]]
    cells["settings"] = [dict(_json(s) or {}) for s in cells["settings"]]
    return cells


def _trials(conn: Connection, name: str) -> pd.DataFrame:
    t, m, st = TRIAL_SUMMARY.alias("t"), METRICS.alias("m"), SELECTED_TRIALS.alias("st")
    trials = read_frame(conn, select(
        t.c.backbone, t.c.recipe, t.c.variant, t.c.fold, t.c.trial_id, t.c.status, t.c.params, t.c.epochs_run,
        m.c.value.label("val_auc"), case((st.c.trial_id.is_(None), 0), else_=1).label("selected"))
        .select_from(t.outerjoin(m, (m.c.trial_id == t.c.trial_id) & (m.c.split == "val") & (m.c.metric == "auc")
                                 & (m.c.class_name == MACRO))
                     .outerjoin(st, st.c.trial_id == t.c.trial_id))
        .where(t.c.sweep == name).order_by(t.c.trial_id))
    params = [dict(_json(p) or {}) for p in trials.pop("params")]
    trials["lr"] = [p.get("lr", np.nan) for p in params]
    trials["dropout"] = [p.get("dropout", np.nan) for p in params]
    return trials


def _metrics(conn: Connection, name: str) -> pd.DataFrame:
    f = FOLD_METRICS.c
    return read_frame(conn, select(f.backbone, f.recipe, f.variant, f.fold, f.trial_id, f.split, f.metric,
                                   f.class_name, f.value).where(f.sweep == name))


def _predictions(conn: Connection, name: str) -> pd.DataFrame:
    o, th = OOF_PREDICTIONS.alias("o"), METRICS.alias("th")
    return read_frame(conn, select(
        o.c.backbone, o.c.recipe, o.c.variant, o.c.fold, o.c.trial_id, o.c.image_key, o.c.patient_key,
        o.c.class_name, o.c.prob, o.c.target, th.c.value.label("threshold"))
        .select_from(o.outerjoin(th, (th.c.trial_id == o.c.trial_id) & (th.c.split == "test")
                                 & (th.c.metric == "threshold") & (th.c.class_name == o.c.class_name)))
        .where(o.c.sweep == name))


def _validation(conn: Connection, name: str) -> pd.DataFrame:
    v = VAL_PREDICTIONS.c
    return read_frame(conn, select(v.backbone, v.recipe, v.variant, v.fold, v.image_key, v.class_name, v.prob,
                                   v.target).where(v.sweep == name))


def _external(conn: Connection, name: str, sweep_id: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The fold ensembles' predictions on the sweep's external sets, the fold models' metrics there (not their
    predictions: five times as many rows, and a report needs only these), and the sets."""
    e, x, m, c = EXTERNAL_RESULTS.c, EXTERNAL_SETS.c, EXTERNAL_METRICS.c, CELLS.c
    predictions = read_frame(conn, select(e.backbone, e.recipe, e.variant, e.external, e.model, e.fold, e.tta,
                                          e.image_key, e.patient_key, e.class_name, e.prob, e.target)
                             .where(e.sweep == name, e.model == "ensemble"))
    metrics = read_frame(conn, select(c.backbone, c.recipe, c.variant, x.name.label("external"), m.fold, m.tta,
                                      m.metric, m.class_name, m.value)
                         .select_from(EXTERNAL_METRICS.join(CELLS, c.id == m.cell_id)
                                      .join(EXTERNAL_SETS, x.id == m.external_id))
                         .where(x.sweep_id == sweep_id))
    sets = read_frame(conn, select(x.name, x.dataset, x.images, x.labels, x.left_out).where(x.sweep_id == sweep_id)
                      .order_by(x.name))
    sets["labels"] = [dict(_json(v) or {}) for v in sets["labels"]]
    sets["left_out"] = [list(_json(v) or []) for v in sets["left_out"]]
    return predictions, metrics, sets


def _curves(conn: Connection, name: str) -> pd.DataFrame:
    """Every trial's learning curves: learning_curves' columns and, as a `val_<metric>` column each, every other
    curve metric of the registry (curve_metrics' rows; NaN where an epoch has none)."""
    c, t, r = CURVES.alias("c"), TRIAL_SUMMARY.alias("t"), CURVE_ROWS.alias("r")
    fixed = [column for column in c.c if column.name not in ("id", "seconds")]
    curves = read_frame(conn, select(*fixed).select_from(c.join(t, t.c.trial_id == c.c.trial_id))
                        .where(t.c.sweep == name).order_by(c.c.trial_id, c.c.epoch))
    rows = read_frame(conn, select(r.c.trial_id, r.c.epoch, r.c.metric, r.c.value)
                      .select_from(r.join(t, t.c.trial_id == r.c.trial_id)).where(t.c.sweep == name))
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce").astype(float)
    extra = [metric_key("val", m) for m in EPOCH_METRICS if metric_key("val", m) not in curves]
    wide = rows.assign(metric=[metric_key("val", m) for m in rows["metric"]]).pivot(
        index=["trial_id", "epoch"], columns="metric", values="value")
    return curves.join(wide.reindex(columns=extra), on=["trial_id", "epoch"])


def load(url: str, name: str | None = None) -> SweepData:
    with reading(url) as conn:
        name = name or latest_sweep(conn, url)
        sweep = _sweep_row(conn, name)
        metrics, predictions, curves = _metrics(conn, name), _predictions(conn, name), _curves(conn, name)
        trials, cells, validation = _trials(conn, name), _cells(conn, int(sweep["id"])), _validation(conn, name)
        external, external_metrics, external_sets = _external(conn, name, int(sweep["id"]))
        g = IMAGE_GROUPS.c
        groups = read_frame(conn, select(g.image_key, g.sex, g.age_band, g.view).where(g.sweep_id == int(sweep["id"])))
    # NULL (undefined) comes back as None in object columns
    for frame in (metrics, predictions, curves, validation, external, external_metrics):
        for column in ("value", "prob", "target", "threshold", "train_loss", "lr",
                       *(metric_key("val", m) for m in EPOCH_METRICS)):
            if column in frame:
                frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    folds = [int(f) for f in (_json(sweep.get("folds")) or [])]
    if not folds and not trials.empty:  # a DB written without the plan: the folds seen
        folds = sorted(int(f) for f in trials["fold"].unique())
    return SweepData(name=name, sweep=sweep, cells=cells, folds=folds, trials=trials,
                     metrics=metrics, predictions=predictions, validation=validation, external=external,
                     external_metrics=external_metrics, external_sets=external_sets, groups=groups, curves=curves)
