"""The results DB: schema, idempotent upserts, WAL, predictions, artefacts and read-only queries,
on SQLite and (where the engine_url fixture has a server) PostgreSQL."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, event

from results.choose import choose_trial
from results.load import load
from results.query import QueryError, run_query
from results.store import ResultsStore, StoreError
from tests.handmade_sweep import CELLS, FOLDS, build_sweep, epoch_report, trial_result, write_trial
from vocab.metrics import EPOCH_METRICS, MACRO_METRICS, PER_CLASS_METRICS, SPLIT_METRICS
from vocab.names import FINAL_SPLITS
from vocab.records import EpochReport, SplitMetrics, TrialResult

LABELS = ["a", "b"]
METRIC_ROWS = 1 + len(FINAL_SPLITS) * (len(SPLIT_METRICS) + len(PER_CLASS_METRICS) * len(LABELS)) + len(LABELS)


def _trial(store, sweep_id, key, backbone, recipe, fold, val_auc, test_auc, test_ap, status="COMPLETE"):
    write_trial(store, sweep_id, key, backbone=backbone, recipe=recipe, fold=fold, params={"lr": 1e-3, "dropout": 0.1},
                epochs=[{"epoch": epoch, "train_loss": 0.5, "val_auc": val_auc, "best_epoch": epoch} for epoch in (1, 2)],
                result={"epoch": 2, "best_val_auc": val_auc, "test_auc": test_auc, "test_ap": test_ap,
                        "test_auc_per_class": [test_auc, float("nan")]}, labels=LABELS, status=status)


@pytest.fixture
def db(engine_url):
    build_sweep(engine_url, "s1")
    return engine_url


def test_replayed_writes_do_not_duplicate_rows(engine_url):
    store = ResultsStore(engine_url)
    sweep = store.start_sweep("s", "tiny", "", "test")
    for _ in range(2):  # Ray replays work after its last snapshot on resume
        _trial(store, sweep, "k", "resnet18", "scratch", 0, 0.8, 0.7, 0.6)
        store.trial_finished(sweep, "k", "COMPLETE", trial_result(2, best_val_auc=0.8), None, LABELS,
                             {"test": PREDICTIONS})
    assert store.start_sweep("s", "tiny", "", "test") == sweep
    counts = run_query(engine_url, "SELECT (SELECT COUNT(*) FROM sweep_trials) t, (SELECT COUNT(*) FROM cells) c, "
                                   "(SELECT COUNT(*) FROM learning_curves) l, (SELECT COUNT(*) FROM trial_metrics) m, "
                                   "(SELECT COUNT(*) FROM test_predictions) p")
    assert counts.iloc[0].tolist() == [1, 1, 2, METRIC_ROWS, 6]  # every metric once (val auc, ...); 3 images x 2


PREDICTIONS = {"image_keys": ["i1", "i2", "i3"], "patient_keys": ["p1", "p1", "p2"],
               "probs": np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3]]),
               "labels": np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 0.0]])}


def test_predictions_are_stored_per_image_and_class_with_unknown_labels_as_null(engine_url):
    store = ResultsStore(engine_url)
    sweep = store.start_sweep("s", "tiny", "", "test")
    _trial(store, sweep, "k", "resnet18", "scratch", 0, 0.8, 0.7, 0.6)
    store.trial_finished(sweep, "k", "COMPLETE", trial_result(2, best_val_auc=0.8, thresholds=[0.25, 0.5]), None,
                         LABELS, {"test": PREDICTIONS})
    rows = run_query(engine_url, "SELECT image_key, patient_key, class_name, prob, target FROM test_predictions "
                                 "ORDER BY image_key, class_name")
    assert rows["prob"].tolist() == pytest.approx([0.1, 0.9, 0.2, 0.8, 0.7, 0.3])
    assert rows["target"].isna().tolist() == [False, False, True, False, False, False]
    assert rows["patient_key"].tolist() == ["p1", "p1", "p1", "p1", "p2", "p2"]
    thresholds = run_query(engine_url, "SELECT class_name, value FROM trial_metrics WHERE metric = 'threshold' "
                                       "ORDER BY class_name")
    assert thresholds["value"].tolist() == [0.25, 0.5]


def test_predictions_of_the_wrong_shape_are_refused_naming_the_trial(engine_url):
    store = ResultsStore(engine_url)
    sweep = store.start_sweep("s", "tiny", "", "test")
    store.trial_started(sweep, "k", {"backbone": "resnet18", "recipe": "scratch", "fold": 0, "study": "x",
                                     "optuna_number": 0, "params": {}})
    for bad, said in (({**PREDICTIONS, "probs": np.zeros((3, 3))}, r"predictions: SplitPredictions: probs of shape \(3, 3\) and labels of shape \(3, 2\)"),
                      ({**PREDICTIONS, "probs": np.zeros((3, 3)), "labels": np.zeros((3, 3))},
                       r"predictions of shape \(3, 3\) do not match 3 images x 2 labels")):
        with pytest.raises(StoreError, match=f"trial k: test {said}"):
            store.trial_finished(sweep, "k", "COMPLETE", trial_result(2, best_val_auc=0.8), None, LABELS, {"test": bad})
    assert run_query(engine_url, "SELECT status FROM sweep_trials").iloc[0, 0] == "RUNNING"  # rolled back


def _started(engine_url):
    store = ResultsStore(engine_url)
    sweep = store.start_sweep("s", "tiny", "", "test")
    store.trial_started(sweep, "k", {"backbone": "resnet18", "recipe": "scratch", "fold": 0, "study": "x",
                                     "optuna_number": 0, "params": {}})
    return store, sweep


def test_every_metric_of_a_trials_result_lands_in_its_row(engine_url):
    """Typed records (issue 29): each number of a TrialResult, macro and per class for every final split, the
    thresholds and the validation AUC, is one trial_metrics row; each of an epoch, a learning-curve column (loss,
    AUC, AP) or a curve_metrics row (the others)."""
    store, sweep = _started(engine_url)
    rng = np.random.default_rng(0)
    draw = lambda: round(float(rng.uniform()), 6)  # noqa: E731
    splits = {s: SplitMetrics(macro={m: draw() for m in SPLIT_METRICS}, classes={m: 2 for m in MACRO_METRICS},
                              per_class={m: [draw(), draw()] for m in PER_CLASS_METRICS}, undefined=[])
              for s in FINAL_SPLITS}
    last = EpochReport.from_report(epoch_report(epoch=2, train_loss=0.5, lr=1e-3, best_val_auc=draw(),
                                                **{f"val_{m}": draw() for m in EPOCH_METRICS}))
    result = TrialResult(**dict(last), thresholds=[0.25, 0.5], splits=splits, completed=True, stop_reason="epochs")
    store.epoch_reported(sweep, "k", last)
    store.trial_finished(sweep, "k", "COMPLETE", result, None, LABELS)
    stored = run_query(engine_url, "SELECT split, metric, class_name, value FROM trial_metrics")
    got = {(r.split, r.metric, r.class_name): r.value for r in stored.itertuples()}
    expected = {("val", "auc", "__macro__"): result.best_val_auc,
                **{("test", "threshold", label): t for label, t in zip(LABELS, result.thresholds)}}
    for split, metrics in splits.items():
        expected.update({(split, m, "__macro__"): v for m, v in metrics.macro.items()})
        expected.update({(split, m, label): v for m, values in metrics.per_class.items() for label, v in zip(LABELS, values)})
    assert got == pytest.approx(expected) and len(stored) == METRIC_ROWS
    curve = run_query(engine_url, "SELECT * FROM learning_curves").iloc[0]
    rows = run_query(engine_url, "SELECT epoch, metric, value FROM curve_metrics")
    assert {m: curve[f"val_{m}"] for m in ("loss", "auc", "ap")} == pytest.approx({m: last.val[m] for m in ("loss", "auc", "ap")})
    assert dict(zip(rows.metric, rows.value)) == pytest.approx({m: last.val[m] for m in EPOCH_METRICS
                                                                if m not in ("loss", "auc", "ap")})
    assert set(rows.epoch) == {2} and len(rows) == len(EPOCH_METRICS) - 3


def test_a_metric_the_store_does_not_know_or_misses_is_refused_naming_it_not_dropped(engine_url):
    """A renamed metric used to vanish from the DB without a word (issue 29); nothing is written of such a trial."""
    store, sweep = _started(engine_url)
    result = trial_result(2, best_val_auc=0.8, test_fnr=0.25)
    renamed = {**{k: v for k, v in result.items() if k != "test_fnr"}, "test_miss_rate": 0.25}
    with pytest.raises(StoreError, match="trial k: TrialResult report: unknown key.s. test_miss_rate; missing test_fnr"):
        store.trial_finished(sweep, "k", "COMPLETE", renamed, None, LABELS)
    with pytest.raises(StoreError, match="trial k: EpochReport report: unknown key.s. val_miss_rate"):
        store.epoch_reported(sweep, "k", {**epoch_report(epoch=1), "val_miss_rate": 0.3})
    with pytest.raises(StoreError, match="trial k: 2 per-class values of test ap for 3 labels"):
        store.trial_finished(sweep, "k", "COMPLETE", result, None, [*LABELS, "c"])  # was cut to the labels
    assert run_query(engine_url, "SELECT COUNT(*) FROM trial_metrics").iloc[0, 0] == 0
    assert run_query(engine_url, "SELECT COUNT(*) FROM learning_curves").iloc[0, 0] == 0
    assert run_query(engine_url, "SELECT status FROM sweep_trials").iloc[0, 0] == "RUNNING"
    ray_keys = {"training_iteration": 3, "time_total_s": 9.5, "done": True, "trial_id": "k", "node_ip": "10.0.0.2",
                "config": {"lr": 0.01}, "config/lr": 0.01, "node_id": "n1"}
    store.trial_finished(sweep, "k", "COMPLETE", {**result, **ray_keys}, None, LABELS)  # Ray's own keys are not ours
    assert run_query(engine_url, "SELECT COUNT(*) FROM trial_metrics").iloc[0, 0] == METRIC_ROWS


def test_a_curve_metric_registered_later_is_stored_every_epoch_with_no_schema_change(engine_url, toy_metric):
    """A metric added to the registry with curve=True needs no learning_curves column (before schema 11 it needed
    a schema version): its epochs are curve_metrics rows, read back as the curves' `val_<metric>` column."""
    store, sweep = _started(engine_url)
    store.epoch_reported(sweep, "k", epoch_report(epoch=1, val_specificity=0.75))
    store.epoch_reported(sweep, "k", epoch_report(epoch=2, val_specificity=float("nan")))  # undefined: NULL
    rows = run_query(engine_url, "SELECT epoch, value FROM curve_metrics WHERE metric = 'specificity' ORDER BY epoch")
    assert rows.epoch.tolist() == [1, 2] and rows.value.iloc[0] == 0.75 and pd.isna(rows.value.iloc[1])
    curves = load(engine_url).curves
    assert curves.val_specificity.iloc[0] == 0.75 and np.isnan(curves.val_specificity.iloc[1])


