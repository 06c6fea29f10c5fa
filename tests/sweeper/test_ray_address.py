"""Local means local, and a cluster that does not answer is an error, not a hang (sweeper.ray_address).

Before, `ray.init(address=None)` attached to the last cluster `ray start` had recorded on the machine
(`ray_current_cluster` in Ray's temp folder) even when it was gone, and retried "Failed to connect to
GCS" forever."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from results.query import run_query
from tests.helpers import dead_port, run_cli, spec_text, sweep_env

MICRO = spec_text("local")  # one resnet18 trial per fold, one epoch


def _run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "spec.toml").write_text(MICRO)
    start = time.monotonic()
    proc = run_cli("sweeper.run", "--spec", tmp_path / "spec.toml", "--home", tmp_path / "home", "--num-cpus", "2",
                   "--sweep", "local", "--bootstrap", "0", "--no-report-images", *args,
                   env=sweep_env(tmp_path, drop=("RAY_ADDRESS",), **env))
    return proc, time.monotonic() - start


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_an_address_where_nothing_answers_stops_with_exit_2_in_bounded_time_naming_it(tmp_path, how):
    address = f"127.0.0.1:{dead_port()}"
    proc, took = (_run(tmp_path, "--address", address) if how == "flag" else _run(tmp_path, RAY_ADDRESS=address))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    port = address.rsplit(":", 1)[1]  # Ray resolves 127.0.0.1 to this node's address
    assert f"{address}: no Ray cluster answers at " in proc.stderr and f":{port} within" in proc.stderr
    assert "`ray status --address " in proc.stderr
    assert took < 60
    assert not (tmp_path / "home" / "prepared").exists()  # stopped before building any data


def test_address_auto_with_no_cluster_recorded_is_a_clear_error(tmp_path):
    proc, _ = _run(tmp_path, "--address", "auto", RAY_TMPDIR=str(tmp_path / "raytmp"))
    assert proc.returncode == 2 and "--address auto" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_stale_ray_start_record_does_not_capture_a_sweep_without_address(smoke_sweeps):
    """A `ray start` cluster recorded in Ray's temp folder and gone since (tests/smoke_sweeps.py leaves one in
    the smoke sweeps' RAY_TMPDIR): each sweep ran on its own local Ray."""
    for spec in ("paper", "zhou2020"):
        assert "Started a local Ray instance" in smoke_sweeps.stdout[spec] + smoke_sweeps.stderr[spec]
        trials = run_query(smoke_sweeps.db, "SELECT t.status FROM sweep_trials t JOIN sweeps s ON s.id = t.sweep_id "
                                            f"WHERE s.name = '{spec}-smoke'")
        assert len(trials) and set(trials["status"]) <= {"COMPLETE", "PRUNED"}
