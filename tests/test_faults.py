"""Faults a long sweep meets, injected for real: a writer killed inside its transaction, a full DB,
an unreadable checkpoint, a diverging trial, a trial's worker process killed mid-epoch.

`make chaos` runs the same tests with more repetitions (CXR_SWEEP_CHAOS_SCALE).
"""
from __future__ import annotations

import copy
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from sqlalchemy import event

from results.query import run_query
from results.store import ResultsStore, StoreError
from tests.conftest import REPO
from tests.handmade_sweep import epoch_report, trial_result, write_trial
from tests.helpers import finished_trials, fit_config, spec_text, sweep_env
from trainables.engine import NonFiniteLoss
from trainables.fit import fit
from trainables.tune_adapter import STATE_FILE, load_state
from vocab.names import FINAL_SPLITS, PER_CLASS_METRICS, SPLIT_METRICS

SCALE = int(os.environ.get("CXR_SWEEP_CHAOS_SCALE", "1"))
LABELS = [f"label{j}" for j in range(14)]
IMAGES = 3000  # 42,000 prediction rows: the finishing transaction takes a good part of a second
# a completed trial's: its validation AUC, every metric of each final split (macro and per class), its thresholds
METRIC_ROWS = 1 + len(FINAL_SPLITS) * (len(SPLIT_METRICS) + len(PER_CLASS_METRICS) * len(LABELS)) + len(LABELS)

WRITER = f"""
import sys, numpy as np
from results.store import ResultsStore
from tests.handmade_sweep import epoch_report, trial_result
labels = {LABELS!r}
store = ResultsStore(sys.argv[1])
sweep = store.start_sweep("chaos", "x", "", "test", [0], 1)
start = int(sys.argv[2])
rng = np.random.default_rng(start)
for i in range(start, start + 1000):
    key = f"t{{i}}"
    store.trial_started(sweep, key, {{"backbone": "resnet18", "recipe": "r", "fold": 0, "study": key,
                                      "optuna_number": i, "params": {{}}}})
    store.epoch_reported(sweep, key, epoch_report(epoch=1, val_auc=0.7))
    probs = rng.random(({IMAGES}, len(labels)))
    print(f"finishing {{i}}", flush=True)
    store.trial_finished(sweep, key, "COMPLETE", trial_result(len(labels), best_val_auc=0.7, test_auc=0.8), None, labels,
                         {{"test": {{"image_keys": [f"i{{n}}" for n in range({IMAGES})], "patient_keys": ["p"] * {IMAGES},
                                    "probs": probs, "labels": (probs > 0.5).astype(float)}}}})
    print(f"finished {{i}}", flush=True)
"""


def _kill_writer_inside_its_transaction(url: str, start: int, rng: random.Random) -> tuple[int, str]:
    """Start a writer, wait until it is inside a trial's finishing transaction, SIGKILL it; (trial, last line)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, str(start)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    line = ""
    while not line.startswith("finishing"):
        line = proc.stdout.readline().strip()
        assert line or proc.poll() is None, "the writer died on its own"
    time.sleep(rng.uniform(0.0, 0.15))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(line.split()[1]), line


def test_a_writer_killed_inside_its_transaction_leaves_no_half_written_trial(tmp_path):
    url, path = f"sqlite:///{tmp_path}/r.db", tmp_path / "r.db"
    rng = random.Random(0)
    kills, torn = 10 * SCALE, 0
    for _ in range(kills):
        start = int(run_query(url, "SELECT COUNT(*) FROM sweep_trials").iloc[0, 0]) if path.exists() else 0
        trial, _ = _kill_writer_inside_its_transaction(url, start, rng)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = run_query(url, f"""SELECT t.status, (SELECT COUNT(*) FROM test_predictions p WHERE p.trial_id = t.id) n,
                                  (SELECT COUNT(*) FROM trial_metrics m WHERE m.trial_id = t.id) m
                                  FROM sweep_trials t WHERE t.trial_key = 't{trial}'""")
        status, predictions, metrics = rows.iloc[0].tolist()
        # all of the trial's finishing transaction or none of it
        assert (status, predictions, metrics) in {("COMPLETE", IMAGES * len(LABELS), METRIC_ROWS), ("RUNNING", 0, 0)}
        torn += status == "RUNNING"
    totals = run_query(url, "SELECT status, COUNT(*) AS n FROM sweep_trials GROUP BY status")
    complete = run_query(url, "SELECT COUNT(*) FROM test_predictions").iloc[0, 0]
    assert complete == IMAGES * len(LABELS) * int(totals.set_index("status")["n"].get("COMPLETE", 0))
    assert torn >= kills // 2  # most kills landed inside the transaction (the test is not vacuous)
    print(f"[chaos] {kills} writer kills: {torn} inside the finishing transaction, integrity ok every time")


def _cap_pages(store: ResultsStore, pages: int):
    """Give every new connection of the store a page limit: SQLite's way to make a disk 'full'."""
    store.engine.dispose()

    def cap(dbapi_connection, _record):
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(store.engine, "connect", cap)
    return cap


