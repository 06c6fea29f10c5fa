"""Ray's real autoscaler with cluster.yaml's node types, on this machine: the head's autoscaler (as
`ray up` starts it) with Ray's `fake_multinode` node provider, which launches each node it is asked
for as Ray processes here. One sweep shows that trials waiting on a head without CPUs or GPUs start
GPU workers from zero up to the maximum, that a busy worker the autoscaler terminates costs no trial,
and that workers idle past the timeout go away. What only AWS shows (instance types, EFS, S3, the
setup commands) is untested: docs/clusters.md#autoscaling-tested-on-this-machine."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import RAY_CLI, dead_port, reported_nodes, spec_text, stop_cluster, sweep_env
from tests.sweeper.test_cluster_and_resume import (CLUSTER, _assert_every_trial_recorded_once,
                                                   _running_on)

# The fake provider names the head it did not launch so (Ray's FAKE_HEAD_NODE_TYPE); cluster.yaml's head
# type is renamed to it, nothing else of it changes.
FAKE_HEAD = "ray.head.default"
# cluster.yaml's workers declare no resources: on AWS Ray reads them from the instance type (g5.xlarge:
# one GPU). Here the GPU is Ray's logical resource, as in the other cluster tests (the trials ask for
# one, nothing checks for a device, they train on the CPU), with one CPU of this 2-core machine.
STAND_IN = {"CPU": 1, "GPU": 1}
MAX_WORKERS = 2  # cluster.yaml's 4, capped to what 2 cores hold
IDLE_MINUTES = 0.1  # cluster.yaml's 10, shortened to 6 s
# Trials long enough (about 1 s an epoch) that the second worker's trial actor is up (about 10 s) before the
# first worker's trial ends: Tune would reuse that actor for every trial and leave the second one unused.
EPOCHS = 12


def fake_cluster_config(gcs_address: str, max_workers: int = MAX_WORKERS) -> dict:
    """cluster.yaml's autoscaling part (node types, worker limits, upscaling speed) for the fake provider.
    Written whole, as `ray up` writes the head's ~/ray_bootstrap_config.yaml, which the head's
    autoscaler reads as it is: `ray up` and `AutoscalingCluster` would merge the provider's defaults file
    (ray/autoscaler/_private/fake_multi_node/example.yaml) first, and the Ray 2.60.0 wheel lacks it."""
    aws = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = copy.deepcopy(aws["available_node_types"])
    head = types.pop(aws["head_node_type"])
    workers = {name: {"resources": kind["resources"] or dict(STAND_IN), "node_config": {},  # no AWS instance here
                      "min_workers": kind["min_workers"], "max_workers": min(kind["max_workers"], max_workers)}
               for name, kind in types.items()}
    return {
        "cluster_name": aws["cluster_name"], "max_workers": min(aws["max_workers"], max_workers),
        "upscaling_speed": aws["upscaling_speed"], "idle_timeout_minutes": IDLE_MINUTES,
        # nodes are processes here, found by their node ids (they share an IP), and nothing is set up on them
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "head_node_type": FAKE_HEAD,
        "available_node_types": {FAKE_HEAD: {"resources": head["resources"], "node_config": {}, "max_workers": 0},
                                 **workers},
        # what the autoscaler reads of the set-up (into a launch hash); the fake provider runs none of it
        "auth": {}, "file_mounts": {}, "cluster_synced_files": [], "worker_setup_commands": [],
        "worker_start_ray_commands": [],
    }


def head_start_args(config: dict) -> list[str]:
    """`ray start --head` as the head's node type says: the fake provider cannot start the head, so its
    Ray must have exactly the resources its type declares (cluster.yaml: none to train with)."""
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    return [f"--num-cpus={head.get('CPU', 0)}", f"--num-gpus={head.get('GPU', 0)}"]


def _write(path: Path, config: dict) -> None:
    """Replace the file whole: the autoscaler re-reads it every second and must never see half of it."""
    part = path.with_suffix(".part")
    part.write_text(yaml.safe_dump(config))
    os.replace(part, path)


def test_the_fake_cluster_has_cluster_yaml_node_types():
    from ray.autoscaler._private.util import validate_config

    aws = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = fake_cluster_config("127.0.0.1:6379")
    validate_config(config)  # Ray's cluster-config schema, as the autoscaler checks it
    kinds = config["available_node_types"]
    file_workers = {k: v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]}
    assert set(kinds) == {FAKE_HEAD, *file_workers} and config["head_node_type"] == FAKE_HEAD
    assert kinds[FAKE_HEAD]["resources"] == aws["available_node_types"][aws["head_node_type"]]["resources"]
    assert head_start_args(config) == ["--num-cpus=0", "--num-gpus=0"]  # the head trains nothing
    for name, kind in file_workers.items():
        assert kinds[name]["min_workers"] == kind["min_workers"] == 0  # from zero
        assert kinds[name]["max_workers"] == min(kind["max_workers"], MAX_WORKERS)
        assert kinds[name]["resources"] == (kind["resources"] or STAND_IN)
    assert kinds["gpu_worker"]["resources"]["GPU"] == 1
    assert config["max_workers"] == min(aws["max_workers"], MAX_WORKERS)
    assert config["upscaling_speed"] == aws["upscaling_speed"]


class Nodes:
    """The cluster's worker nodes as its GCS lists them, polled in the background."""

    def __init__(self, address: str, head_id: str):
        import ray._raylet

        self._gcs, self._head = ray._raylet.GcsClient(address=address), head_id
        self.seen: list[tuple[set[str], set[str]]] = []  # (alive, dead) at each poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            try:
                nodes = {k.hex(): v.state for k, v in self._gcs.get_all_node_info(timeout=10).items()}
            except Exception:  # noqa: BLE001 - a GCS slow to answer on a busy machine: ask again
                continue
            nodes.pop(self._head, None)
            self.seen.append(({n for n, s in nodes.items() if s == 0}, {n for n, s in nodes.items() if s != 0}))

    def alive(self) -> set[str]:
        return self.seen[-1][0] if self.seen else set()

    def dead(self) -> set[str]:
        return self.seen[-1][1] if self.seen else set()

    def most_at_once(self) -> int:
        return max((len(alive) for alive, _ in self.seen), default=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _wait(condition, what: str, limit: float, driver: subprocess.Popen | None = None, log: Path | None = None):
    """Wait for `condition`, at most `limit` seconds, and no longer than the sweep's `driver` runs."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, what
        assert driver is None or driver.poll() is None, f"{what}; the sweep ended:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


@contextmanager
def fake_cluster(tmp_path: Path, env: dict, config: dict) -> Iterator[tuple[Path, Nodes]]:
    """The head as `ray up` starts it (`ray start --head --autoscaling-config`), with the fake provider:
    (its autoscaling config file, its nodes). Only this cluster's processes are stopped after it."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    config_file = tmp_path / "autoscaling.yaml"
    _write(config_file, config)
    port = config["provider"]["gcs_address"].rsplit(":", 1)[1]
    nodes = None
    try:
        head = subprocess.run([RAY_CLI, "start", "--head", f"--port={port}", *head_start_args(config),
                               "--include-dashboard=false", f"--autoscaling-config={config_file}"],
                              env={**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        nodes = Nodes(config["provider"]["gcs_address"], FAKE_HEAD_NODE_ID)
        _wait(lambda: nodes.seen, "no answer from the GCS", 30)
        yield config_file, nodes
    finally:
        if nodes:
            nodes.stop()
        stop_cluster(Path(env["RAY_TMPDIR"]))


def _terminated(monitor_log: str, node: str, reason: str) -> bool:
    """Did the autoscaler terminate `node` for `reason`, through the node provider (the head's monitor.log)?"""
    return (f"StandardAutoscaler: Terminating the node with id {node} and ip {node}. ({reason})" in monitor_log
            and f"NodeProvider: {node}: Terminating node" in monitor_log)


def _one_worker_less(config: dict) -> dict:
    """The config with max_workers lowered by one, as if edited on the head while the sweep runs."""
    workers = config["available_node_types"]["gpu_worker"]
    return {**config, "max_workers": config["max_workers"] - 1, "available_node_types": {
        **config["available_node_types"], "gpu_worker": {**workers, "max_workers": workers["max_workers"] - 1}}}


def _all_training(workers: set[str], storage: Path) -> bool:
    """Is a trial training on each of the maximum of workers, with 4 epochs (seconds) still to go? Then the
    one terminated next is cut short, whichever the autoscaler picks."""
    return len(workers) == MAX_WORKERS and all(_running_on(storage, node, EPOCHS - 4) for node in workers)


def _resumed_elsewhere(trial_dir: Path, lost: set[str]) -> bool:
    """Did the trial go on from its checkpoint on another node (not from its first epoch again)?"""
    reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    after = [r["epoch"] for r in reports if r["node_id"] not in lost]
    return bool(after) and after[0] > 1


@pytest.mark.slow
def test_the_autoscaler_starts_workers_for_waiting_trials_loses_no_trial_to_a_terminated_one_and_stops_idle_ones(
        tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    (tmp_path / "user").mkdir()  # HOME: no token of the real user's turns this cluster's authentication on
    env = sweep_env(tmp_path, drop=("RAY_",), HOME=str(tmp_path / "user"), RAY_TMPDIR=str(ray_tmp),
                    PYTHONUNBUFFERED="1")  # the driver's lines in its log as it prints them
    config = fake_cluster_config(f"127.0.0.1:{dead_port()}")
    spec = tmp_path / "cluster.toml"
    spec.write_text(spec_text("cluster", **{**CLUSTER, "asha": {"grace_period": EPOCHS},  # no pruning
                                            "train": {"epochs": EPOCHS, "checkpoint_every": 1}}))
    home, log = tmp_path / "home", tmp_path / "sweep.log"
    sweep = [sys.executable, "-m", "sweeper.run", "--spec", str(spec), "--home", str(home), "--sweep", "auto",
             "--address", config["provider"]["gcs_address"], "--max-concurrent", str(MAX_WORKERS + 1),
             "--bootstrap", "0", "--no-report-images"]
    with fake_cluster(tmp_path, env, config) as (config_file, nodes), log.open("w") as out:
        driver = subprocess.Popen(sweep, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)  # not a pipe
        _wait(lambda: "trial(s) queued" in log.read_text(), "the driver did not start", 120, driver, log)
        assert not any(alive for alive, _ in nodes.seen)  # from zero: up to the driver's first trial, no worker
        _wait(lambda: _all_training(nodes.alive(), home / "ray" / "auto"), "no trial on each worker", 150, driver, log)
        busy = nodes.alive()
        _write(config_file, _one_worker_less(config))
        _wait(lambda: nodes.dead() & busy, "no busy worker terminated", 60)
        terminated = nodes.dead() & busy
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
        _wait(lambda: not nodes.alive(), "workers alive past the idle timeout", 60 * IDLE_MINUTES + 30)
    assert f"{MAX_WORKERS + 1} trial(s) queued" in log.read_text() and nodes.most_at_once() == MAX_WORKERS
    monitor = "\n".join(p.read_text() for p in ray_tmp.glob("ray/session_*/logs/monitor.log"))
    assert len(terminated) == 1 and _terminated(monitor, *terminated, "max_workers_per_type")
    idle = nodes.dead() - terminated
    assert idle and all(_terminated(monitor, node, "idle") for node in idle)
    _assert_every_trial_recorded_once(home, "auto", per_study=2, epochs=EPOCHS)
    reported = reported_nodes(home / "ray" / "auto")
    assert set().union(*reported.values()) <= nodes.dead()  # on the workers only, never on the head
    moved = [trial for trial, seen in reported.items() if terminated < seen]
    assert moved and all(_resumed_elsewhere(home / "ray" / "auto" / trial, terminated) for trial in moved), reported
    subprocess.run(["rm", "-rf", str(ray_tmp)])
