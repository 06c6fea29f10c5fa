"""Models by name: branches (input adapter + trunk + pooling) under one dropout + linear head.

A `Branch` takes grey images in [0, 1] and feeds them the way its weights expect:
- ImageNet weights: replicated to 3 channels and normalised with the mean and std those
  weights were trained with (torchvision's weights metadata);
- scratch: the first convolution is adapted to one channel (a third of its cost, nothing
  to replicate) and the input is centred with GREY_NORM.
A checkpoint from a pretraining stage is a branch's state dict, so it carries its adapter.

- regular and co-trained: one branch; mixed: two branches (e.g. ImageNet and CheXpert-
  pretrained) whose pooled features are concatenated before the head (seed 000).
- co-trained pretraining: `MultiSourceClassifier`, one branch and one head per source.

Batch norm keeps torchvision's settings; `fit` re-estimates the running statistics before it
evaluates (`engine.recalibrate_batch_norm`), because on short runs, and with MobileNetV3's
momentum of 0.01, they lag so far that eval-mode predictions come out constant.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from trainables.alexnet_style import alexnet_style_dense, alexnet_style_features
from trainables.weights import imagenet_model
from vocab.live import Names

GREY_NORM = ((0.5,), (0.25,))
INITS = ("scratch", "imagenet")  # a pretraining stage builds on one of these
# The backbones (docs/design.md §5, "A backbone"): a torchvision model is one line here, the part of it that
# makes the feature map (torchvision builds it, and publishes its ImageNet weights); a network of our own is one
# function under @own_backbone. Everything else (the spec's grid, the model builder, the benchmarks) reads
# BACKBONES.
TORCHVISION_TRUNKS = {  # backbone -> the convolutional part of the torchvision model
    "resnet18": lambda m: nn.Sequential(*list(m.children())[:-2]),
    "resnet50": lambda m: nn.Sequential(*list(m.children())[:-2]),
    "densenet121": lambda m: nn.Sequential(m.features, nn.ReLU(inplace=False)),
    "mobilenet_v2": lambda m: m.features,
    "mobilenet_v3_small": lambda m: m.features,
    "mobilenet_v3_large": lambda m: m.features,
    "alexnet": lambda m: m.features,
}


@dataclass(frozen=True)
class OwnBackbone:
    """A network built here, not by torchvision (so it starts from scratch): its trunk for one grey channel, and
    what pools the trunk's feature map to one feature vector per image."""

    name: str
    about: str  # what it is, for messages: "seed 003's network"
    build: Callable[[], tuple[nn.Module, nn.Module]]  # () -> (trunk, pool)


OWN_BACKBONES: dict[str, OwnBackbone] = {}


def own_backbone(name: str, about: str):
    """Register the decorated function, `() -> (trunk, pool)`, as backbone `name`; a name taken is a bug."""
    def register(build: Callable[[], tuple[nn.Module, nn.Module]]):
        if name in TORCHVISION_TRUNKS or (name in OWN_BACKBONES and OWN_BACKBONES[name].build is not build):
            raise ValueError(f"backbone {name!r} is declared twice")
        OWN_BACKBONES[name] = OwnBackbone(name, about, build)
        return build
    return register


@own_backbone("alexnet_style", "seed 003's network")
def _alexnet_style() -> tuple[nn.Module, nn.Module]:
    return alexnet_style_features(1), alexnet_style_dense()


BACKBONES = Names(lambda: (*TORCHVISION_TRUNKS, *OWN_BACKBONES))  # every backbone, a live view
IMAGENET_BACKBONES = tuple(TORCHVISION_TRUNKS)  # torchvision publishes ImageNet weights for each of these, and only these


def no_imagenet_weights(backbone: str) -> str:
    """Why `backbone` cannot start from ImageNet (for a backbone not in IMAGENET_BACKBONES): one message for the
    spec's check, the weights command and the model builder."""
    about = OWN_BACKBONES[backbone].about if backbone in OWN_BACKBONES else "not a torchvision model"
    return f"{backbone} ({about}) has no ImageNet weights"


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")


