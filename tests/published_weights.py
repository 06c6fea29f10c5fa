"""ImageNet weights files laid out as torchvision publishes them, for tests that cannot download.

The values are a seeded model's, so a test knows what a correct load gives; the layout is the
published one: DenseNet's 2017 files keep the dense layers' old key names (`denselayer1.norm.1.weight`,
renamed by torchvision's loader, `torchvision/models/densenet.py`) and, like the other 2017 files
(AlexNet's), torch's legacy (pre-1.6, not zip) serialization. Their SHA-256 cannot match the digits
in the published names, so a test that loads one sets CXR_SWEEP_UNVERIFIED_WEIGHTS=1 (and one that
checks the refusal does not).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision

from trainables.weights import published

# published file -> written before torch 1.6's zip format (torchvision's 2017 uploads)
LEGACY_FORMAT = {"densenet121", "alexnet"}
NEW_DENSE_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def published_keys(backbone: str, state: dict) -> dict:
    """A state dict of torchvision's current model under the key names of the published file."""
    if not backbone.startswith("densenet"):
        return dict(state)
    return {NEW_DENSE_KEY.sub(r"\1.\2", key): value for key, value in state.items()}


def seed_published(backbone: str, seed: int = 1) -> dict:
    """Write `backbone`'s ImageNet file into torch's hub cache (TORCH_HOME) in the published layout; the
    seeded model's own state dict (current key names), which a correct load reproduces exactly."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(backbone, weights=None).state_dict()
    path: Path = published(backbone).path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(published_keys(backbone, state), path, _use_new_zipfile_serialization=backbone not in LEGACY_FORMAT)
    return state
