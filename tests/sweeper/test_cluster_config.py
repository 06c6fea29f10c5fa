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
    and every driver on a node runs with RAY_AUTH_MODE=token (tests/sweeper/test_cluster_token.py runs such a cluster)."""
    config = yaml.safe_load((REPO / path).read_text())
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if "auth_token" in f]  # no token in the repository
    assert any("chmod 600 ~/.ray/auth_token" in c and "export RAY_AUTH_MODE=token" in c
               for c in config["setup_commands"])
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token " in c for c in starts)