def test_cells_and_pretraining_artefacts_are_recorded_with_their_plan(engine_url):
    store = ResultsStore(engine_url)
    sweep = store.start_sweep("s", "paper", "", "test", folds=[0, 1, 2, 3, 4], trials_per_study=8)
    store.register_cells(sweep, [{"backbone": "resnet50", "recipe": "mixed_chexpert", "variant": "",
                                  "strategy": "mixed", "init": "imagenet", "sources": ["chexpert"],
                                  "settings": {"loss": "batch_weighted_bce"},
                                  "pretrain_artefact": "resnet50-regular-chexpert-abc.pt"}])
    store.record_artefacts(sweep, [{"name": "resnet50-regular-chexpert-abc.pt", "backbone": "resnet50",
                                    "strategy": "regular", "init": "imagenet", "epochs": 3, "lr": 1e-3,
                                    "status": "TRAINING"}])
    store.record_artefacts(sweep, [{"name": "resnet50-regular-chexpert-abc.pt", "backbone": "resnet50",
                                    "strategy": "regular", "init": "imagenet", "epochs": 3, "lr": 1e-3,
                                    "status": "FAILED", "error": "CUDA out of memory"}])
    joined = run_query(engine_url, "SELECT c.strategy, c.sources, a.status, a.error, s.folds, s.trials_per_study "
                                   "FROM cells c JOIN pretrain_artefacts a ON a.name = c.pretrain_artefact "
                                   "JOIN sweeps s ON s.id = c.sweep_id")
    row = joined.iloc[0]
    assert (row["strategy"], row["status"], row["error"], row["trials_per_study"]) == (
        "mixed", "FAILED", "CUDA out of memory", 8)
    assert "chexpert" in str(row["sources"]) and "4" in str(row["folds"])


