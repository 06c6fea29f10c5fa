"""docs/cluster-onprem.yaml for real: Ray's cluster launcher (`ray up`, `ray exec`, `ray down`) over SSH on
two machines, a sweep through it as docs/clusters.md says, and what is left afterwards.

The machines are tests/services/start.sh's OpenSSH servers: the head at 127.0.0.1 and a worker at 127.0.0.2
(port 22, one unprivileged user and a throwaway key), each in its own PID and mount namespace with its own
/tmp, as on separate machines; they share the user's home, so the worker finds the head's ~/cxr-sweep/.venv.
The test fills the file's lines marked EDIT and nothing else, and runs:

    ray get-auth-token --generate
    ray up -y FILE
    ray exec FILE 'cd ~/cxr-sweep && .venv/bin/python -m sweeper.run --spec SPEC --address auto --home ...'
    (nodes with no token or another one, and a sweep's driver without it, refused beside the running cluster)
    ray up -y FILE                                        # again, as after editing the file: quick
    ray down -y FILE
    ssh USER@WORKER '~/cxr-sweep/.venv/bin/ray stop'      # each worker: `ray down` stops the head only

Every run installs the pinned environment into that venv (about 1.5 minutes, 6.2 GB here), as a user's
first `ray up` does, and removes it at the end; its second `ray up` finds it installed."""
from __future__ import annotations

import fcntl
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from results.query import run_query
from tests.conftest import REPO
from tests.helpers import (RAY_CLI, TOKEN_REFUSED, join_cluster, reported_nodes, run_command, spec_text, stop_cluster,
                           sweep_env)
from tests.services_fixtures import _service

pytestmark = pytest.mark.slow
CLUSTER_FILE = REPO / "docs" / "cluster-onprem.yaml"
HEAD, WORKER = "127.0.0.1", "127.0.0.2"
VENV_RAY = "~/cxr-sweep/.venv/bin/ray"
BASHRC_LINES = ("export RAY_AUTH_MODE=token", 'export PATH="$HOME/cxr-sweep/.venv/bin:$PATH"')


def fill_marked_values(text: str, values: dict[str, str], shared: str) -> str:
    """The cluster file with its lines marked `# EDIT` filled and no other line changed: `key: value  # EDIT`
    takes values[key]; any other marked line has /shared, the example shared file system, replaced by `shared`."""
    out, filled = [], set()
    for line in text.splitlines(keepends=True):
        if "# EDIT" in line:
            key = line.split(":", 1)[0].strip()
            if key in values:
                line = f"{line[:len(line) - len(line.lstrip())]}{key}: {values[key]}  # EDIT\n"
                filled.add(key)
            else:
                assert "/shared" in line, f"a marked line this test does not know how to fill: {line!r}"
                line = line.replace("/shared", shared)
        out.append(line)
    assert filled == set(values), f"marked values missing from the file: {sorted(set(values) - filled)}"
    return "".join(out)


class Machines:
    """start.sh's two SSH servers: log in as the cluster's user, find its Ray processes on each node."""

    def __init__(self, nodes: Path, user: str, key: str):
        self.nodes, self.user, self.key = nodes, user, key
        self.home = Path(pwd.getpwnam(user).pw_dir)

    def ssh(self, ip: str, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-i", self.key, "-o", "BatchMode=yes", "-o",
                               f"UserKnownHostsFile={self.nodes / 'known_hosts'}", f"{self.user}@{ip}", command],
                              capture_output=True, text=True, timeout=120)

    def ray_processes(self) -> dict[str, list[str]]:
        """{node: the user's Ray processes there}, a node told by its PID namespace (that of its sshd)."""
        import psutil

        def pid_ns(pid: int) -> str:
            return os.readlink(f"/proc/{pid}/ns/pid")

        where = {pid_ns(psutil.Process(int((self.nodes / f"{ip}.pid").read_text())).children()[0].pid): ip
                 for ip in (HEAD, WORKER)}
        found: dict[str, list[str]] = {}
        for proc in psutil.process_iter(["username", "cmdline"]):
            command = " ".join(proc.info["cmdline"] or [])
            if proc.info["username"] == self.user and (command.startswith("ray::") or "/cxr-sweep/.venv/" in command):
                try:
                    found.setdefault(where.get(pid_ns(proc.pid), "elsewhere"), []).append(command[:160])
                except OSError:  # ended meanwhile
                    continue
        return found

    def stop_ray(self) -> None:
        for ip in (HEAD, WORKER):
            self.ssh(ip, f"{VENV_RAY} stop")

    def tmp(self, ip: str) -> Path:
        """A node's /tmp, seen from here."""
        return self.nodes / ip / "tmp"

    def reboot(self) -> None:
        """No Ray left by an interrupted run, and each node's /tmp as after a reboot: no Ray sessions or
        launcher state of earlier runs."""
        if any(self.ray_processes().values()):
            self.stop_ray()
        for ip in (HEAD, WORKER):
            for path in self.tmp(ip).iterdir():
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _stat(path: Path) -> tuple[float, int]:
    info = path.stat()
    return info.st_mtime, info.st_ino


