"""docs/slurm/cxr-sweep.sbatch against a real Slurm cluster (slurmctld and slurmd on localhost,
started by tests/services/start.sh): the job starts a token-authenticated Ray across its node and runs
a small sweep through `sweeper.run --address`; the DB holds every trial, the token is printed nowhere."""
from __future__ import annotations

import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

from results.query import run_query
from tests.conftest import REPO
from tests.helpers import dead_port, spec_text, stop_cluster, sweep_env
from tests.services_fixtures import _service

pytestmark = pytest.mark.slow
SCRIPT = REPO / "docs" / "slurm" / "cxr-sweep.sbatch"


def _sbatch(conf: str, tmp_path: Path, env: dict, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "job.out"
    proc = subprocess.run(["sbatch", "--wait", "--nodes=1", "--cpus-per-task=2", "--time=20", f"--output={out}",
                           str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          env={**env, "SLURM_CONF": conf}, timeout=900)
    return proc, out.read_text() if out.exists() else ""


def test_the_sbatch_script_runs_a_sweep_on_a_token_authenticated_ray_inside_the_job(tmp_path):
    conf = _service("CXR_SWEEP_TEST_SLURM_CONF", "Slurm")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths
    user = tmp_path / "user"
    (user / ".ray").mkdir(parents=True)
    (tmp_path / "spec.toml").write_text(spec_text("local"))
    env = sweep_env(tmp_path, drop=("RAY_", "SLURM_"), HOME=str(user), RAY_TMPDIR=str(ray_tmp),
                    CXR_SWEEP_RAY_PORT=str(dead_port()))
    args = ("--spec", str(tmp_path / "spec.toml"), "--home", str(tmp_path / "home"), "--sweep", "slurm",
            "--bootstrap", "0", "--no-report-images")
    try:
        no_token, said = _sbatch(conf, tmp_path, env, *args)  # ~/.ray/auth_token does not exist yet
        assert no_token.returncode == 2 and "no Ray token at" in said, said[-2000:]
        token = secrets.token_hex(32)
        (user / ".ray" / "auth_token").write_text(token)
        (user / ".ray" / "auth_token").chmod(0o600)
        job, said = _sbatch(conf, tmp_path, env, *args)
    finally:
        stop_cluster(ray_tmp)
    assert job.returncode == 0, said[-4000:] + job.stderr[-2000:]
    assert "[slurm] 1 Ray node(s) up; starting the sweep" in said and "[slurm] sweeper.run exited with 0" in said
    trials = run_query(f"sqlite:///{tmp_path}/home/results.db", "SELECT status FROM sweep_trials")
    assert trials["status"].tolist() == ["COMPLETE", "COMPLETE"]  # one trial per fold
    logs = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_socket()]
    assert any("gcs_server" in p.name for p in logs)  # the job's Ray wrote its logs here...
    assert not [p for p in logs if token.encode() in p.read_bytes()] and token not in said  # ...without the token
    subprocess.run(["rm", "-rf", str(ray_tmp)])