def test_foreign_keys_are_enforced(engine_url):
    store = ResultsStore(engine_url)
    with pytest.raises(Exception, match="(?i)foreign key"):
        with store.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO cells (sweep_id, backbone, recipe, variant, strategy, init, sources, "
                                 "settings) VALUES (12345, 'b', 'r', '', 'regular', 'scratch', '[]', '{}')")


def test_nan_metrics_are_stored_as_null(engine_url):
    store = ResultsStore(engine_url)
    _trial(store, store.start_sweep("s", "t", "", "v"), "k", "r", "s", 0, 0.8, 0.7, 0.6)
    value = run_query(engine_url, "SELECT value FROM trial_metrics WHERE class_name = 'b'").iloc[0, 0]
    assert value is None or np.isnan(value)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path}/r.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


REFUSED = ["DELETE FROM sweep_trials", "DROP TABLE sweep_trials", "CREATE TABLE x (a int)",
           "UPDATE sweeps SET name = 'x'", "SELECT 1; DELETE FROM sweep_trials", "INSERT INTO sweeps (name) VALUES ('x')"]


@pytest.mark.parametrize("sql", REFUSED + ["ATTACH DATABASE ':memory:' AS other", "PRAGMA query_only = OFF"])
def test_query_refuses_writes_on_sqlite_and_leaves_the_db_unchanged(tmp_path, sql):
    url = f"sqlite:///{tmp_path}/r.db"
    build_sweep(url, "s1")
    _refused_and_unchanged(url, sql)