def _files_holding(secret: bytes, *roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]


def _cluster_file(machines: Machines, tmp_path: Path) -> tuple[Path, dict, Path]:
    """The user's side: the cluster file with its marked values filled, the environment `ray` runs in (its own
    home and temp folder), and the shared file system, emptied, with the sweep's spec on it."""
    # outside the cluster user's home, and where that user can reach it (a checkout under /root is not)
    shared = Path("/var/tmp/cxr-sweep-onprem-shared")
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir()
    (shared / "spec.toml").write_text(spec_text("onprem"))  # 2 folds, one trial each, 1 epoch at 32 px
    shutil.chown(shared, machines.user, machines.user)
    for folder in ("client", "tmp"):
        (tmp_path / folder).mkdir()
    env = sweep_env(tmp_path, drop=("RAY_",), HOME=str(tmp_path / "client"), RAY_TMPDIR=str(tmp_path / "tmp"),
                    TMPDIR=str(tmp_path / "tmp"))
    cluster = tmp_path / "cluster-onprem.yaml"
    cluster.write_text(fill_marked_values(CLUSTER_FILE.read_text(), {
        "min_workers": "1", "max_workers": "1", "head_ip": HEAD, "worker_ips": f"[{WORKER}]",
        "ssh_user": machines.user, "ssh_private_key": machines.key}, str(shared)))
    return cluster, env, shared


def test_ray_up_on_the_onprem_file_runs_the_sweep_on_the_worker_and_ray_down_leaves_nothing(tmp_path):
    key = _service("CXR_SWEEP_TEST_SSH_KEY", "SSH servers for `ray up`")
    machines = Machines(Path(os.environ["CXR_SWEEP_TEST_SSH_NODES"]), os.environ["CXR_SWEEP_TEST_SSH_USER"], key)
    with open(machines.nodes / "test.lock", "w") as lock:  # one such test per machine at a time: one user, port 6379
        fcntl.flock(lock, fcntl.LOCK_EX)
        machines.reboot()
        cluster, env, shared = _cluster_file(machines, tmp_path)
        stranger_tmp = Path(tempfile.mkdtemp(prefix="ro", dir="/tmp"))  # short: Ray's socket paths
        try:
            run = _run_as_documented(machines, cluster, env, shared, stranger_tmp)
        finally:
            stop_cluster(stranger_tmp)
            if any(machines.ray_processes().values()):  # a failure on the way: leave the machines as found
                run_command([RAY_CLI, "down", "-y", str(cluster)], env, cwd=cluster.parent / "checkout")
                machines.stop_ray()
    try:
        assert not run["left_on_head"] and not any(run["left"].values()), run
        assert run["second_up_s"] < 60, f"a second `ray up` took {run['second_up_s']:.0f} s"
        _assert_the_sweep_ran_on_the_worker(shared)
        _assert_the_token_stayed_home(machines, tmp_path, shared, run["outputs"])
    finally:  # the nodes' install (6.2 GB) and the shared folder: a test leaves no gigabytes behind
        subprocess.run(["rm", "-rf", str(stranger_tmp), str(shared), str(machines.home / "cxr-sweep")])


