"""SQLAlchemy 2 schema: sweeps -> cells -> trials -> learning curves, metrics and per-image
test predictions; pretraining artefacts beside them.

Shaped like Optuna's own tables: the best epoch is picked by the trainable (on inner
validation) and the trial reported for a (cell, fold) is picked afterwards in SQL
(`selected_trials`), so every trial's numbers stay in the DB. The planned cells and folds
are written when the sweep starts, so an unfinished sweep can say what is missing.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, Connection, DateTime, Float, ForeignKey, Integer, MetaData, String, TableClause, Text,
                        UniqueConstraint, column, table)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 11
# seed 003's per-epoch metrics, learning_curves' columns from version 7 to 10; rows of curve_metrics since 11
SEED_003_CURVES = {"val_binary_acc": "binary_acc", "val_exact_match": "exact_match", "val_fnr": "fnr"}
SCHEMA_CHANGES = {2: "table trials renamed sweep_trials so that Optuna's own tables fit in the same DB, "
                     "and a variant column for grid axes beyond backbone and recipe",
                  3: "tables cells, test_predictions and pretrain_artefacts; sweep_trials refers to its cell "
                     "(cell_id) instead of repeating backbone, recipe and variant",
                  4: "sweep_trials.checkpoint: where a completed trial's final checkpoint is kept (sweeper.predict)",
                  5: "cells.weights_file and cells.weights_sha256: the ImageNet weights file a cell starts from",
                  6: "sweeps.split and sweeps.folds_sha256: which split the target's test parts come from",
                  7: "learning_curves.val_binary_acc, val_exact_match and val_fnr: seed 003's curves over epochs",
                  8: "test_predictions.split: a trial's inner-validation predictions beside its test ones (operating "
                     "points and calibration are fitted on them, never on test)",
                  9: "tables external_sets and external_predictions: each cell's fold models and fold ensemble "
                     "applied to test sets from elsewhere (sweeper.evaluate), with the fold models' AUC and AP "
                     "(external_metrics); image_groups: each target image's "
                     "sex, age band and view for subgroup results",
                  10: "sweep_trials.fit_config and sweep_trials.runtime: the trial's whole training config and "
                      "what it ran with (threads, precision, library versions, the data set and pretrained "
                      "weights by content), so that a selected trial can be re-run exactly (sweeper.rerun)",
                  11: "table curve_metrics: each epoch's inner-validation metrics beyond learning_curves' loss, AUC and "
                      "AP, a row each (vocab.metrics' curve metrics), so that a new one needs no schema version; "
                      "learning_curves' val_binary_acc, val_exact_match and val_fnr moved there"}
# How an older DB is brought up to date, in place: {version: statements}, each SQL text or a function of the
# connection. A version missing here (1 to 3 changed tables, not only added to them) cannot be migrated; the DB is
# refused with what to do.
MIGRATIONS = {4: ["ALTER TABLE sweep_trials ADD COLUMN checkpoint VARCHAR(1000)"],
              5: ["ALTER TABLE cells ADD COLUMN weights_file VARCHAR(300)",
                  "ALTER TABLE cells ADD COLUMN weights_sha256 VARCHAR(64)"],
              6: ["ALTER TABLE sweeps ADD COLUMN split VARCHAR(20)", "ALTER TABLE sweeps ADD COLUMN folds_sha256 VARCHAR(64)"],
              7: [f"ALTER TABLE learning_curves ADD COLUMN {column} FLOAT" for column in SEED_003_CURVES],
              8: ["ALTER TABLE test_predictions ADD COLUMN split VARCHAR(16) DEFAULT 'test' NOT NULL"],
              9: [],  # new tables only: create_all makes them
              10: ["ALTER TABLE sweep_trials ADD COLUMN fit_config JSON", "ALTER TABLE sweep_trials ADD COLUMN runtime JSON"],
              11: [lambda conn: _create_curve_metrics(conn),
                   *(f"INSERT INTO curve_metrics (trial_id, epoch, metric, value) SELECT trial_id, epoch, '{metric}', "
                     f"{column} FROM learning_curves WHERE {column} IS NOT NULL ORDER BY id"
                     for column, metric in SEED_003_CURVES.items()),
                   *(f"ALTER TABLE learning_curves DROP COLUMN {column}" for column in SEED_003_CURVES)]}
MACRO = "__macro__"  # class_name of a macro-averaged metric


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "pk": "pk_%(table_name)s", "fk": "fk_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s", "ix": "ix_%(table_name)s_%(column_0_name)s",
    })


class SchemaMeta(Base):
    __tablename__ = "schema_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Sweep(Base):
    __tablename__ = "sweeps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec_name: Mapped[str] = mapped_column(String(200))
    spec_text: Mapped[str] = mapped_column(Text)
    code_version: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))  # RUNNING, FINISHED, FINISHED_WITH_ERRORS
    folds: Mapped[list] = mapped_column(JSON, default=list)  # the outer folds planned
    trials_per_study: Mapped[int] = mapped_column(Integer, default=0)
    # How the target's test parts were chosen (random, holdout, official) and the SHA-256 of its folds.csv:
    # two sweeps' numbers are comparable only where both agree
    split: Mapped[str | None] = mapped_column(String(20), nullable=True)
    folds_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Cell(Base):
    """One point of the grid: a backbone, a source recipe and the further axes (`variant`)."""

    __tablename__ = "cells"
    __table_args__ = (UniqueConstraint("sweep_id", "backbone", "recipe", "variant"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    backbone: Mapped[str] = mapped_column(String(100))
    recipe: Mapped[str] = mapped_column(String(100))
    variant: Mapped[str] = mapped_column(String(300), default="")  # further grid axes, e.g. "loss=bce"
    strategy: Mapped[str] = mapped_column(String(20), default="regular")  # regular | mixed | co_trained
    init: Mapped[str] = mapped_column(String(20), default="scratch")  # imagenet | scratch
    sources: Mapped[list] = mapped_column(JSON, default=list)  # source data set names, in order
    settings: Mapped[dict] = mapped_column(JSON, default=dict)  # fixed training settings (loss, epochs, ...)
    pretrain_artefact: Mapped[str | None] = mapped_column(String(300), nullable=True)  # pretrain_artefacts.name
    # The ImageNet weights the cell (or its pretraining) starts from: torchvision's file name and its SHA-256
    weights_file: Mapped[str | None] = mapped_column(String(300), nullable=True)
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Trial(Base):
    __tablename__ = "sweep_trials"  # not "trials": Optuna's own tables share this DB
    __table_args__ = (UniqueConstraint("sweep_id", "trial_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), index=True)
    trial_key: Mapped[str] = mapped_column(String(64))  # Ray's trial id: stable across resume
    fold: Mapped[int] = mapped_column(Integer)
    study: Mapped[str] = mapped_column(String(300))  # one Optuna study per (cell, fold)
    optuna_number: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict] = mapped_column(JSON)  # tuned hyperparameters
    status: Mapped[str] = mapped_column(String(20))  # RUNNING, COMPLETE, PRUNED, ERROR
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    epochs_run: Mapped[int] = mapped_column(Integer, default=0)
    best_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    checkpoint: Mapped[str | None] = mapped_column(String(1000), nullable=True)  # final checkpoint: path or URI
    # The trial's FitConfig (trainables.config) as it ran, and its runtime record (threads, precision, library
    # versions, data set id, pretrained weights' SHA-256): what sweeper.rerun needs to repeat it exactly
    fit_config: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    runtime: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class LearningCurve(Base):
    __tablename__ = "learning_curves"
    __table_args__ = (UniqueConstraint("trial_id", "epoch"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("sweep_trials.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_ap: Mapped[float | None] = mapped_column(Float, nullable=True)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)  # the optimiser's rate in that epoch
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class CurveMetric(Base):
    """An epoch's inner-validation value of a curve metric (vocab.metrics) that learning_curves has no column for:
    seed 003's binary accuracy, exact match and false-negative rate at 0.5, and any metric registered since, with
    no schema change. NULL value: undefined in that epoch."""

    __tablename__ = "curve_metrics"
    __table_args__ = (UniqueConstraint("trial_id", "epoch", "metric"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("sweep_trials.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(40))  # binary_acc, exact_match, fnr, ...
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


def _create_curve_metrics(conn: Connection) -> None:
    """Schema 11's migration makes the table before it copies seed 003's columns into it."""
    CurveMetric.__table__.create(conn)


class TrialMetric(Base):
    """A trial's metrics at its best-on-validation epoch; NULL value = undefined (NaN)."""

    __tablename__ = "trial_metrics"
    __table_args__ = (UniqueConstraint("trial_id", "split", "metric", "class_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("sweep_trials.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(16))  # val, test, outer_train
    metric: Mapped[str] = mapped_column(String(40))  # auc, ap, hamming, binary_acc, exact_match, threshold, ...
    class_name: Mapped[str] = mapped_column(String(200))  # a label, or MACRO
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


class Prediction(Base):
    """A completed trial's probability for one image and class, from its best-on-validation weights: the
    outer test fold's images (`split = 'test'`: curves, the bootstrap) and the inner validation split's
    (`'val'`: what operating points and calibration are fitted on). Keys are data_prep's pseudonyms,
    never original identifiers (docs/design.md §3.5)."""

    __tablename__ = "test_predictions"  # replaced as a whole per trial (delete, insert): no unique index,
    # which would double the size of the largest table (3.4 M rows for the paper's grid)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("sweep_trials.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(16), default="test", server_default="test")  # test | val
    image_key: Mapped[str] = mapped_column(String(64))
    patient_key: Mapped[str] = mapped_column(String(64))
    class_name: Mapped[str] = mapped_column(String(200))
    prob: Mapped[float] = mapped_column(Float)
    target: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL: label unknown (masked)


class ImageGroup(Base):
    """A target image's subgroups (sex, age band, view; "" where unknown), for AUC per subgroup. The age
    band only, never the age (docs/design.md §3.5)."""

    __tablename__ = "image_groups"
    __table_args__ = (UniqueConstraint("sweep_id", "image_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    image_key: Mapped[str] = mapped_column(String(64))
    sex: Mapped[str] = mapped_column(String(8), default="")
    age_band: Mapped[str] = mapped_column(String(16), default="")
    view: Mapped[str] = mapped_column(String(64), default="")  # as the target's table says it, cut at 64


class ExternalSet(Base):
    """A test set from elsewhere (another hospital, a public set's official test list) that a sweep's models
    were applied to but that no trial trained, tuned or early-stopped on; `labels` maps each of the
    target's labels it can judge to the set's own labels, `left_out` lists the target's labels it cannot."""

    __tablename__ = "external_sets"
    __table_args__ = (UniqueConstraint("sweep_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    dataset: Mapped[str] = mapped_column(String(300))  # the prepared data set's directory name (content hash)
    images: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict] = mapped_column(JSON, default=dict)  # target label -> the set's labels
    left_out: Mapped[list] = mapped_column(JSON, default=list)  # target labels with no counterpart
    evaluated_at: Mapped[datetime] = mapped_column(DateTime)


class ExternalPrediction(Base):
    """A cell's probability for one image and (target) class of an external set: from one fold's selected
    trial (`model = 'fold'`, `fold` set) or the fold ensemble (`'ensemble'`, the mean of them; `fold` NULL),
    with or without test-time augmentation (`tta`: none, hflip). Never mixed with single-model rows."""

    __tablename__ = "external_predictions"  # replaced as a whole per (external set, cell)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[int] = mapped_column(ForeignKey("external_sets.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(16))  # fold | ensemble
    fold: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trial_id: Mapped[int | None] = mapped_column(ForeignKey("sweep_trials.id", ondelete="CASCADE"), nullable=True)
    tta: Mapped[str] = mapped_column(String(16), default="none")
    image_key: Mapped[str] = mapped_column(String(64))
    patient_key: Mapped[str] = mapped_column(String(64))
    class_name: Mapped[str] = mapped_column(String(200))
    prob: Mapped[float] = mapped_column(Float)
    target: Mapped[float | None] = mapped_column(Float, nullable=True)


class ExternalMetric(Base):
    """A fold model's AUC and AP on an external set, per class and macro (MACRO): recorded with its
    predictions, so that a report reads these instead of every fold model's rows."""

    __tablename__ = "external_metrics"
    __table_args__ = (UniqueConstraint("external_id", "cell_id", "fold", "tta", "metric", "class_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[int] = mapped_column(ForeignKey("external_sets.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), index=True)
    fold: Mapped[int] = mapped_column(Integer)
    tta: Mapped[str] = mapped_column(String(16), default="none")
    metric: Mapped[str] = mapped_column(String(16))  # auc | ap
    class_name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL: undefined


class PretrainArtefact(Base):
    """A pretraining stage's weights file, shared by every cell whose recipe needs it."""

    __tablename__ = "pretrain_artefacts"
    __table_args__ = (UniqueConstraint("sweep_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))  # file name: backbone-strategy-sources-contenthash.pt
    backbone: Mapped[str] = mapped_column(String(100))
    strategy: Mapped[str] = mapped_column(String(20))
    init: Mapped[str] = mapped_column(String(20))
    epochs: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20))  # CACHED, TRAINING, READY, FAILED
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


# Views for hand-written SQL. ROW_NUMBER works on SQLite >= 3.25 and PostgreSQL.
# A (cell, fold) reports the trial best on validation among those that trained to their own end
# (COMPLETE): only they carry the end-of-trial test evaluation, and, as in Optuna's best_trial,
# scheduler-stopped (PRUNED) trials are the ones whose validation had fallen behind.
_CELL = "s.name AS sweep, c.backbone, c.recipe, c.variant, c.strategy"
VIEWS = {
    "trial_summary": f"""
        SELECT {_CELL}, t.fold, t.id AS trial_id, t.trial_key, t.study, t.optuna_number, t.status, t.params,
               t.epochs_run, t.best_epoch, t.error, t.started_at, t.finished_at, t.checkpoint
        FROM sweep_trials t JOIN cells c ON c.id = t.cell_id JOIN sweeps s ON s.id = t.sweep_id""",
    "selected_trials": f"""
        SELECT sweep_id, cell_id, backbone, recipe, variant, fold, trial_id, val_auc FROM (
          SELECT t.sweep_id, t.cell_id, c.backbone, c.recipe, c.variant, t.fold, t.id AS trial_id,
                 m.value AS val_auc,
                 ROW_NUMBER() OVER (PARTITION BY t.cell_id, t.fold ORDER BY m.value DESC, t.id) AS rank
          FROM sweep_trials t JOIN cells c ON c.id = t.cell_id JOIN trial_metrics m
            ON m.trial_id = t.id AND m.split = 'val' AND m.metric = 'auc' AND m.class_name = '{MACRO}'
          WHERE t.status = 'COMPLETE' AND m.value IS NOT NULL) ranked
        WHERE rank = 1""",
    "fold_metrics": f"""
        SELECT {_CELL}, st.fold, st.trial_id, m.split, m.metric, m.class_name, m.value
        FROM selected_trials st
        JOIN cells c ON c.id = st.cell_id JOIN sweeps s ON s.id = st.sweep_id
        JOIN trial_metrics m ON m.trial_id = st.trial_id AND m.split IN ('test', 'outer_train')""",
    "cell_summary": f"""
        SELECT sweep, backbone, recipe, variant, strategy, split, metric, COUNT(value) AS n_folds,
               AVG(value) AS mean, MIN(value) AS min, MAX(value) AS max
        FROM fold_metrics WHERE class_name = '{MACRO}'
        GROUP BY sweep, backbone, recipe, variant, strategy, split, metric""",
    "oof_predictions": f"""
        SELECT {_CELL}, st.fold, st.trial_id, p.image_key, p.patient_key, p.class_name, p.prob, p.target
        FROM selected_trials st
        JOIN cells c ON c.id = st.cell_id JOIN sweeps s ON s.id = st.sweep_id
        JOIN test_predictions p ON p.trial_id = st.trial_id AND p.split = 'test'""",
    "val_predictions": f"""
        SELECT {_CELL}, st.fold, st.trial_id, p.image_key, p.patient_key, p.class_name, p.prob, p.target
        FROM selected_trials st
        JOIN cells c ON c.id = st.cell_id JOIN sweeps s ON s.id = st.sweep_id
        JOIN test_predictions p ON p.trial_id = st.trial_id AND p.split = 'val'""",
    "external_results": f"""
        SELECT {_CELL}, e.name AS external, p.model, p.fold, p.tta, p.image_key, p.patient_key, p.class_name,
               p.prob, p.target
        FROM external_predictions p JOIN external_sets e ON e.id = p.external_id
        JOIN cells c ON c.id = p.cell_id JOIN sweeps s ON s.id = e.sweep_id""",
}


def _view(name: str, columns: str) -> TableClause:
    """A view as a selectable for SQLAlchemy Core reads. Its columns carry no type, so their values come back
    as the driver returns them, as they do to results.query's hand-written SQL."""
    return table(name, *(column(c) for c in columns.split()))


_CELL_COLUMNS = "sweep backbone recipe variant strategy"
TRIAL_SUMMARY = _view("trial_summary", f"{_CELL_COLUMNS} fold trial_id trial_key study optuna_number status params "
                                       f"epochs_run best_epoch error started_at finished_at checkpoint")
SELECTED_TRIALS = _view("selected_trials", "sweep_id cell_id backbone recipe variant fold trial_id val_auc")
FOLD_METRICS = _view("fold_metrics", f"{_CELL_COLUMNS} fold trial_id split metric class_name value")
CELL_SUMMARY = _view("cell_summary", f"{_CELL_COLUMNS} split metric n_folds mean min max")
_PREDICTION_COLUMNS = f"{_CELL_COLUMNS} fold trial_id image_key patient_key class_name prob target"
OOF_PREDICTIONS = _view("oof_predictions", _PREDICTION_COLUMNS)
VAL_PREDICTIONS = _view("val_predictions", _PREDICTION_COLUMNS)
EXTERNAL_RESULTS = _view("external_results", f"{_CELL_COLUMNS} external model fold tta image_key patient_key "
                                             f"class_name prob target")
