"""How much GPU time a sweep needs, from the spec's sizes, before anything runs.

A model's forward cost is counted by torch's FlopCounterMode on the meta device (no memory,
no weights, under a second per backbone); a training step costs about three forwards
(forward + backward). The total is an upper bound: every trial is counted for all its
epochs, although ASHA stops many early. Dividing by a sustained throughput turns it into
GPU hours; the default is the project's H100 target (ResNet50 at 512 px, 1,200 images/s,
which is about 150 TFLOP/s of useful work), so measure your own GPU with
`bench/train_speed.py` and pass --gpu-tflops.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainables.engine import RECALIBRATION_IMAGES  # batch norm is re-estimated on these before each evaluation

DEFAULT_TFLOPS = 150.0
TRAIN_STEP_FORWARDS = 3.0  # forward + backward (about twice the forward)


@lru_cache(maxsize=None)
def forward_flops(backbone: str, size: int, branches: int = 1, num_classes: int = 14) -> float:
    """FLOPs of one grey `size` x `size` image through the fine-tuning model (two branches: mixed)."""
    from trainables.models import Classifier, build_branch

    with torch.device("meta"):
        model = Classifier([build_branch(backbone, "scratch") for _ in range(branches)], num_classes, 0.0).eval()
        image = torch.zeros(1, 1, size, size)
    with FlopCounterMode(display=False) as counter:
        model(image)
    return float(counter.get_total_flops())


@dataclass(frozen=True)
class Parts:
    """Images of one outer fold: inner train, inner validation, outer test."""

    train: float
    val: float
    test: float

    @classmethod
    def of(cls, n_images: int, folds: int, holdout: tuple[float, float, float] | None, val_fraction: float):
        if holdout is not None:
            return cls(n_images * holdout[0], n_images * holdout[1], n_images * holdout[2])
        outer_train = n_images * (folds - 1) / folds
        return cls(outer_train * (1 - val_fraction), outer_train * val_fraction, n_images / folds)


def fit_flops(forward: float, parts: Parts, epochs: int, final_evaluation: bool = True) -> float:
    """One fit of `epochs`: train steps, batch-norm recalibration and validation every epoch, then (a
    fine-tuning trial, not a pretraining stage) the end-of-trial evaluation of the best weights on the
    outer training part and the test fold."""
    per_epoch = forward * (TRAIN_STEP_FORWARDS * parts.train + min(RECALIBRATION_IMAGES, parts.train) + parts.val)
    return epochs * per_epoch + (forward * (parts.train + parts.val + parts.test) if final_evaluation else 0.0)


def gpu_hours(flops: float, tflops: float = DEFAULT_TFLOPS) -> float:
    return flops / (tflops * 1e12) / 3600
