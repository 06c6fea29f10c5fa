"""The results DB: idempotent upserts, WAL, read-only queries, and report numbers checked
against values computed independently in the test."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from results.query import QueryError, run_query
from results.report import cell_table, report
from results.store import ResultsStore, StoreError

LABELS = ["a", "b"]


def _trial(store, sweep_id, key, backbone, recipe, fold, val_auc, test_auc, test_ap, status="COMPLETE"):
    store.trial_started(sweep_id, key, {"backbone": backbone, "recipe": recipe, "fold": fold,
                                        "study": f"{backbone}/{recipe}/fold{fold}", "optuna_number": 0,
                                        "params": {"lr": 1e-3, "dropout": 0.1}})
    for epoch in (1, 2):
        store.epoch_reported(sweep_id, key, {"epoch": epoch, "train_loss": 0.5, "val_auc": val_auc, "best_epoch": epoch})
    store.trial_finished(sweep_id, key, status, {"epoch": 2, "best_val_auc": val_auc, "test_auc": test_auc,
                                                 "test_ap": test_ap, "test_auc_per_class": [test_auc, float("nan")]},
                         None, LABELS)


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    store = ResultsStore(url)
    sweep = store.start_sweep("s1", "tiny", "name='tiny'", "test")
    rng = np.random.default_rng(0)
    truth = {}
    for backbone in ("resnet18", "mobilenet_v2"):
        for recipe in ("scratch", "nih"):
            for fold in (0, 1, 2):
                vals = rng.uniform(0.5, 0.9, size=3)
                tests = rng.uniform(0.5, 0.9, size=(3, 2))
                for t in range(3):
                    _trial(store, sweep, f"{backbone}{recipe}{fold}{t}", backbone, recipe, fold, vals[t], *tests[t])
                truth[(backbone, recipe, fold)] = tests[int(np.argmax(vals))]  # best on validation
    _trial(store, sweep, "err", "resnet18", "scratch", 0, 0.99, 0.99, 0.99, status="ERROR")  # never selected
    return url, truth


def test_report_numbers_equal_independent_computation(db):
    url, truth = db
    table = cell_table(url, "s1").set_index(["backbone", "recipe"])
    for (backbone, recipe), row in table.iterrows():
        picked = np.array([truth[(backbone, recipe, f)] for f in range(3)])
        assert row["folds"] == 3
        assert row["auc_mean"] == pytest.approx(picked[:, 0].mean())
        assert row["auc_sd"] == pytest.approx(picked[:, 0].std(ddof=1))
        assert row["ap_mean"] == pytest.approx(picked[:, 1].mean())


def test_report_lists_every_cell_grouped_by_backbone(db):
    url, _ = db
    text = report(url)
    assert text.index("## mobilenet_v2") < text.index("## resnet18")
    assert text.count("| scratch | 3 |") == 2 and text.count("| nih | 3 |") == 2


def test_a_cell_without_finished_trials_is_marked_missing(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path}/r.db")
    sweep = store.start_sweep("s", "tiny", "", "test")
    store.trial_started(sweep, "k", {"backbone": "resnet18", "recipe": "scratch", "fold": 0, "study": "x",
                                     "optuna_number": 0, "params": {}})
    assert "| scratch | 0 | missing | missing |" in report(f"sqlite:///{tmp_path}/r.db")


def test_replayed_writes_do_not_duplicate_rows(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    store = ResultsStore(url)
    sweep = store.start_sweep("s", "tiny", "", "test")
    for _ in range(2):  # Ray replays work after its last snapshot on resume
        _trial(store, sweep, "k", "resnet18", "scratch", 0, 0.8, 0.7, 0.6)
    assert store.start_sweep("s", "tiny", "", "test") == sweep
    counts = run_query(url, "SELECT (SELECT COUNT(*) FROM sweep_trials) t, (SELECT COUNT(*) FROM learning_curves) c, "
                            "(SELECT COUNT(*) FROM trial_metrics) m")
    assert counts.iloc[0].tolist() == [1, 2, 5]  # val auc, test auc/ap, per-class auc a/b


def test_nan_metrics_are_stored_as_null(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    store = ResultsStore(url)
    _trial(store, store.start_sweep("s", "t", "", "v"), "k", "r", "s", 0, 0.8, 0.7, 0.6)
    value = run_query(url, "SELECT value FROM trial_metrics WHERE class_name = 'b'").iloc[0, 0]
    assert value is None or np.isnan(value)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path}/r.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.mark.parametrize("sql", ["DELETE FROM sweep_trials", "DROP TABLE sweep_trials", "CREATE TABLE x (a int)",
                                 "UPDATE sweeps SET name = 'x'", "SELECT 1; DELETE FROM sweep_trials",
                                 "ATTACH DATABASE ':memory:' AS other", "PRAGMA query_only = OFF"])
def test_query_refuses_writes_and_leaves_the_db_unchanged(db, sql):
    url, _ = db
    before = run_query(url, "SELECT COUNT(*) FROM sweep_trials").iloc[0, 0]
    with pytest.raises(QueryError):
        run_query(url, sql)
    assert run_query(url, "SELECT COUNT(*) FROM sweep_trials").iloc[0, 0] == before
    assert run_query(url, "SELECT COUNT(*) FROM sweeps WHERE name = 's1'").iloc[0, 0] == 1


@pytest.mark.parametrize("version, expected", [
    ("99", "schema version 99; this code writes version 2"),
    ("1", "schema version 1, older than this code's 2 .*renamed sweep_trials"),
])
def test_a_db_of_another_schema_version_is_refused_with_what_to_do(tmp_path, version, expected):
    url = f"sqlite:///{tmp_path}/r.db"
    ResultsStore(url)
    with sqlite3.connect(tmp_path / "r.db") as conn:
        conn.execute(f"UPDATE schema_meta SET value = '{version}' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=expected):
        ResultsStore(url)


def test_bad_db_urls_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="not a SQLAlchemy URL"):
        ResultsStore("results.db")
    with pytest.raises(StoreError, match="does not exist"):
        ResultsStore(f"sqlite:///{tmp_path}/missing/r.db")
    with pytest.raises(StoreError, match="no such database file"):
        run_query(f"sqlite:///{tmp_path}/none.db", "SELECT 1")


def test_query_reads_views_and_recursive_ctes(db):
    url, _ = db
    assert run_query(url, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
                          "SELECT COUNT(*) FROM n").iloc[0, 0] == 3
    assert len(run_query(url, "SELECT * FROM cell_summary")) > 0


def test_resuming_a_sweep_keeps_its_start_time(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    store = ResultsStore(url)
    store.start_sweep("s", "tiny", "first", "v1")
    first = run_query(url, "SELECT started_at, spec_text FROM sweeps").iloc[0].tolist()
    store.start_sweep("s", "tiny", "second", "v2")
    assert run_query(url, "SELECT started_at, spec_text FROM sweeps").iloc[0].tolist() == first