def test_a_full_db_is_a_clear_error_loses_nothing_and_writing_resumes_after_space_is_freed(tmp_path):
    url, path = f"sqlite:///{tmp_path}/r.db", tmp_path / "r.db"
    store = ResultsStore(url)
    sweep = store.start_sweep("full", "x", "", "test", [0], 1)
    with sqlite3.connect(path) as conn:
        used = conn.execute("PRAGMA page_count").fetchone()[0]
    cap = _cap_pages(store, used + 60)  # room for a few trials of 300 images x 14 labels
    probs = np.random.default_rng(0).random((300, len(LABELS)))
    predictions = {"test": {"image_keys": [f"i{n}" for n in range(300)], "patient_keys": ["p"] * 300, "probs": probs,
                            "labels": (probs > 0.5).astype(float)}}
    written = 0
    with pytest.raises(StoreError, match=r"is full .*nothing committed is lost.*--resume"):
        for i in range(100):
            write_trial(store, sweep, f"t{i}", study="s", optuna_number=i, result={"best_val_auc": 0.5}, labels=LABELS,
                        predictions=predictions)
            written += 1
    assert 0 < written < 100
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    counts = run_query(url, "SELECT COUNT(*) FROM test_predictions").iloc[0, 0]
    assert counts == written * 300 * len(LABELS)  # every committed trial whole, the failed one not at all
    event.remove(store.engine, "connect", cap)  # space freed
    store.engine.dispose()
    failed = f"t{written}" if run_query(url, f"SELECT COUNT(*) FROM sweep_trials WHERE trial_key = 't{written}'"
                                        ).iloc[0, 0] else None
    if failed is None:  # the disk filled while the trial was being started
        store.trial_started(sweep, f"t{written}", {"backbone": "b", "recipe": "r", "fold": 0, "study": "s",
                                                   "optuna_number": written, "params": {}})
    store.trial_finished(sweep, f"t{written}", "COMPLETE", trial_result(len(LABELS), best_val_auc=0.5), None, LABELS,
                         predictions)
    assert run_query(url, "SELECT COUNT(*) FROM test_predictions").iloc[0, 0] == (written + 1) * 300 * len(LABELS)


