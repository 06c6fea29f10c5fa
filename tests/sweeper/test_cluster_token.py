"""A cluster only its owners can use: a real multi-process Ray cluster started by the `ray` CLI on
localhost with token authentication (a head without CPUs, a worker), as the cluster files and the
Slurm script start theirs. A node or a driver without the token is refused; with it, a sweep runs
and records every trial; the token is printed nowhere."""
from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from results.query import run_query
from tests.helpers import (RAY_CLI, TOKEN_REFUSED, dead_port, join_cluster, run_command, spec_text, stop_cluster,
                           sweep_env)

pytestmark = pytest.mark.slow


def test_a_token_cluster_refuses_nodes_and_drivers_without_its_token_and_runs_a_sweep_with_it(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    user = tmp_path / "user"  # HOME of every process here: no ~/.ray/auth_token of the real user is seen
    user.mkdir()
    token, wrong = tmp_path / "token", tmp_path / "wrong"
    for path in (token, wrong):
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    (tmp_path / "spec.toml").write_text(spec_text("local"))
    plain = sweep_env(tmp_path, drop=("RAY_",), HOME=str(user), RAY_TMPDIR=str(ray_tmp))
    owner = {**plain, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    plain["RAY_gcs_server_port_wait_time_s"] = "3"  # a refused driver gives up after 3 tries, not Ray's 20
    port = dead_port()
    address = f"127.0.0.1:{port}"
    sweep = [sys.executable, "-m", "sweeper.run", "--spec", str(tmp_path / "spec.toml"), "--home", str(tmp_path / "home"),
             "--address", address, "--sweep", "token", "--bootstrap", "0", "--no-report-images"]
    outputs = []
    try:
        head = run_command([RAY_CLI, "start", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                            "--include-dashboard=false"], owner)
        assert head.returncode == 0, head.stderr[-2000:]
        another = {**owner, "RAY_AUTH_TOKEN_PATH": str(wrong)}
        for stranger in (plain, another):  # no token; another token
            node = join_cluster(address, stranger, "--num-cpus=2")
            assert node.returncode != 0 and TOKEN_REFUSED in node.stdout + node.stderr
            outputs.append(node)
        worker = run_command([RAY_CLI, "start", f"--address={address}", "--num-cpus=2"], owner)
        assert worker.returncode == 0, worker.stderr[-2000:]
        refused = run_command(sweep, plain)
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert "refused this driver" in refused.stderr and "RAY_AUTH_TOKEN_PATH" in refused.stderr
        ran = run_command(sweep, owner, timeout=600)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        outputs += [head, worker, refused, ran]
    finally:
        stop_cluster(ray_tmp)
    trials = run_query(f"sqlite:///{tmp_path}/home/results.db", "SELECT status FROM sweep_trials")
    assert trials["status"].tolist() == ["COMPLETE", "COMPLETE"]  # one trial per fold, on the worker
    secret = token.read_text()
    logs = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_socket()]
    assert logs and not [p for p in logs if secret.encode() in p.read_bytes()]
    assert not [o for o in outputs if secret in o.stdout + o.stderr]
    subprocess.run(["rm", "-rf", str(ray_tmp)])
