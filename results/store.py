"""Open the results DB and write to it: upserts keyed by trial, so replayed work after a
resume overwrites instead of duplicating (docs/design.md §3.4).

SQLite runs in WAL mode with a busy timeout, and writes take the lock up front with
BEGIN IMMEDIATE. The same code runs on PostgreSQL.
"""
from __future__ import annotations

import json

import math
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sqlalchemy import Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from results.schema import (MACRO, MIGRATIONS, SCHEMA_CHANGES, SCHEMA_VERSION, VIEWS, Base, Cell, CurveMetric,
                            ExternalMetric, ExternalPrediction, ExternalSet, ImageGroup, LearningCurve, Prediction, PretrainArtefact,
                            SchemaMeta, Sweep, Trial, TrialMetric)
from results.stats import point_estimate
from vocab.errors import CxrSweepError
from vocab.metrics import EPOCH_METRICS, PER_CLASS_METRICS, REGISTRY, SPLIT_METRICS
from vocab.names import FINAL_SPLITS, PREDICTION_SPLITS, metric_key
from vocab.records import EpochReport, RecordError, SplitPredictions, TrialResult, parse_report

BUSY_TIMEOUT_MS = 30_000
# In WAL mode NORMAL syncs at checkpoints, not at every commit: a killed process loses nothing and
# the file stays consistent; a power cut can lose the last commits, which a resumed sweep writes
# again (Ray replays them; writes are upserts). FULL cost about 10 ms a commit here, 0.1 s a trial.
SYNCHRONOUS = "NORMAL"


class StoreError(CxrSweepError):
    """The DB cannot be opened or used; the message says which URL and what to do."""


FULL_WORDS = ("full", "no space", "quota")  # SQLite's "database or disk is full", ENOSPC, PostgreSQL's quota


def store_error(url, exc: BaseException) -> StoreError:
    """The StoreError for a failed write to the results DB, ours or Optuna's: a full disk (the likely one on
    a long sweep) says that what was committed stays and how to go on."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    if any(word in message.lower() for word in FULL_WORDS):
        return StoreError(f"DB {url} is full ({message}); nothing committed is lost: free space (or raise the "
                          f"quota), then continue with python -m sweeper.run --resume")
    return StoreError(f"DB {url}: write failed ({message})")


def _sqlite_path(url) -> Path | None:
    return Path(url.database) if url.database and url.database != ":memory:" else None


def _parse(url: str):
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"--db {url!r} is not a SQLAlchemy URL; expected e.g. sqlite:///results.db "
                         f"or postgresql+psycopg://user@host/db") from exc


_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE,
                 sqlite3.SQLITE_TRANSACTION}


def _read_only_authorizer(action, *_args) -> int:
    """SQLite asks before every operation: reads yes; writes, DDL, ATTACH, PRAGMA no."""
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def _sqlite_engine(url, readonly: bool) -> Engine:
    path = _sqlite_path(url)
    if path is not None and not path.parent.exists():
        raise StoreError(f"DB {url}: directory {path.parent} does not exist; create it or pass another --db")
    if readonly:
        if path is None or not path.is_file():
            raise StoreError(f"DB {url}: no such database file")
        engine = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
    else:
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if readonly:
            cursor.execute("PRAGMA query_only = ON")
            dbapi_connection.set_authorizer(_read_only_authorizer)
        elif path is not None:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def sqlite_connection(path: str) -> sqlite3.Connection:
    """A connection to the results DB for another library's engine (Optuna's studies live in the same
    file): it waits for the write lock as the store does and syncs as the store does. A plain function,
    so an engine built with it as `creator` can be pickled (Ray pickles the searcher)."""
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    connection.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
    return connection


def open_engine(url: str, readonly: bool = False) -> Engine:
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, readonly)
    # every transaction of a reader's session is read-only, not only the first one
    engine = create_engine(parsed, connect_args={"options": "-c default_transaction_read_only=on"} if readonly else {})
    if readonly:
        @event.listens_for(engine, "begin")
        def _read_only(connection):
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
    return engine


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def upsert(conn, table, rows: list[dict], keys: list[str], keep: tuple[str, ...] = ()) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE (all but `keep`), on SQLite and PostgreSQL."""
    if not rows:
        return
    dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(conn.dialect.name)
    if dialect is None:
        raise StoreError(f"unsupported database {conn.dialect.name!r}; use SQLite or PostgreSQL")
    stmt = dialect.insert(table).values(rows)
    updates = {c: stmt.excluded[c] for c in rows[0] if c not in keys and c not in keep}
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates) if updates
                 else stmt.on_conflict_do_nothing(index_elements=keys))


