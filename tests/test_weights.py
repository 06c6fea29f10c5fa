"""ImageNet weights: loaded from torch's cache with strict keys and weights_only; offline, a
missing file is one clear error naming the file, the cache and the fetch command."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from tests.conftest import REPO
from trainables.models import build_model
from trainables.weights import OFFLINE_ENV, WeightsUnavailable, weights_file


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty torch cache on a machine that must not download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def _seed_cache(backbone: str, cache) -> dict:
    """Write a weights file as torchvision would have downloaded it (other values, same keys)."""
    torch.manual_seed(1)
    state = torchvision.models.get_model(backbone, weights=None).state_dict()
    path, _ = weights_file(backbone)
    assert path.parent == cache
    cache.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_imagenet_init_loads_the_cached_weights_file(offline_cache):
    state = _seed_cache("resnet18", offline_cache)
    model = build_model("resnet18", num_classes=3, dropout=0.1, init="imagenet")
    loaded = model.branches[0].trunk.state_dict()
    assert torch.equal(loaded["0.weight"], state["conv1.weight"])  # the trunk's first conv is resnet's conv1
    assert torch.equal(loaded["4.1.bn2.running_var"], state["layer1.1.bn2.running_var"])
    assert model.branches[0].mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])  # the weights' own
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_offline_without_the_file_is_one_error_naming_file_cache_and_command(offline_cache):
    with pytest.raises(WeightsUnavailable) as info:
        build_model("densenet121", num_classes=3, dropout=0.1, init="imagenet")
    message = str(info.value)
    assert "densenet121-a639ec97.pth" in message and str(offline_cache) in message
    assert "python -m trainables.weights fetch densenet121" in message and "TORCH_HOME" in message


def test_a_file_with_other_keys_is_refused_not_half_loaded(offline_cache):
    offline_cache.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, weights_file("resnet18")[0])
    with pytest.raises(WeightsUnavailable, match="not a usable resnet18 ImageNet weights file.*Missing key"):
        build_model("resnet18", num_classes=3, dropout=0.1, init="imagenet")


def test_a_weights_file_that_would_run_code_is_refused(offline_cache):
    offline_cache.mkdir(parents=True)
    torch.save({"fn": print}, weights_file("resnet18")[0])  # unpickling would import a callable
    with pytest.raises(WeightsUnavailable, match="not a usable resnet18 ImageNet weights file"):
        build_model("resnet18", num_classes=3, dropout=0.1, init="imagenet")


def test_sweeper_weights_check_lists_what_a_spec_needs(offline_cache, tmp_path):
    _seed_cache("resnet18", offline_cache)
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\n[grid]\nbackbone = ["resnet18", "alexnet"]\nrecipe = ["imnet"]\n'
                    '[recipes.imnet]\ninit = "imagenet"\n')
    done = subprocess.run([sys.executable, "-m", "sweeper.weights", "--spec", str(spec), "--check"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert "resnet18-f37072fd.pth (present)" in done.stdout and "alexnet-owt-7be5be79.pth (missing)" in done.stdout
    fetch = subprocess.run([sys.executable, "-m", "sweeper.weights", "--spec", str(spec)],
                           capture_output=True, text=True, cwd=REPO)
    assert fetch.returncode == 2 and "python -m trainables.weights fetch alexnet" in fetch.stderr