POSTGRES_ONLY = ["CREATE EXTENSION IF NOT EXISTS pgcrypto", "SET default_transaction_read_only = off; DELETE FROM sweeps",
                 "COMMIT; DELETE FROM sweeps", "ROLLBACK; SET TRANSACTION READ WRITE; DELETE FROM sweeps"]


@pytest.mark.parametrize("sql", REFUSED + POSTGRES_ONLY)
def test_query_refuses_writes_on_every_engine(db, sql):
    if db.startswith("sqlite") and sql in POSTGRES_ONLY:
        pytest.skip("PostgreSQL syntax")
    _refused_and_unchanged(db, sql)


def _refused_and_unchanged(url, sql):
    before = run_query(url, "SELECT (SELECT COUNT(*) FROM sweep_trials) t, (SELECT COUNT(*) FROM sweeps) s")
    with pytest.raises(QueryError, match="read-only|not authorized|cannot|only one|multiple|one statement"):
        run_query(url, sql)
    after = run_query(url, "SELECT (SELECT COUNT(*) FROM sweep_trials) t, (SELECT COUNT(*) FROM sweeps) s")
    assert after.iloc[0].tolist() == before.iloc[0].tolist()
    assert run_query(url, "SELECT COUNT(*) FROM sweeps WHERE name = 's1'").iloc[0, 0] == 1


def test_a_db_of_a_newer_schema_version_is_refused_with_what_to_do(engine_url):
    """No file can be written by a future version: the number is edited (older versions: test_migrations.py,
    on DBs written by their own code)."""
    store = ResultsStore(engine_url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_meta SET value = '99' WHERE key = 'schema_version'")
    store.engine.dispose()
    with pytest.raises(StoreError, match=r"schema version 99; this code writes version \d+\. Upgrade cxr-sweep"):
        ResultsStore(engine_url)


def test_bad_db_urls_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="not a SQLAlchemy URL"):
        ResultsStore("results.db")
    with pytest.raises(StoreError, match="does not exist"):
        ResultsStore(f"sqlite:///{tmp_path}/missing/r.db")
    with pytest.raises(StoreError, match="no such database file"):
        run_query(f"sqlite:///{tmp_path}/none.db", "SELECT 1")


