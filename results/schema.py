"""SQLAlchemy 2 schema: sweeps -> trials -> learning curves and per-split metrics.

Shaped like Optuna's own tables: the best epoch is picked by the trainable (on inner
validation) and the trial reported for a (cell, fold) is picked afterwards in SQL
(`selected_trials`), so every trial's numbers stay in the DB.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 2
SCHEMA_CHANGES = {2: "table trials renamed sweep_trials so that Optuna's own tables fit in the same DB, "
                      "and a variant column for grid axes beyond backbone and recipe"}
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
    status: Mapped[str] = mapped_column(String(20))  # RUNNING, FINISHED, FAILED
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Trial(Base):
    __tablename__ = "sweep_trials"  # not "trials": Optuna's own tables share this DB
    __table_args__ = (UniqueConstraint("sweep_id", "trial_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    trial_key: Mapped[str] = mapped_column(String(64))  # Ray's trial id: stable across resume
    backbone: Mapped[str] = mapped_column(String(100))
    recipe: Mapped[str] = mapped_column(String(100))
    variant: Mapped[str] = mapped_column(String(300), default="")  # further grid axes, e.g. "loss=bce,lr=0.01"
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
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class TrialMetric(Base):
    """A trial's metrics at its best-on-validation epoch; NULL value = undefined (NaN)."""

    __tablename__ = "trial_metrics"
    __table_args__ = (UniqueConstraint("trial_id", "split", "metric", "class_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("sweep_trials.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(16))  # val, test, outer_train
    metric: Mapped[str] = mapped_column(String(40))  # auc, ap, hamming, binary_acc, exact_match
    class_name: Mapped[str] = mapped_column(String(200))  # a label, or MACRO
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


# Views for hand-written SQL. ROW_NUMBER works on SQLite >= 3.25 and PostgreSQL.
# A (cell, fold) reports the trial best on validation among those that trained to their own end
# (COMPLETE): only they carry the end-of-trial test evaluation, and, as in Optuna's best_trial,
# scheduler-stopped (PRUNED) trials are the ones whose validation had fallen behind.
VIEWS = {
    "selected_trials": f"""
        SELECT sweep_id, backbone, recipe, variant, fold, trial_id, val_auc FROM (
          SELECT t.sweep_id, t.backbone, t.recipe, t.variant, t.fold, t.id AS trial_id, m.value AS val_auc,
                 ROW_NUMBER() OVER (PARTITION BY t.sweep_id, t.backbone, t.recipe, t.variant, t.fold
                                    ORDER BY m.value DESC, t.id) AS rank
          FROM sweep_trials t JOIN trial_metrics m
            ON m.trial_id = t.id AND m.split = 'val' AND m.metric = 'auc' AND m.class_name = '{MACRO}'
          WHERE t.status = 'COMPLETE' AND m.value IS NOT NULL) ranked
        WHERE rank = 1""",
    "fold_metrics": """
        SELECT s.name AS sweep, st.backbone, st.recipe, st.variant, st.fold, st.trial_id, m.metric, m.class_name,
               m.value
        FROM selected_trials st
        JOIN sweeps s ON s.id = st.sweep_id
        JOIN trial_metrics m ON m.trial_id = st.trial_id AND m.split = 'test'""",
    "cell_summary": f"""
        SELECT sweep, backbone, recipe, variant, metric, COUNT(value) AS n_folds, AVG(value) AS mean
        FROM fold_metrics WHERE class_name = '{MACRO}'
        GROUP BY sweep, backbone, recipe, variant, metric""",
}
