"""The cluster files pass Ray's own cluster-config schema, keep training off the head and install
the pinned environment."""
from __future__ import annotations

import subprocess

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO


@pytest.mark.parametrize("path", ["cluster.yaml", "docs/cluster-onprem.yaml"])
def test_cluster_files_are_valid_for_ray_up(path):
    config = yaml.safe_load((REPO / path).read_text())
    validate_config(prepare_config(config))  # as `ray up` does before bootstrapping; raises on a violation
    if "available_node_types" in config:
        assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    else:  # the local provider: the head's Ray is started without CPUs or GPUs
        assert any("--head" in c and "--num-cpus=0 --num-gpus=0" in c for c in config["head_start_ray_commands"])
    assert any("constraints.txt" in c for c in config["setup_commands"])
    assert any("TORCH_HOME" in c for c in config["setup_commands"])  # one shared ImageNet weights cache


def test_the_aws_cluster_mounts_shared_storage_on_every_node():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert config["provider"]["type"] == "aws"
    assert any("mount -t nfs4" in c and "/efs" in c for c in config["setup_commands"])
    assert config["available_node_types"]["gpu_worker"]["min_workers"] == 0  # scales from zero


@pytest.mark.parametrize("path", ["cluster.yaml", "docs/cluster-onprem.yaml"])
def test_every_node_of_a_cluster_file_starts_ray_with_token_authentication(path):
    """The token travels as a file outside the repository, readable by its user only; every `ray start`
    and every driver on a node runs with RAY_AUTH_MODE=token (test_ray_up_onprem.py and test_slurm.py run such
    clusters)."""
    config = yaml.safe_load((REPO / path).read_text())
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if "auth_token" in f]  # no token in the repository
    assert any("chmod 600 ~/.ray/auth_token" in c and "export RAY_AUTH_MODE=token" in c
               for c in config["setup_commands"])
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token " in c for c in starts)


# What the two files may differ in beyond comments and the AWS-only EFS mount: the shared file system's
# path, and what belongs to one kind of cluster in `ray start` (AWS: the object manager's port, which its
# security group opens; on-premises: a head without CPUs or GPUs, and the v1 autoscaler, see its comment).
OWN = {"cluster.yaml": ("/efs", [" --object-manager-port=8076"]),
       "docs/cluster-onprem.yaml": ("/shared", [" --num-cpus=0 --num-gpus=0", "RAY_enable_autoscaler_v2=0 "])}
SHARED_KEYS = ("file_mounts", "rsync_exclude", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def _shared_part(path: str) -> dict:
    config = yaml.safe_load((REPO / path).read_text())
    shared, flags = OWN[path]
    text = " ".join(c for key in SHARED_KEYS[2:] for c in config[key])
    assert shared in text and all(flag in text for flag in flags), f"{path}: a declared difference is gone"

    def common(command: str) -> str:
        for flag in flags:
            command = command.replace(flag, "")
        return command.replace(shared, "SHARED")

    part = {key: config[key] for key in SHARED_KEYS[:2]}
    for key in SHARED_KEYS[2:]:
        part[key] = [common(c) for c in config[key] if "mount -t nfs4" not in c]  # the EFS mount: AWS only
    return part


def test_the_two_cluster_files_set_up_and_start_every_node_alike():
    """Setup, start commands and token handling are written twice, once per file: only the declared
    differences may tell them apart, so the file tested with `ray up` (test_ray_up_onprem.py) and the AWS
    one, checked only here, cannot drift."""
    aws, onprem = (_shared_part(path) for path in OWN)
    assert aws == onprem


def _bashrc_command(path: str) -> str:
    return next(c for c in yaml.safe_load((REPO / path).read_text())["setup_commands"] if "~/.bashrc" in c)


@pytest.mark.parametrize("path", list(OWN))
def test_setup_writes_each_bashrc_line_once_and_puts_the_venvs_ray_first_on_the_path(path, tmp_path):
    """`ray up` runs the setup commands on every node each time; `ray down` then runs a bare `ray stop` on
    the head, found through the PATH that ~/.bashrc sets."""
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("not a real token")
    (tmp_path / ".bashrc").write_text("# the user's own\n")
    home = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # a first and a second `ray up`
        subprocess.run(["bash", "-c", _bashrc_command(path)], env=home, check=True)
    lines = (tmp_path / ".bashrc").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 4 and "export RAY_AUTH_MODE=token" in lines
    assert (tmp_path / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    path_seen = subprocess.run(["bash", "-c", "source ~/.bashrc; echo $PATH"], env=home, capture_output=True,
                               text=True, check=True).stdout.strip()
    assert path_seen.split(":")[0] == f"{tmp_path}/cxr-sweep/.venv/bin"


def test_the_onprem_file_starts_every_worker_machine_and_keeps_it():
    """Ray's on-premises guide: min_workers = max_workers = the number of worker_ips; and the head runs the
    v1 autoscaler, the one that starts a local provider's workers (Ray 2.60's v2 never does)."""
    config = yaml.safe_load((REPO / "docs/cluster-onprem.yaml").read_text())
    assert config["min_workers"] == config["max_workers"] == len(config["provider"]["worker_ips"])
    assert any("RAY_enable_autoscaler_v2=0 " in c and "--head" in c for c in config["head_start_ray_commands"])