def _reports(cfg, state=None):
    reports = []
    fit(cfg, report=lambda m, s: reports.append((m, copy.deepcopy(s))), log=lambda *_: None, state=state)
    return reports


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not_a_state"])
def test_an_unreadable_checkpoint_restarts_the_trial_from_scratch_with_a_warning(prepared_dir, tmp_path, damage):
    cfg = fit_config(prepared_dir, epochs=2)
    uninterrupted = _reports(cfg)
    torch.save(uninterrupted[0][1], tmp_path / STATE_FILE)
    whole = (tmp_path / STATE_FILE).read_bytes()
    broken = {"truncated": whole[: len(whole) // 2], "garbage": os.urandom(4096), "empty": b""}.get(damage)
    if damage == "not_a_state":
        torch.save({"weights": torch.zeros(3)}, tmp_path / STATE_FILE)
    else:
        (tmp_path / STATE_FILE).write_bytes(broken)
    with pytest.warns(RuntimeWarning, match=f"checkpoint {tmp_path / STATE_FILE} cannot be read.*from scratch"):
        state = load_state(tmp_path)
    assert state is None
    again = _reports(cfg, state=state)
    assert [m["epoch"] for m, _ in again] == [1, 2]  # from scratch, and seeded: the same result
    assert again[-1][0]["test_auc"] == uninterrupted[-1][0]["test_auc"]


def test_a_good_checkpoint_still_loads(prepared_dir, tmp_path):
    reports = _reports(fit_config(prepared_dir, epochs=1))
    torch.save(reports[0][1], tmp_path / STATE_FILE)
    assert load_state(tmp_path)["epoch"] == 1


def test_a_diverging_trial_stops_with_the_reason(prepared_dir):
    with pytest.raises(NonFiniteLoss, match="training loss is nan in this epoch; lower the learning rate"):
        _reports(fit_config(prepared_dir, epochs=2, lr=1e30))


def test_diverged_predictions_stop_the_trial_with_the_reason_not_a_scoring_error(prepared_dir):
    """Seen in a sweep: the last epoch's mean loss was finite, the weights were not, and scikit-learn's
    'Input contains NaN' was all the trial said."""
    from trainables.fit import _Run

    run = _Run(fit_config(prepared_dir, epochs=2), log=lambda *_: None)
    indices = run.split.val
    probs = np.full((len(indices), len(run.data.label_names)), np.nan, dtype=np.float32)
    with pytest.raises(NonFiniteLoss, match="predictions are not finite after epoch 0 .*lower the learning rate"):
        run.score(indices, probs)


KILLS = [(2, False), (2, True)] if SCALE == 1 else [(epoch, damage) for epoch in (1, 2, 3, 4, 5) for damage in (False, True)]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after, damage", KILLS, ids=[f"epoch{e}{'-checkpoint-damaged' * d}" for e, d in KILLS])
def test_a_trial_worker_killed_mid_epoch_resumes_to_the_uninterrupted_result(prepared_dir, tmp_path, kill_after,
                                                                            damage):
    """Ray restores the trial from its last checkpoint; when that checkpoint is damaged too (`damage`: truncated
    just before the kill), the trial warns and starts again from scratch, to the same result (seeded)."""
    import ray
    from ray import tune

    from trainables.tune_adapter import TuneFit

    cfg = fit_config(prepared_dir, epochs=6)
    uninterrupted = _reports(cfg)[-1][0]
    config = {**cfg.as_dict(), "recipe": "scratch", "study": "kill/fold0", "checkpoint_every": 1}  # a trial's config
    storage = tmp_path / "ray"
    killed: list[int] = []

    def kill_after_epoch(epoch: int):
        """Once the checkpoint of `epoch` is saved (the worker saves it before it trains on) and the last
        one is not, SIGKILL the process training the trial: it is then inside a later epoch."""
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            saved = {p.name for p in storage.glob("kill/*/checkpoint_*")}
            if f"checkpoint_{epoch - 1:06d}" in saved and f"checkpoint_{cfg.epochs - 1:06d}" not in saved:
                for state in storage.glob("kill/*/checkpoint_*/" + STATE_FILE) if damage else ():
                    state.write_bytes(state.read_bytes()[:1000])  # whichever one Ray restores from
                for process in psutil.process_iter(["pid", "name"]):
                    name = process.info["name"] or ""  # ray::<the trainable's class>.train
                    if not (name.startswith("ray::") and name.endswith(".train")):
                        continue
                    try:  # this test's Ray only (its raylet is our child): never a trial of another test's sweep
                        ours = os.getpid() in {parent.pid for parent in process.parents()}
                    except psutil.NoSuchProcess:
                        continue
                    if ours:
                        process.send_signal(signal.SIGKILL)
                        killed.append(process.info["pid"])
                        return
            time.sleep(0.02)

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        watcher = threading.Thread(target=kill_after_epoch, args=(kill_after,), daemon=True)
        watcher.start()
        tuner = tune.Tuner(tune.with_resources(TuneFit, {"cpu": 1}), param_space=config,
                           run_config=tune.RunConfig(name="kill", storage_path=str(storage), verbose=0,
                                                     failure_config=tune.FailureConfig(max_failures=2)))
        grid = tuner.fit()
        watcher.join(timeout=5)
    finally:
        ray.shutdown()
    assert killed, "the trial's worker was never killed"
    final = grid[0]
    assert final.error is None
    assert final.metrics["pid"] != killed[0]  # a new worker finished it
    for key in ("epoch", "val_auc", "test_auc", "test_ap", "outer_train_mae", "train_loss"):
        assert final.metrics[key] == pytest.approx(uninterrupted[key], abs=1e-6), key
    reports = [json.loads(line) for line in next(storage.glob("kill/*/result.json")).read_text().splitlines()]
    after = [r["epoch"] for r in reports if r["pid"] != killed[0]]  # what the new worker trained
    if damage:
        assert after == [1, 2, 3, 4, 5, 6], reports  # the damaged checkpoint was not used: from scratch
    else:
        # from the last checkpoint Ray had registered (none yet, when killed right after epoch 1: from scratch)
        assert after == list(range(after[0], 7)) and (after[0] > 1 or kill_after == 1)
        # No epoch recorded twice. Ray's own result.json may lack the lines of the killed worker that Ray had not
        # copied to the storage yet: restoring a trial, it copies the storage's result.json over its local one
        # (ray/tune/logger/json.py, log_trial_start), so a kill right after epoch 1 can lose that line there.
        epochs = [r["epoch"] for r in reports]
        assert epochs == sorted(set(epochs)) and epochs[-1] == 6 and set(after) <= set(epochs), epochs


FULL_DISK_SPEC = spec_text("fulldisk", grid={"backbone": ["mobilenet_v2"]}, train={"epochs": 2},
                           resources={"max_failures": 0})


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB file system (tmpfs) for Ray's checkpoints: a full disk for real. Needs root to mount."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk test for checkpoints is skipped")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
@pytest.mark.skipif(SCALE == 1, reason="make chaos only: two sweeps (the resume from a damaged Ray experiment state "
                                       "is in test_cluster_and_resume)")
def test_a_full_checkpoint_disk_fails_trials_clearly_and_the_sweep_resumes_after_space_is_freed(tmp_path, small_disk):
    spec = tmp_path / "full.toml"
    spec.write_text(FULL_DISK_SPEC)
    db = f"sqlite:///{tmp_path}/results.db"
    args = [sys.executable, "-m", "sweeper.run", "--spec", str(spec), "--home", str(tmp_path / "home"), "--db", db,
            "--num-cpus", "2", "--sweep", "full", "--storage", str(small_disk / "ray"), "--bootstrap", "50"]
    env = sweep_env(tmp_path)
    first = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    rows = run_query(db, "SELECT status, error FROM sweep_trials")
    assert list(rows["status"]) == ["ERROR", "ERROR"]
    assert all("No space left on device" in e for e in rows["error"]), rows["error"].tolist()
    with sqlite3.connect(tmp_path / "results.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    subprocess.run(["mount", "-o", "remount,size=2g", str(small_disk)], check=True)  # space freed
    from sweeper.driver import damaged_experiment_state

    damaged = damaged_experiment_state(str(small_disk / "ray" / "full")) is not None  # Ray's own files truncated too
    print(f"[chaos] full checkpoint disk: Ray's experiment state {'damaged' if damaged else 'intact'}")
    second = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert ("Continuing from the Optuna studies" in second.stdout) == damaged, second.stdout[-3000:]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = run_query(db, "SELECT trial_key, status, error FROM sweep_trials")
    assert list(rows["status"]) == ["COMPLETE", "COMPLETE"] and rows["error"].isna().all()
    assert run_query(db, "SELECT COUNT(*) FROM test_predictions").iloc[0, 0] > 0
    import optuna

    for row in run_query(db, "SELECT study, optuna_number, status FROM sweep_trials").itertuples():
        trial = optuna.load_study(study_name=f"full/{row.study}", storage=db).trials[row.optuna_number]
        assert trial.state.name == row.status, (row.study, trial.state.name, row.status)


@pytest.mark.slow
@pytest.mark.skipif(SCALE == 1, reason="a whole sweep twice: make chaos runs it (the fast version is the "
                                       "max_page_count test above)")
def test_a_db_disk_filling_up_mid_sweep_stops_it_clearly_and_resume_finishes_it(tmp_path, small_disk):
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    db_path = small_disk / "results.db"
    env = sweep_env(tmp_path)
    args = [sys.executable, "-m", "sweeper.run", "--spec", "tiny", "--home", str(tmp_path / "home"),
            "--db", f"sqlite:///{db_path}", "--num-cpus", "2", "--sweep", "dbfull", "--bootstrap", "50"]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    deadline = time.monotonic() + 300
    while finished_trials(db_path) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, "no 2 finished trials in time"
        time.sleep(0.5)
    ballast = small_disk / "ballast"
    subprocess.run(["dd", "if=/dev/zero", f"of={ballast}", "bs=1M"], capture_output=True)  # until the disk is full
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 2, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"error: DB sqlite:///{db_path} is full"), err[-2000:]
    assert "--resume" in err.strip().splitlines()[-1] and "Traceback" not in err.strip().splitlines()[-1]
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ballast.unlink()  # space freed
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    rows = run_query(f"sqlite:///{db_path}", "SELECT study, optuna_number, status FROM sweep_trials")
    assert len(rows) == 16 and not rows.duplicated(["study", "optuna_number"]).any()
    assert set(rows["status"]) <= {"COMPLETE", "PRUNED"}


def test_a_full_db_met_by_the_searcher_or_the_callback_ends_the_sweep_with_the_stores_message(tmp_path, small_disk):
    """Optuna's writes (the searcher) and ours (the results callback) share the results DB; each records a DB
    failure as it meets it, and the driver turns Ray's error around it into the store's message. Nothing is
    recognised by its text. A real SQLite file on a real 4 MB disk, filled up."""
    from optuna.distributions import FloatDistribution
    from ray.tune.error import TuneError

    from sweeper.callbacks import ResultsCallback
    from sweeper.driver import _fit
    from sweeper.search import PerStudyOptunaSearcher, StudyPlan

    url = f"sqlite:///{small_disk}/results.db"
    sweep = ResultsStore(url).start_sweep("full", "x", "", "test", [0], 1)
    searcher = PerStudyOptunaSearcher([StudyPlan(key="cell/fold0", config={"outer_fold": 0}, n_trials=10_000)],
                                      {"lr": FloatDistribution(1e-4, 1e-2, log=True)}, storage=url, prefix="full/")
    callback = ResultsCallback(url, sweep, 1, LABELS)
    trial = type("Trial", (), {"trial_id": "t0", "config": {
        "data_dir": "/d", "backbone": "resnet18", "outer_fold": 0, "lr": 1e-3, "dropout": 0.1, "recipe": "scratch",
        "study": "cell/fold0", "optuna_number": 0}})()
    callback.on_trial_start(0, [], trial)
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'ballast'}", "bs=64K"], capture_output=True)

    class RayAroundIt:  # Tuner.fit: Ray runs the searcher and callbacks, and raises its own error when one fails
        def __init__(self, step):
            self.step, self.raised = step, None

        def fit(self):
            try:
                for i in range(10_000):
                    self.step(i)
            except Exception as exc:  # noqa: BLE001
                self.raised = exc
                raise TuneError("Traceback (most recent call last): ...") from None  # the chain lost, as Ray may
            return "finished"

    searcher_run = RayAroundIt(lambda i: searcher.suggest(f"t{i}"))
    with pytest.raises(StoreError) as ended:
        _fit(searcher_run)
    assert not isinstance(searcher_run.raised, StoreError)  # Optuna's own error, from SQLAlchemy's
    assert str(ended.value).startswith(f"DB {url} is full (database or disk is full)")
    assert "nothing committed is lost" in str(ended.value) and "--resume" in str(ended.value)
    callback_run = RayAroundIt(lambda epoch: callback.on_trial_result(
        0, [], trial, epoch_report(epoch=epoch + 1, val_auc=0.5, train_loss=1.0)))
    with pytest.raises(StoreError, match="is full"):
        _fit(callback_run)
    assert isinstance(callback_run.raised, StoreError)
    (small_disk / "ballast").unlink()

    def not_the_db(i):
        raise OSError(28, "No space left on device: '/ray/checkpoint_000001'")

    with pytest.raises(TuneError):  # a failure that is not the DB's (a checkpoint disk): Ray's error stands
        _fit(RayAroundIt(not_the_db))
    assert _fit(RayAroundIt(lambda i: None)) == "finished"


def test_a_truncated_ray_experiment_state_is_found_and_set_aside(tmp_path):
    from sweeper.driver import damaged_experiment_state, set_aside

    state = tmp_path / "experiment_state-2026-11-23_14-30-46.json"
    state.write_text(json.dumps({"trial_data": ["x" * 100], "runner_data": {}}))
    assert damaged_experiment_state(str(tmp_path)) is None  # whole: nothing to say
    state.write_text(state.read_text()[:40])  # what a full disk leaves
    found, reason = damaged_experiment_state(str(tmp_path))
    assert Path(found) == state and "Unterminated string" in reason
    assert Path(set_aside(found)) == tmp_path / f"{state.name}.damaged" and not state.exists()
    assert damaged_experiment_state(str(tmp_path)) is None  # Ray writes a new one; the damaged one stays for a look
    import ray.cloudpickle

    search = tmp_path / "search_gen_state-2026-11-23_14-30-46.json"  # a pickle, despite its name
    search.write_bytes(ray.cloudpickle.dumps({"counter": 3}))
    assert damaged_experiment_state(str(tmp_path)) is None
    search.write_bytes(b"")  # seen in a chaos run: Ray then "restarts the experiment" on restore
    found, reason = damaged_experiment_state(str(tmp_path))
    assert Path(found) == search and "EOFError" in reason


def _trainable_that_cannot_start():
    """A Tune trainable whose actor dies in its creation task, as one on a node that cannot import the code or
    open its storage does: Ray then reports the trial's error without ever calling on_trial_start."""
    from ray import tune

    class CannotStart(tune.Trainable):
        def setup(self, config):
            raise RuntimeError("this node cannot open /shared/cxr-sweep (a sentinel error)")

        def step(self):
            return {"done": True}

    return CannotStart


def _trainable_slow_to_end(report: dict):
    """A function trainable stopped after its first report (as ASHA stops one) whose thread then takes 3 s to end
    (as ours can on a busy node, unwinding its data loaders and giving its memory back): longer than Ray's
    default wait before it reuses the worker for the next trial (2 s)."""
    import time

    def slow_to_end(config):
        from ray import tune

        try:
            tune.report(report)
            tune.report(report)  # never returns: the trial is stopped after its first
        finally:
            time.sleep(3)

    return slow_to_end


def _restore_from_a_missing_checkpoint(tmp_path: Path) -> tuple[bool, bool]:
    """The sweep's trainable asked by Ray to restore from a checkpoint that is gone (Ray's record of a killed
    driver can name one that a newer checkpoint, or a pruning, deleted since): it starts from scratch, with a
    warning, where Ray's own function trainable fails the trial. (Restored?, restored from one that exists?)"""
    from ray import tune
    from ray.train._internal.session import shutdown_session
    from ray.train._internal.storage import StorageContext
    from ray.tune.trainable import wrap_function

    from trainables.tune_adapter import TuneFit, tune_fit

    def storage(name):
        return StorageContext(storage_path=str(tmp_path / "restore"), experiment_dir_name="e", trial_dir_name=name)

    gone = tune.Checkpoint.from_directory(str(tmp_path / "restore" / "e" / "t" / "checkpoint_000000"))
    try:  # each trainable opens the process's one Train session
        with pytest.raises(ValueError, match="does not exist on storage anymore"):  # Ray's, which CI met
            wrap_function(tune_fit)(config={}, storage=storage("bare")).restore(gone)
    finally:
        shutdown_session()
    try:
        trainable = TuneFit(config={}, storage=storage("t"))
        with pytest.warns(RuntimeWarning, match="is gone .* the trial starts again from scratch"):
            trainable.restore(gone)
        first = trainable._restored
        (tmp_path / "kept").mkdir()
        trainable.restore(tune.Checkpoint.from_directory(str(tmp_path / "kept")))
        return first, trainable._restored
    finally:
        shutdown_session()


def test_trial_failures_before_any_report_are_recorded_and_a_reused_worker_waits_for_its_last_trial(tmp_path):
    """A real Ray runtime with the sweep's worker environment and Tuners, the results callback writing real
    SQLite files. A trial whose worker never starts gets its row and error, so that the run's summary names it
    (Ray calls on_trial_error but never on_trial_start: it used to leave no row); so does a trial Ray ended in
    ERROR without calling on_trial_error at all, at the experiment's end. And with the sweep's wait a worker is
    reused after a trial that is slow to end: with Ray's 2 s, the next trial failed ("reuse requires
    reset_config() to ... return True"; CI's smoke sweep) and Ray 2.x then hangs. And a trial whose checkpoint
    is gone restarts from scratch (a resume in CI failed so)."""
    import threading

    import ray
    from ray import tune

    from sweeper.callbacks import ResultsCallback
    from sweeper.driver import summary, worker_runtime_env

    class KeepTrials(tune.Callback):
        def on_experiment_end(self, trials, **info):
            self.trials = list(trials)

    url, late = f"sqlite:///{tmp_path}/results.db", f"sqlite:///{tmp_path}/late.db"
    store, late_store = ResultsStore(url), ResultsStore(late)
    sweep = store.start_sweep("nostart", "x", "", "test", [0], 1)
    late_sweep = late_store.start_sweep("nostart", "x", "", "test", [0], 1)
    config = {"data_dir": "/d", "backbone": "resnet18", "outer_fold": 0, "lr": 1e-3, "dropout": 0.1,
              "recipe": "scratch", "study": "cell/fold0", "optuna_number": 0}
    kept, reused = KeepTrials(), []
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, runtime_env=worker_runtime_env(),
             _temp_dir=tempfile.mkdtemp(prefix="r", dir="/tmp"))
    try:
        grid = tune.Tuner(_trainable_that_cannot_start(), param_space=config, run_config=tune.RunConfig(
            name="a", storage_path=str(tmp_path / "ray"), callbacks=[ResultsCallback(url, sweep, 3, LABELS), kept],
            verbose=0, failure_config=tune.FailureConfig(max_failures=0))).fit()
        tuner = tune.Tuner(
            _trainable_slow_to_end(epoch_report(epoch=1, val_auc=0.6)),
            param_space={**config, "optuna_number": tune.grid_search([1, 2])},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
            run_config=tune.RunConfig(name="b", storage_path=str(tmp_path / "ray"), verbose=0,
                                      callbacks=[ResultsCallback(url, sweep, 3, LABELS)],
                                      stop={"training_iteration": 1}))
        fitting = threading.Thread(target=lambda: reused.extend(tuner.fit()), daemon=True)
        fitting.start()
        fitting.join(timeout=120)
        assert not fitting.is_alive(), "Ray hung after it could not reuse a worker whose last trial had not ended"
        # the first Ray trial, met at the experiment's end by a callback whose DB has no row for it
        ResultsCallback(late, late_sweep, 1, LABELS).on_experiment_end(kept.trials)
        restarted = _restore_from_a_missing_checkpoint(tmp_path)
    finally:
        ray.shutdown()
    assert grid[0].error is not None and [r.error for r in reused] == [None] * 2
    assert restarted == (False, True)
    rows = run_query(url, "SELECT study, optuna_number, status, error FROM sweep_trials ORDER BY id")
    assert rows["status"].tolist() == ["ERROR", "PRUNED", "PRUNED"], rows
    assert "this node cannot open /shared/cxr-sweep (a sentinel error)" in rows["error"][0]
    said = summary(store.status_counts(sweep), 1, {}, {}, url, store.failed_trials(sweep)).splitlines()
    assert said[2].startswith("[sweeper]   cell/fold0 fold 0 failed: ") and "sentinel error" in said[2], said
    late_rows = run_query(late, "SELECT study, fold, status, error FROM sweep_trials")
    assert late_rows[["study", "fold", "status"]].values.tolist() == [["cell/fold0", 0, "ERROR"]]
    assert "sentinel error" in late_rows["error"][0]