def check_init(backbone: str, init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown initialisation {init!r}; expected one of {INITS}")
    if init == "imagenet" and backbone not in IMAGENET_BACKBONES:
        raise ValueError(f"{no_imagenet_weights(backbone)}; use init = \"scratch\"")


class Branch(nn.Module):
    """grey (B, 1, H, W) -> normalised input -> trunk -> pooled features (B, features)."""

    def __init__(self, trunk: nn.Module, pool: nn.Module, mean: tuple, std: tuple):
        super().__init__()
        self.trunk, self.pool = trunk, pool
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        with torch.no_grad():
            self.n_features = self.eval()(torch.zeros(2, 1, 64, 64)).shape[1]
        self.train()

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        x = grey.expand(-1, 3, -1, -1) if self.mean.shape[1] == 3 else grey  # ImageNet weights: replicate
        return self.pool(self.trunk((x - self.mean) / self.std))


def _grey_first_conv(trunk: nn.Module) -> None:
    """Replace the first convolution by a freshly initialised one-channel one of the same shape."""
    for module in trunk.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(module, name, nn.Conv2d(1, child.out_channels, child.kernel_size, child.stride,
                                                child.padding, child.dilation, child.groups, child.bias is not None))
                return
    raise ValueError("trunk has no convolution to adapt")


def build_branch(backbone: str, init: str = "scratch", weights: bool = True) -> Branch:
    """`weights=False`: the architecture `init` gives (input adapter included) without loading its weights,
    for a checkpoint's to be loaded into."""
    check_backbone(backbone)
    check_init(backbone, init)
    if backbone in OWN_BACKBONES:
        branch = Branch(*OWN_BACKBONES[backbone].build(), *GREY_NORM)
    else:
        loaded = init == "imagenet" and weights
        model = imagenet_model(backbone) if loaded else torchvision.models.get_model(backbone, weights=None)
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        trunk = TORCHVISION_TRUNKS[backbone](model)
        if init == "imagenet":
            preset = torchvision.models.get_model_weights(backbone).DEFAULT.transforms()
            branch = Branch(trunk, pool, tuple(preset.mean), tuple(preset.std))
        else:
            _grey_first_conv(trunk)
            branch = Branch(trunk, pool, *GREY_NORM)
    return branch


class Classifier(nn.Module):
    """branches -> concatenated pooled features -> dropout -> linear (K logits).

    `input_size`: the side the branches see; images of another size are resized on the device first
    (antialiased bilinear), so one prepared data set can feed backbones that want different inputs
    (seed 003: 256 px for the AlexNet-style network, 224 px for MobileNet). None: as they come.
    """

    def __init__(self, branches: list[Branch], num_classes: int, dropout: float, input_size: int | None = None):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(sum(b.n_features for b in branches), num_classes)
        self.input_size = input_size

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        if self.input_size and grey.shape[-2:] != (self.input_size, self.input_size):
            grey = nn.functional.interpolate(grey, size=(self.input_size, self.input_size), mode="bilinear",
                                             align_corners=False, antialias=True)
        features = [branch(grey) for branch in self.branches]
        return self.head(self.dropout(features[0] if len(features) == 1 else torch.cat(features, dim=1)))


def build_model(backbone: str, num_classes: int, dropout: float, init: str = "scratch") -> Classifier:
    """One branch (regular transfer; co-trained fine-tuning)."""
    return Classifier([build_branch(backbone, init)], num_classes, dropout)


class MultiSourceClassifier(nn.Module):
    """Co-trained pretraining: one branch, one head per source.

    Logits are returned in the union label space (`columns[s]` says where source s's labels
    go); entries of labels a source does not have are 0 and must be masked out of the loss.
    """

    def __init__(self, branch: Branch, columns: list[list[int]], num_union: int, dropout: float):
        super().__init__()
        self.branch = branch
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList(nn.Linear(branch.n_features, len(cols)) for cols in columns)
        self.columns = [torch.as_tensor(cols) for cols in columns]
        self.num_union = num_union

    def forward(self, grey: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        features = self.dropout(self.branch(grey))
        logits = features.new_zeros(len(grey), self.num_union)
        for s, head in enumerate(self.heads):
            rows = torch.nonzero(source == s).flatten()
            if len(rows):
                cols = self.columns[s].to(grey.device)
                logits[rows.unsqueeze(1), cols.unsqueeze(0)] = head(features[rows]).to(logits.dtype)
        return logits
