"""Sweeps on a simulated multi-node cluster, and a driver killed mid-sweep then resumed: real Ray
processes, a real SQLite file, the real CLI."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from results.query import run_query
from tests.conftest import REPO
from tests.helpers import finished_trials, reported_nodes, spec_text, sweep_args, sweep_env

pytestmark = pytest.mark.slow

# The head trains nothing; each worker node has one CPU and one GPU as Ray resources only (trials train on the CPU)
CLUSTER = dict(data={"phantom": {"n_patients": 24, "seed": 0}}, search={"trials": 2}, asha={"grace_period": 2},
               train={"epochs": 2, "checkpoint_every": 2},
               resources={"cpus_per_trial": 1, "gpus_per_trial": 1, "device": "cpu"})
CLUSTER_SPEC = spec_text("cluster", **CLUSTER)


def _sweep_args(spec: str, home: Path, name: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "sweeper.run", *sweep_args(spec, home, name, *more)]


KILL_SPEC = spec_text("kill", data={"phantom": {"n_patients": 24, "seed": 0}}, search={"trials": 4},
                      asha={"grace_period": 1}, train={"epochs": 2})
KILL_TRIALS = 2 * 4  # folds x trials


def _kill_driver_mid_sweep(home: Path, name: str) -> tuple[list[str], dict]:
    """Start a sweep of 8 trials and SIGKILL the driver with its local Ray once 3 have finished."""
    env = sweep_env(home.parent)
    (home.parent / "kill.toml").write_text(KILL_SPEC)
    args = _sweep_args(str(home.parent / "kill.toml"), home, name, "--num-cpus", "2", "--no-report-images",
                       "--bootstrap", "50")
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env,
                              start_new_session=True)  # its own process group: the driver and its local Ray
    deadline = time.monotonic() + 400
    try:
        while finished_trials(home / "results.db") < 3 or not list((home / "ray" / name).glob("experiment_state*")):
            assert driver.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no 3 finished trials in time"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # like a machine that lost power: no clean-up at all
        driver.wait()
    assert 3 <= finished_trials(home / "results.db") < KILL_TRIALS
    return args, env


def _settled(home: Path, quiet: float = 2.0, limit: float = 60.0) -> None:
    """Wait until no file under `home` has changed for `quiet` seconds (at most `limit`)."""
    def snapshot():
        return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in home.rglob("*") if p.is_file())

    deadline, last, since = time.monotonic() + limit, None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            now = snapshot()
        except FileNotFoundError:  # a file removed while it was listed: still moving
            now = None
        if now is not None and now == last:
            if time.monotonic() - since >= quiet:
                return
        else:
            last, since = now, time.monotonic()
        time.sleep(0.25)


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory):
    """One sweep killed mid-way, kept as a copy: each resume test puts it back at the same path (Ray's
    experiment state and the DB name their files by absolute path) and resumes it its own way."""
    home = tmp_path_factory.mktemp("killed") / "home"
    args, env = _kill_driver_mid_sweep(home, "killed")
    _settled(home)  # Ray's workers outlive the killed driver and raylet by a moment, still writing there
    kept = home.parent / "as-killed"
    shutil.copytree(home, kept, symlinks=True)

    def restore() -> tuple[Path, list[str], dict]:
        deadline = time.monotonic() + 30
        while home.exists():  # a straggler's file written while the tree was removed: remove again
            shutil.rmtree(home, ignore_errors=True)
            assert time.monotonic() < deadline, f"{home} could not be removed"
            time.sleep(0.2)
        shutil.copytree(kept, home, symlinks=True)
        return home, args, env

    yield restore
    shutil.rmtree(home.parent, ignore_errors=True)


def _assert_every_trial_recorded_once(home: Path, name: str, per_study: int = 4, epochs: int = 2) -> None:
    db = f"sqlite:///{home}/results.db"
    rows = run_query(db, "SELECT trial_key, study, optuna_number, status, epochs_run FROM sweep_trials")
    assert len(rows) == 2 * per_study and rows["trial_key"].is_unique  # 2 folds
    assert set(rows["status"]) <= {"COMPLETE", "PRUNED"}
    assert (rows.groupby("study").size() == per_study).all() and not rows.duplicated(["study", "optuna_number"]).any()
    complete = rows.loc[rows["status"] == "COMPLETE"]
    assert (complete["epochs_run"] == epochs).all()
    tested = run_query(db, "SELECT DISTINCT t.trial_key FROM trial_metrics m JOIN sweep_trials t ON t.id = m.trial_id "
                           "WHERE m.split = 'test'")
    assert set(tested["trial_key"]) == set(complete["trial_key"])  # no finished result lost
    for study in rows["study"].unique():  # Optuna agrees; its only extra trials are orphans marked FAIL
        trials = optuna.load_study(study_name=f"{name}/{study}", storage=db).trials
        mine = rows.loc[rows["study"] == study].set_index("optuna_number")["status"]
        for trial in trials:
            assert trial.state.name == mine.get(trial.number, "FAIL"), (study, trial.number)
    assert run_query(db, "SELECT status FROM sweeps").iloc[0, 0] == "FINISHED"


def test_a_driver_killed_mid_sweep_resumes_with_every_trial_recorded_once(killed_sweep):
    home, args, env = killed_sweep()
    proc = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_every_trial_recorded_once(home, "killed")


def test_a_resume_whose_ray_experiment_state_was_truncated_continues_from_the_studies_in_the_db(killed_sweep):
    """What a full disk does to Ray's own record of the experiment (it shares the checkpoints' storage):
    Ray would start the whole experiment again; the driver runs only what the DB says is missing."""
    home, args, env = killed_sweep()
    db = f"sqlite:///{home}/results.db"
    kept = run_query(db, "SELECT trial_key FROM sweep_trials WHERE status != 'RUNNING'")["trial_key"]
    state = sorted((home / "ray" / "killed").glob("experiment_state*.json"))[-1]
    state.write_bytes(state.read_bytes()[:100])
    proc = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Ray's experiment state {state} is damaged" in proc.stdout, proc.stdout[-3000:]
    assert "Continuing from the Optuna studies in the results DB" in proc.stdout
    assert Path(f"{state}.damaged").is_file()
    _assert_every_trial_recorded_once(home, "killed")
    again = run_query(db, "SELECT trial_key FROM sweep_trials")["trial_key"]
    assert set(kept) <= set(again)  # what had finished before the kill was kept, not run again


def _running_on(storage: Path, node_id: str, last_epoch: int) -> bool:
    """Has a trial reported from `node_id` and not yet reached its last epoch?"""
    for result in storage.glob("*/result.json"):
        rows = []
        for line in result.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # being written
                break
        if rows and rows[-1].get("node_id") == node_id and rows[-1].get("epoch", 0) < last_epoch:
            return True
    return False


def test_a_worker_node_removed_mid_sweep_has_its_trials_rescheduled_and_finished(tmp_path):
    """A sweep on two GPU worker nodes and a head that trains nothing: both workers train, every trial is
    recorded once, and the one cut short by its node's removal finishes on the other (the autoscaler's
    view of the same: tests/sweeper/test_autoscaler_fake_multinode.py)."""
    from ray.cluster_utils import Cluster

    spec = tmp_path / "cluster.toml"
    spec.write_text(spec_text("cluster", **{**CLUSTER, "train": {"epochs": 6, "checkpoint_every": 1}}))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    storage, doomed = tmp_path / "home" / "ray" / "gone", workers[0]
    try:
        driver = subprocess.Popen(_sweep_args(str(spec), tmp_path / "home", "gone", "--address", cluster.address),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                  env=sweep_env(tmp_path))
        deadline = time.monotonic() + 300
        while not _running_on(storage, doomed.node_id, last_epoch=6):
            assert driver.poll() is None and time.monotonic() < deadline, "no trial ran on the node to remove"
            time.sleep(0.05)
        cluster.remove_node(doomed)  # the machine is gone, with the trial it was training
        output, _ = driver.communicate(timeout=600)
    finally:
        cluster.shutdown()
    assert driver.returncode == 0, output[-3000:]
    db = f"sqlite:///{tmp_path}/home/results.db"
    rows = run_query(db, "SELECT trial_key, study, optuna_number, status FROM sweep_trials")
    assert len(rows) == 2 * 2 and rows["trial_key"].is_unique and set(rows["status"]) <= {"COMPLETE", "PRUNED"}
    assert not rows.duplicated(["study", "optuna_number"]).any()
    nodes = reported_nodes(storage)
    assert set(nodes) == set(rows["trial_key"])
    assert set().union(*nodes.values()) == {w.node_id for w in workers}  # both GPU workers, never the head
    moved = [trial for trial, seen in nodes.items() if seen == {doomed.node_id, workers[1].node_id}]
    assert moved, nodes  # a trial began on the removed node and finished on the other
    print(f"[chaos] node removed mid-sweep: {len(moved)} trial(s) rescheduled, {len(rows)} recorded once each")