def _run_as_documented(machines: Machines, cluster: Path, env: dict, shared: Path, stranger_tmp: Path) -> dict:
    """docs/clusters.md's commands for the on-premises cluster, and a node without the token on the way;
    what they printed, how long the second `ray up` took and which Ray processes were left."""
    outputs: list[subprocess.CompletedProcess] = []

    checkout = _fresh_checkout(cluster.parent / "checkout")

    def ray(*args: str) -> None:  # a worker that never starts: the sweep waits
        done = run_command([RAY_CLI, *args], env, timeout=300, cwd=checkout)
        outputs.append(done)
        assert done.returncode == 0, f"ray {args[0]}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"

    venv = machines.home / "cxr-sweep" / ".venv"
    installed = [venv / "lib/python3.11/site-packages/torch/__init__.py", venv / "cxr-sweep-installed"]
    # the token into the client's ~/.ray/auth_token (the command prints it too: its output is not checked)
    assert run_command([RAY_CLI, "get-auth-token", "--generate"], env).returncode == 0
    ray("up", "-y", str(cluster))  # the first run on this machine installs the venv here
    before = [_stat(path) for path in installed]
    ray("exec", str(cluster), f"cd ~/cxr-sweep && .venv/bin/python -m sweeper.run --spec {shared}/spec.toml "
        f"--address auto --home {shared}/cxr-sweep --storage {shared}/cxr-sweep/ray --name onprem "
        f"--report-bootstrap 0 --no-report-images")
    outputs += _strangers_are_refused(env, shared, stranger_tmp)
    started = time.monotonic()
    ray("up", "-y", str(cluster))
    second_up_s = time.monotonic() - started
    assert [_stat(path) for path in installed] == before  # nothing reinstalled
    bashrc = (machines.home / ".bashrc").read_text().splitlines()
    assert [bashrc.count(line) for line in (f"export TORCH_HOME={shared}/torch", *BASHRC_LINES)] == [1, 1, 1]
    ray("down", "-y", str(cluster))
    left_on_head = machines.ray_processes().get(HEAD)
    for ip in (WORKER,):  # as docs/clusters.md says: the local provider stops only the head's Ray
        assert machines.ssh(ip, f"{VENV_RAY} stop").returncode == 0
    return {"outputs": outputs, "second_up_s": second_up_s, "left_on_head": left_on_head,
            "left": machines.ray_processes()}


def _strangers_are_refused(env: dict, shared: Path, stranger_tmp: Path) -> list[subprocess.CompletedProcess]:
    """Nodes and a driver beside the cluster without its token: a node with none, a node with another one,
    and a sweep's driver (`--address HEAD:6379`, as from a user's own machine), which stops with exit 2 and
    says what to set. What they printed."""
    stranger = {**env, "HOME": str(stranger_tmp), "RAY_TMPDIR": str(stranger_tmp)}
    wrong = stranger_tmp / "another_token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    said = []
    for node_env in (stranger, {**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}):
        node = join_cluster(f"{HEAD}:6379", node_env, "--num-cpus=1")
        assert node.returncode != 0 and TOKEN_REFUSED in node.stdout + node.stderr, node.stderr[-2000:]
        said.append(node)
    driver = run_command([sys.executable, "-m", "sweeper.run", "--spec", f"{shared}/spec.toml", "--address",
                          f"{HEAD}:6379", "--home", str(stranger_tmp / "home"), "--sweep", "stranger"],
                         {**stranger, "RAY_gcs_server_port_wait_time_s": "3"})  # gives up after 3 tries, not 20
    assert driver.returncode == 2, driver.stdout[-2000:] + driver.stderr[-2000:]
    assert "refused this driver" in driver.stderr and "RAY_AUTH_TOKEN_PATH" in driver.stderr, driver.stderr[-2000:]
    return [*said, driver]


def _fresh_checkout(into: Path) -> Path:
    """The repository's tracked files, as a user's fresh clone has them, for `ray up` to run from: Ray reads
    every file under a mounted folder to hash it (rsync_exclude does not apply there), so a checkout with
    its .venv (6.7 GB) takes minutes and one holding a socket (the test PostgreSQL's) stops `ray up`."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, into / name)
    return into


def _assert_the_sweep_ran_on_the_worker(shared: Path) -> None:
    trials = run_query(f"sqlite:///{shared}/cxr-sweep/results.db", "SELECT status FROM sweep_trials")
    assert trials["status"].tolist() == ["COMPLETE", "COMPLETE"]  # one trial per fold
    ips = reported_nodes(shared / "cxr-sweep" / "ray" / "onprem", "node_ip")
    assert len(ips) == 2 and all(reported == {WORKER} for reported in ips.values()), ips  # none on the head


def _assert_the_token_stayed_home(machines: Machines, tmp_path: Path, shared: Path, outputs: list) -> None:
    """The token is in the client's and the cluster user's ~/.ray/auth_token, the latter readable by its user
    only, and nowhere else: not in the nodes' /tmp (Ray's sessions and logs), on the shared file system, in the
    client's temp files, or in what ray up, exec and down printed."""
    secret = (tmp_path / "client" / ".ray" / "auth_token").read_bytes().strip()
    on_nodes = machines.home / ".ray" / "auth_token"
    assert len(secret) >= 32 and on_nodes.read_bytes().strip() == secret and on_nodes.stat().st_mode & 0o077 == 0
    assert not _files_holding(secret, machines.tmp(HEAD), machines.tmp(WORKER), shared, tmp_path / "tmp")
    assert not [o for o in outputs if secret.decode() in o.stdout + o.stderr]