def test_query_reads_views_and_recursive_ctes(db):
    assert run_query(db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
                         "SELECT COUNT(*) FROM n").iloc[0, 0] == 3
    assert len(run_query(db, "SELECT * FROM cell_summary")) > 0


def test_query_cli_prints_a_table_csv_or_json(db, capsys):
    from results.query import main

    sql = "SELECT backbone, COUNT(*) AS n FROM trial_summary WHERE status = 'COMPLETE' GROUP BY backbone ORDER BY 1"
    n = len(CELLS["resnet50"]) * len(FOLDS) * 2  # the handmade sweep: 2 complete trials per (cell, fold)
    assert main(["--db", db, sql]) == 0
    assert capsys.readouterr().out.split() == ["backbone", "n", "densenet121", str(n), "resnet50", str(n)]
    assert main(["--db", db, "--csv", sql]) == 0
    assert capsys.readouterr().out.splitlines() == ["backbone,n", f"densenet121,{n}", f"resnet50,{n}"]
    assert main(["--db", db, "--json", sql]) == 0
    assert f'"n":{n}' in capsys.readouterr().out.replace(" ", "")
    assert main(["--db", db, "DELETE FROM sweeps"]) == 2
    assert "read-only" in capsys.readouterr().err


def test_resuming_a_sweep_keeps_its_start_time(engine_url):
    store = ResultsStore(engine_url)
    store.start_sweep("s", "tiny", "first", "v1")
    first = run_query(engine_url, "SELECT started_at, spec_text FROM sweeps").iloc[0].tolist()
    store.start_sweep("s", "tiny", "second", "v2")
    assert run_query(engine_url, "SELECT started_at, spec_text FROM sweeps").iloc[0].tolist() == first


QUOTED = "o'brien; DROP TABLE sweeps"


def test_a_sweep_name_with_a_quote_is_read_as_a_name_not_as_sql(engine_url):
    expected = build_sweep(engine_url, QUOTED)
    data = load(engine_url, QUOTED)
    assert data.name == data.sweep["name"] == QUOTED and data.folds == list(FOLDS)
    test_auc = data.macro("test", "auc").set_index(["backbone", "recipe", "fold"])["value"]
    for (backbone, recipe), folds in expected.selected.items():
        assert [test_auc[(backbone, recipe, f)] for f in FOLDS] == pytest.approx([m["test_auc"] for m in folds])
    assert data.trials["selected"].sum() == len(expected.selected) * len(FOLDS)
    assert len(data.curves) == 3 * len(data.trials) and data.predictions["threshold"].notna().all()
    chosen = choose_trial(engine_url, QUOTED, "resnet50/nih")
    assert (chosen.sweep, chosen.cell) == (QUOTED, "resnet50/nih") and chosen.checkpoint
    assert load(engine_url).name == choose_trial(engine_url).sweep == QUOTED  # the latest sweep
    with pytest.raises(QueryError, match=r"no sweep named \"o'brien\" in the DB; it holds \[\"o'brien; DROP"):
        load(engine_url, "o'brien")
    assert run_query(engine_url, "SELECT COUNT(*) FROM sweeps").iloc[0, 0] == 1


def test_a_load_and_a_choice_each_read_through_one_engine(db):
    connections = []  # every connection opened, with its engine: kept, so that no engine's id is reused

    def connected(conn):
        connections.append(conn.engine)

    event.listen(Engine, "engine_connect", connected)
    try:
        for read in (lambda: load(db), lambda: load(db, "s1"), lambda: choose_trial(db),
                     lambda: choose_trial(db, "s1", "resnet50/nih")):
            connections.clear()
            read()
            assert len(connections) == 1, connections  # one engine, one connection, all of the reads
    finally:
        event.remove(Engine, "engine_connect", connected)
