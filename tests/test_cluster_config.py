"""cluster.yaml passes Ray's own cluster-config schema and installs the pinned environment."""
from __future__ import annotations

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO


def test_cluster_yaml_is_valid_for_ray_up():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # as `ray up` does before bootstrapping; raises on a violation
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("constraints.txt" in c for c in config["setup_commands"])