class ResultsStore:
    """The writer side. Only the sweep driver creates one (docs/design.md §3.4)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = open_engine(url)
        try:
            self._create()
        except OperationalError as exc:
            raise StoreError(f"DB {url} cannot be opened for writing: {exc.orig}") from exc

    @contextmanager
    def _transaction(self):
        """One write transaction; a failure rolls all of it back and becomes a StoreError that says what to
        do. A full disk (or quota) is the likely one on a long sweep: what was committed stays, and the
        sweep continues with --resume once there is space."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise store_error(self.url, exc) from exc

    def _create(self) -> None:
        with self.engine.begin() as conn:
            if inspect(conn).has_table("schema_meta"):
                found = conn.scalar(select(SchemaMeta.value).where(SchemaMeta.key == "schema_version"))
                if found is not None and int(found) > SCHEMA_VERSION:
                    raise StoreError(f"DB {self.url} has schema version {found}; this code writes version "
                                     f"{SCHEMA_VERSION}. Upgrade cxr-sweep or use another --db")
                if found is not None and int(found) < SCHEMA_VERSION:
                    self._migrate(conn, int(found))
            Base.metadata.create_all(conn)
            create = "CREATE VIEW IF NOT EXISTS" if conn.dialect.name == "sqlite" else "CREATE OR REPLACE VIEW"
            for name, body in VIEWS.items():
                conn.execute(text(f"{create} {name} AS {body}"))
            upsert(conn, SchemaMeta.__table__, [{"key": "schema_version", "value": str(SCHEMA_VERSION)}], ["key"])

    def _migrate(self, conn, found: int) -> None:
        """Bring a DB of an older schema up to date in place, in the caller's transaction; refuse one whose
        changes cannot be applied in place."""
        missing = [v for v in range(found + 1, SCHEMA_VERSION + 1) if v not in MIGRATIONS]
        if missing:
            raise StoreError(f"DB {self.url} has schema version {found}, older than this code's {SCHEMA_VERSION} "
                             f"({SCHEMA_CHANGES[missing[-1]]}); there is no migration from it: use a new --db (the "
                             f"old one stays readable with results.query)")
        for name in reversed(VIEWS):  # made again after: a view's columns are fixed when it is made
            conn.execute(text(f"DROP VIEW IF EXISTS {name}"))
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                statement(conn) if callable(statement) else conn.execute(text(statement))

    def start_sweep(self, name: str, spec_name: str, spec_text: str, code_version: str, folds=(),
                    trials_per_study: int = 0, split: str | None = None, folds_sha256: str | None = None) -> int:
        """Create the sweep row, or mark an existing one (a resume) as running again."""
        with self._transaction() as conn:
            upsert(conn, Sweep.__table__, [{"name": name, "spec_name": spec_name, "spec_text": spec_text,
                                            "code_version": code_version, "status": "RUNNING",
                                            "folds": [int(f) for f in folds], "trials_per_study": trials_per_study,
                                            "split": split, "folds_sha256": folds_sha256,
                                            "started_at": _now(), "finished_at": None}], ["name"],
                   keep=("started_at", "spec_text"))
            return conn.scalar(select(Sweep.id).where(Sweep.name == name))

    def register_cells(self, sweep_id: int, cells: list[dict]) -> None:
        """The planned cells: backbone, recipe, variant, strategy, init, sources, settings, pretrain_artefact."""
        with self._transaction() as conn:
            upsert(conn, Cell.__table__, [{"sweep_id": sweep_id, **c} for c in cells],
                   ["sweep_id", "backbone", "recipe", "variant"])

    def record_artefacts(self, sweep_id: int, artefacts: list[dict]) -> None:
        """Pretraining stages: name, backbone, strategy, init, epochs, lr, status, error, size_bytes."""
        with self._transaction() as conn:
            upsert(conn, PretrainArtefact.__table__,
                   [{"sweep_id": sweep_id, "error": None, "size_bytes": None, **a, "updated_at": _now()}
                    for a in artefacts], ["sweep_id", "name"])

    def finish_sweep(self, sweep_id: int, status: str) -> None:
        with self._transaction() as conn:
            conn.execute(Sweep.__table__.update().where(Sweep.id == sweep_id)
                         .values(status=status, finished_at=_now()))

    def recorded_ends(self, sweep_name: str) -> dict[tuple[str, int], tuple[str, float | None]]:
        """{(study, Optuna number): (status, best validation AUC)} of the sweep's trials that ended COMPLETE or
        PRUNED: what Optuna must be told of a trial whose end reached this DB but not the searcher."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Trial.study, Trial.optuna_number, Trial.status, TrialMetric.value)
                .join(Sweep, Sweep.id == Trial.sweep_id)
                .outerjoin(TrialMetric, (TrialMetric.trial_id == Trial.id) & (TrialMetric.split == "val")
                           & (TrialMetric.metric == "auc") & (TrialMetric.class_name == MACRO))
                .where(Sweep.name == sweep_name, Trial.status.in_(("COMPLETE", "PRUNED")))).all()
        return {(study, int(number)): (status, None if value is None else float(value))
                for study, number, status, value in rows}

    def status_counts(self, sweep_id: int) -> dict[str, int]:
        """Trials of the sweep per status (COMPLETE, PRUNED, ERROR, RUNNING)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Trial.status, func.count()).where(Trial.sweep_id == sweep_id)
                                .group_by(Trial.status)).all()
        return {status: int(n) for status, n in rows}

    def failed_trials(self, sweep_id: int) -> list[tuple[str, int, str]]:
        """(study, fold, error) of the sweep's ERROR trials, for the run's summary."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Trial.study, Trial.fold, Trial.error).where(
                Trial.sweep_id == sweep_id, Trial.status == "ERROR").order_by(Trial.study, Trial.fold)).all()
        return [(study, int(fold), error or "") for study, fold, error in rows]

    def remove_unfinished(self, sweep_id: int) -> int:
        """Delete the sweep's trials still RUNNING (and their curves) once every Ray trial has ended: they
        were started after the last experiment snapshot of a killed driver, so Ray never resumes them
        and their work is redone as other trials. Returns how many."""
        with self._transaction() as conn:
            doomed = select(Trial.id).where(Trial.sweep_id == sweep_id, Trial.status == "RUNNING")
            return conn.execute(Trial.__table__.delete().where(Trial.id.in_(doomed))).rowcount

    def forget_errors(self, sweep_id: int, numbers: dict[str, list[int]]) -> int:
        """Delete the ERROR rows of these {study: [Optuna numbers]}: failed trials run again as new Ray trials
        (Ray's record of the old ones is lost), whose rows replace them. Returns how many."""
        with self._transaction() as conn:
            deleted = 0
            for study, wanted in numbers.items():
                if wanted:
                    doomed = select(Trial.id).where(Trial.sweep_id == sweep_id, Trial.status == "ERROR",
                                                    Trial.study == study, Trial.optuna_number.in_(wanted))
                    deleted += conn.execute(Trial.__table__.delete().where(Trial.id.in_(doomed))).rowcount
            return deleted

    def _trial_id(self, conn, sweep_id: int, trial_key: str) -> int:
        return conn.scalar(select(Trial.id).where(Trial.sweep_id == sweep_id, Trial.trial_key == trial_key))

    def _cell_id(self, conn, sweep_id: int, info: dict) -> int:
        """The trial's cell, created bare if the driver did not register it (a DB written by hand)."""
        key = {"sweep_id": sweep_id, "backbone": info["backbone"], "recipe": info["recipe"],
               "variant": info.get("variant", "")}
        upsert(conn, Cell.__table__, [key], list(key))
        return conn.scalar(select(Cell.id).filter_by(**key))

    def trial_started(self, sweep_id: int, trial_key: str, info: dict) -> str | None:
        """`info`: backbone, recipe, variant, fold, study, optuna_number, params. Returns the status the trial
        had before (ERROR: a failed trial that a resumed sweep runs again), None for a new trial."""
        with self._transaction() as conn:
            before = conn.scalar(_status_of(sweep_id, trial_key))
            row = {k: v for k, v in info.items() if k not in ("backbone", "recipe", "variant")}
            upsert(conn, Trial.__table__, [{"sweep_id": sweep_id, "trial_key": trial_key, **row,
                                            "cell_id": self._cell_id(conn, sweep_id, info),
                                            "status": "RUNNING", "error": None, "started_at": _now()}],
                   ["sweep_id", "trial_key"])
        return before

    def trial_status(self, sweep_id: int, trial_key: str) -> str | None:
        """The trial's status, None if it has no row (a trial whose worker never started)."""
        with self.engine.connect() as conn:
            return conn.scalar(_status_of(sweep_id, trial_key))

    def set_optuna_number(self, sweep_id: int, trial_key: str, number: int) -> None:
        with self._transaction() as conn:
            conn.execute(Trial.__table__.update().where(Trial.sweep_id == sweep_id, Trial.trial_key == trial_key)
                         .values(optuna_number=number))

    def epoch_reported(self, sweep_id: int, trial_key: str, report: EpochReport | dict) -> None:
        """An epoch's learning-curve row, and a curve_metrics row for each curve metric it has no column for."""
        report = _record(trial_key, report)
        if report is None:
            raise StoreError(f"trial {trial_key}: an epoch's report without an epoch")
        row, curves = _curve_rows(report)
        with self._transaction() as conn:
            trial_id = self._trial_id(conn, sweep_id, trial_key)
            upsert(conn, LearningCurve.__table__, [{"trial_id": trial_id, **row}], ["trial_id", "epoch"])
            upsert(conn, CurveMetric.__table__, [{"trial_id": trial_id, **r} for r in curves],
                   ["trial_id", "epoch", "metric"])
            conn.execute(Trial.__table__.update().where(Trial.id == trial_id)
                         .values(epochs_run=report.epoch, best_epoch=report.best_epoch))

    def trial_finished(self, sweep_id: int, trial_key: str, status: str, result: EpochReport | dict | None,
                       error: str | None, label_names: list[str] = (),
                       predictions: dict[str, SplitPredictions | dict] | None = None, checkpoint: str | None = None,
                       runtime: dict | None = None) -> None:
        """Final status, plus the metrics of its last record (a TrialResult's every metric; an epoch's, of a
        pruned or failed trial, its best validation AUC), the per-image predictions by split (`{"test": ...,
        "val": ...}`, SplitPredictions or dicts of `image_keys`, `patient_keys`, and `probs` and `labels` as
        n x classes arrays), where the final checkpoint is kept (a path or URI in Ray's storage), and the
        trial's runtime record (what a re-run needs beyond its FitConfig). A dict is read as the record it
        reports (vocab.records.parse_report): a key it does not know, or a missing metric, is refused."""
        record = _record(trial_key, result)
        metrics = _metric_rows(trial_key, record, label_names) if record is not None else None
        rows = _prediction_rows(trial_key, predictions, label_names) if predictions is not None else None
        with self._transaction() as conn:
            trial_id = self._trial_id(conn, sweep_id, trial_key)
            conn.execute(Trial.__table__.update().where(Trial.id == trial_id)
                         .values(status=status, error=error, finished_at=_now(), checkpoint=checkpoint,
                                 runtime=runtime))
            if metrics is not None:
                upsert(conn, TrialMetric.__table__, [{"trial_id": trial_id, **row} for row in metrics],
                       ["trial_id", "split", "metric", "class_name"])
            if rows is not None:
                conn.execute(Prediction.__table__.delete().where(Prediction.trial_id == trial_id))  # a replay
                for row in rows:
                    row["trial_id"] = trial_id
                for start in range(0, len(rows), 20_000):
                    conn.execute(Prediction.__table__.insert(), rows[start:start + 20_000])


    def sweep_id(self, name: str) -> int:
        with self._transaction() as conn:
            found = conn.scalar(select(Sweep.id).where(Sweep.name == name))
        if found is None:
            raise StoreError(f"no sweep named {name!r} in {self.url}")
        return found

    def image_groups(self, sweep_id: int, rows: list[dict]) -> None:
        """The target's images' subgroups (`image_key`, `sex`, `age_band`, `view`), written once per sweep."""
        with self._transaction() as conn:
            for start in range(0, len(rows), 5_000):
                upsert(conn, ImageGroup.__table__, [{"sweep_id": sweep_id, **r} for r in rows[start:start + 5_000]],
                       ["sweep_id", "image_key"])

    def external_set(self, sweep_id: int, name: str, dataset: str, images: int, labels: dict[str, list[str]],
                     left_out: list[str]) -> int:
        """Record (or update) an external test set of the sweep; its id. A set recorded before from another
        prepared data set or with another label mapping loses its earlier predictions and metrics, which
        would otherwise be reported under the new description."""
        with self._transaction() as conn:
            before = conn.execute(select(ExternalSet.id, ExternalSet.dataset, ExternalSet.labels)
                                  .where(ExternalSet.sweep_id == sweep_id, ExternalSet.name == name)).first()
            if before is not None and (before.dataset != dataset or _json_value(before.labels) != labels):
                for table in (ExternalPrediction.__table__, ExternalMetric.__table__):
                    conn.execute(table.delete().where(table.c.external_id == before.id))
            upsert(conn, ExternalSet.__table__, [{"sweep_id": sweep_id, "name": name, "dataset": dataset,
                                                  "images": images, "labels": labels, "left_out": left_out,
                                                  "evaluated_at": _now()}], ["sweep_id", "name"])
            return conn.scalar(select(ExternalSet.id).where(ExternalSet.sweep_id == sweep_id, ExternalSet.name == name))

    def external_trial_keys(self, sweep_id: int, external_id: int, cell: dict, tta: str) -> set[str]:
        """The trials whose fold-model predictions on the external set are stored for the cell and `tta`."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Trial.trial_key).distinct()
                                .join(ExternalPrediction, ExternalPrediction.trial_id == Trial.id)
                                .join(Cell, Cell.id == ExternalPrediction.cell_id)
                                .where(Cell.sweep_id == sweep_id, Cell.backbone == cell["backbone"],
                                       Cell.recipe == cell["recipe"], Cell.variant == cell.get("variant", ""),
                                       ExternalPrediction.external_id == external_id, ExternalPrediction.tta == tta,
                                       ExternalPrediction.model == "fold"))
            return {row.trial_key for row in rows}

    def external_predictions(self, sweep_id: int, external_id: int, cell: dict, tta: str, blocks: list[dict],
                             label_names: list[str]) -> None:
        """A cell's predictions on an external set with one test-time augmentation, replacing earlier ones:
        `blocks` are its fold models' (`model` 'fold', `fold`, `trial_key`) and its ensemble's (`model`
        'ensemble'), each with `image_keys`, `patient_keys`, `probs` and `labels` (images x `label_names`)."""
        rows = []
        for block in blocks:
            where = f"{block['model']} {block.get('fold', '')} of {cell['backbone']}/{cell['recipe']}".strip()
            extra = {"model": block["model"], "fold": block.get("fold"), "tta": tta}
            rows += [{**row, **extra, "trial_key": block.get("trial_key")}
                     for row in _prediction_rows(where, {"test": block}, label_names)]
        metrics = _fold_metrics(blocks, label_names, tta)
        with self._transaction() as conn:
            cell_id = self._cell_id(conn, sweep_id, cell)
            scored = ExternalMetric.__table__
            conn.execute(scored.delete().where(scored.c.external_id == external_id, scored.c.cell_id == cell_id,
                                               scored.c.tta == tta))
            if metrics:
                conn.execute(scored.insert(), [{**m, "external_id": external_id, "cell_id": cell_id} for m in metrics])
            trials = {}
            for key in {r["trial_key"] for r in rows if r["trial_key"]}:
                trials[key] = self._trial_id(conn, sweep_id, key)
            table = ExternalPrediction.__table__
            conn.execute(table.delete().where(table.c.external_id == external_id, table.c.cell_id == cell_id,
                                              table.c.tta == tta))
            for row in rows:
                row.pop("split")
                row.update(external_id=external_id, cell_id=cell_id, trial_id=trials.get(row.pop("trial_key")))
            for start in range(0, len(rows), 20_000):
                conn.execute(table.insert(), rows[start:start + 20_000])


def _json_value(value):
    """A JSON column's value as Python (SQLite may hand back the text)."""
    return json.loads(value) if isinstance(value, str) else value


def _fold_metrics(blocks: list[dict], label_names, tta: str) -> list[dict]:
    """Each fold model's external metrics (vocab.metrics: AUC and AP) per class and macro (NaN, stored NULL, where
    undefined)."""
    rows = []
    for block in blocks:
        if block["model"] != "fold":
            continue
        truth, probs = np.asarray(block["labels"], float), np.asarray(block["probs"], float)
        for metric in (m.name for m in REGISTRY.values() if m.external):
            values = [point_estimate(metric, truth[:, [k]], probs[:, [k]]) for k in range(len(label_names))]
            values.append(point_estimate(metric, truth, probs))
            rows += [{"fold": int(block["fold"]), "tta": tta, "metric": metric, "class_name": name, "value": _finite(v)}
                     for name, v in zip([*label_names, MACRO], values)]
    return rows


def _prediction_rows(trial_key: str, by_split: dict[str, dict], label_names) -> list[dict]:
    """One row per (split, image, class), all checked before anything is written."""
    unknown = sorted(set(by_split) - set(PREDICTION_SPLITS))
    if unknown:
        raise StoreError(f"trial {trial_key}: predictions for split(s) {unknown}; expected one of "
                         f"{', '.join(PREDICTION_SPLITS)}")
    rows = []
    for split, p in by_split.items():
        p = _split_predictions(trial_key, split, p)
        probs, labels = np.asarray(p.probs, dtype=float), np.asarray(p.labels, dtype=float)
        if probs.shape != (len(p.image_keys), len(label_names)):
            raise StoreError(f"trial {trial_key}: {split} predictions of shape {probs.shape} do not match "
                             f"{len(p.image_keys)} images x {len(label_names)} labels")
        rows += [{"split": split, "image_key": image, "patient_key": patient, "class_name": name,
                  "prob": float(probs[i, j]), "target": None if np.isnan(labels[i, j]) else float(labels[i, j])}
                 for i, (image, patient) in enumerate(zip(p.image_keys, p.patient_keys))
                 for j, name in enumerate(label_names)]
    return rows


def _split_predictions(trial_key: str, split: str, given: SplitPredictions | dict) -> SplitPredictions:
    """A split's predictions as the record (a block of sweeper.evaluate's also names its model: left aside)."""
    if isinstance(given, SplitPredictions):
        return given
    try:
        return SplitPredictions(**{name: given[name] for name in SplitPredictions.model_fields})
    except (KeyError, RecordError) as exc:
        raise StoreError(f"trial {trial_key}: {split} predictions: {exc}") from None


def _status_of(sweep_id: int, trial_key: str):
    """The query of one trial's status (no row: None)."""
    return select(Trial.status).where(Trial.sweep_id == sweep_id, Trial.trial_key == trial_key)


def _record(trial_key: str, given: EpochReport | dict | None) -> EpochReport | None:
    """The record a dict reports (Ray's keys left out; None if nothing else); one it does not make is refused,
    naming the key."""
    if given is None or isinstance(given, EpochReport):
        return given
    try:
        return parse_report(given)
    except RecordError as exc:
        raise StoreError(f"trial {trial_key}: {exc}") from None


def _curve_rows(report: EpochReport) -> tuple[dict, list[dict]]:
    """An epoch's learning_curves row (its losses, AUC, AP, rate and time: `val_auc`, ...) and, for every other
    curve metric of the registry, its curve_metrics row (epoch, metric, value), so that a new one needs no
    schema change."""
    columns = LearningCurve.__table__.c
    row = {"epoch": report.epoch, "seconds": _finite(report.epoch_seconds), "train_loss": _finite(report.train_loss),
           "lr": _finite(report.lr)}
    rows = []
    for metric in EPOCH_METRICS:
        if metric_key("val", metric) in columns:
            row[metric_key("val", metric)] = _finite(report.val[metric])
        else:
            rows.append({"epoch": report.epoch, "metric": metric, "value": _finite(report.val[metric])})
    return row, rows


def _metric_rows(trial_key: str, record: EpochReport, label_names) -> list[dict]:
    """trial_metrics' rows (without trial_id): the validation AUC that selection ranks by, and of a TrialResult
    every metric of each final split, macro and per class, and the fitted thresholds (stored under split 'test',
    where they are applied). A per-class list that does not match the labels is refused, not cut to them. Not
    stored, and not lost: `<metric>_classes` (the per-class rows that are not NULL) and Ray's copies of the
    rest; `undefined` reasons and `stop_reason` have no column yet."""
    rows = [{"split": "val", "metric": "auc", "class_name": MACRO, "value": _finite(record.best_val_auc)}]
    if not isinstance(record, TrialResult):
        return rows
    for split in FINAL_SPLITS:
        metrics = record.splits[split]
        rows += [{"split": split, "metric": m, "class_name": MACRO, "value": _finite(metrics.macro[m])}
                 for m in SPLIT_METRICS]
        for metric in PER_CLASS_METRICS:
            rows += _per_class(trial_key, split, metric, metrics.per_class[metric], label_names)
    return rows + _per_class(trial_key, "test", "threshold", record.thresholds, label_names)


def _per_class(trial_key: str, split: str, metric: str, values: list[float], label_names) -> list[dict]:
    if len(values) != len(label_names):
        raise StoreError(f"trial {trial_key}: {len(values)} per-class values of {split} {metric} for "
                         f"{len(label_names)} labels ({', '.join(label_names)})")
    return [{"split": split, "metric": metric, "class_name": label, "value": _finite(value)}
            for label, value in zip(label_names, values)]
