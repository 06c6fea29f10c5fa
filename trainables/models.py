"""Backbones by name (torchvision builders) with a GAP + dropout + linear head.

Grey input in [0, 1] is replicated to 3 channels and normalised with the ImageNet
statistics that torchvision's weights were trained with. `init="imagenet"` loads those
weights (see `trainables.weights`); `"scratch"` starts from random ones.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from trainables.weights import load_imagenet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _children_trunk(model: nn.Module, drop_last: int) -> nn.Module:
    return nn.Sequential(*list(model.children())[:-drop_last])


def _densenet_trunk(model: nn.Module) -> nn.Module:
    return nn.Sequential(model.features, nn.ReLU(inplace=False))


# backbone name -> convolutional trunk of the torchvision model (everything before pooling).
TRUNKS = {
    "resnet18": lambda m: _children_trunk(m, 2),
    "resnet50": lambda m: _children_trunk(m, 2),
    "densenet121": _densenet_trunk,
    "mobilenet_v2": lambda m: m.features,
    "mobilenet_v3_small": lambda m: m.features,
    "mobilenet_v3_large": lambda m: m.features,
    "alexnet": lambda m: m.features,
}
INITS = ("scratch", "imagenet")  # a pretraining stage builds on one of these


class Classifier(nn.Module):
    """trunk -> global average pool -> dropout -> linear (K logits)."""

    def __init__(self, trunk: nn.Module, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        x = (grey.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.head(self.trunk(x))


def check_backbone(name: str) -> None:
    if name not in TRUNKS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(TRUNKS)}")


def build_model(backbone: str, num_classes: int, dropout: float, init: str = "scratch") -> Classifier:
    check_backbone(backbone)
    if init not in INITS:
        raise ValueError(f"unknown initialisation {init!r}; expected one of {INITS}")
    model = torchvision.models.get_model(backbone, weights=None)
    if init == "imagenet":
        load_imagenet(model, backbone)
    trunk = TRUNKS[backbone](model)
    with torch.no_grad():
        channels = trunk.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
    return Classifier(trunk.train(), channels, num_classes, dropout)
