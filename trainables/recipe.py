"""The fine-tuning model a source recipe describes (docs/design.md §3.1).

- regular: one branch from `init`, pretrained on the sources in sequence (none: `init` alone);
- mixed: a branch from `init` alone beside a branch pretrained on the sources (from the
  stage's own init, `pretrain_init`), features concatenated (seed 000's "ImageNet + CheXpert,
  mixed": an ImageNet branch beside the CheXpert row's pretrained branch);
- co_trained: one branch from `init` pretrained on all sources jointly.
"""
from __future__ import annotations

from pathlib import Path

import torch

from trainables.models import Classifier, build_branch
from trainables.pretrain import STRATEGIES, Stage, ensure_stage, load_branch


def check_recipe(strategy: str, sources) -> None:
    """The strategy exists and has the sources it needs (the spec validator calls this too)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if strategy == "mixed" and not sources:
        raise ValueError("strategy 'mixed' puts a pretrained branch beside the init one: give a source")
    if strategy == "co_trained" and len(sources) < 2:
        raise ValueError("strategy 'co_trained' trains on several sources jointly: give at least two")


def build_recipe_model(backbone: str, init: str, strategy: str, stage: Stage | None, num_classes: int,
                       dropout: float, cache_dir: Path, device: torch.device, log=print,
                       input_size: int | None = None) -> Classifier:
    """`stage` is the pretraining the recipe needs (None when it has no sources)."""
    check_recipe(strategy, stage.sources if stage else ())
    pretrain = (lambda branch: load_branch(branch, ensure_stage(stage, cache_dir, device, log))) if stage else None
    return _recipe_model(backbone, init, strategy, stage, num_classes, dropout, input_size, weights=True,
                         pretrain=pretrain)


def recipe_architecture(backbone: str, init: str, strategy: str, stage: Stage | None, num_classes: int,
                        dropout: float, input_size: int | None = None) -> Classifier:
    """build_recipe_model's model with untrained weights and no pretraining run: the same branches, each
    with the input adapter of the weights it starts from, for a trained state dict to be loaded into."""
    return _recipe_model(backbone, init, strategy, stage, num_classes, dropout, input_size, weights=False,
                         pretrain=None)


def _recipe_model(backbone, init, strategy, stage, num_classes, dropout, input_size, weights: bool,
                  pretrain) -> Classifier:
    pretrained = build_branch(backbone, stage.init if stage else init, weights)
    if pretrain is not None:
        pretrain(pretrained)
    branches = [build_branch(backbone, init, weights), pretrained] if strategy == "mixed" else [pretrained]
    return Classifier(branches, num_classes, dropout, input_size)  # mixed: the init branch beside the pretrained
